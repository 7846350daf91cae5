"""The plugin registers into BasicSR's registries, as BasicSR's own scanners would."""
import pytest
from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY

from kd_models.plugin import import_registered_files, plugin_names


def test_our_classes_are_registered():
    assert {'KDLogitsModel', 'KDFeatureModel'} <= set(plugin_names(MODEL_REGISTRY))
    assert {'KDHintLoss', 'KDAttentionTransferLoss', 'KDSpatialAffinityLoss'} <= set(plugin_names(LOSS_REGISTRY))
    assert 'KDConvRegressor' in plugin_names(ARCH_REGISTRY)
    assert 'EDSR' not in plugin_names(ARCH_REGISTRY) and ARCH_REGISTRY.get('EDSR').__name__ == 'EDSR'


def test_scanner_imports_every_matching_file(tmp_path, monkeypatch):
    package = tmp_path / 'scanned_pkg'
    package.mkdir()
    (package / '__init__.py').write_text('')
    for name in ('kd_one_arch', 'kd_two_arch', 'kd_helper'):
        (package / f'{name}.py').write_text(f'NAME = "{name}"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = import_registered_files('scanned_pkg', str(package / '__init__.py'), '_arch.py')
    assert [m.NAME for m in modules] == ['kd_one_arch', 'kd_two_arch']


@pytest.mark.parametrize('registry, ours', [(MODEL_REGISTRY, 'KDLogitsModel'), (ARCH_REGISTRY, 'KDConvRegressor'),
                                            (LOSS_REGISTRY, 'KDHintLoss')])
def test_unknown_type_error_lists_our_names(registry, ours):
    with pytest.raises(KeyError) as error:
        registry.get('NoSuchThing')
    assert "No object named 'NoSuchThing'" in str(error.value) and ours in str(error.value)
