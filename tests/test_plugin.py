"""The plugin registers into BasicSR's registries, as BasicSR's own scanners would, and names itself in errors."""
import re
import sys

import pytest
from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY

import kd_archs
import kd_losses
import kd_models
from basicsr_kd.preflight import check_registered_types
from basicsr_kd.registration import import_registered_files, plugin_names


def test_import_registers_our_classes():
    model, regressor = MODEL_REGISTRY.get('KDLogitsModel'), ARCH_REGISTRY.get('KDConvRegressor')
    assert model.__module__ == 'kd_models.kd_logits_model' and regressor.__module__ == 'kd_archs.kd_regressor_arch'
    assert 'kd_models.kd_logits_model' in {m.__name__ for m in kd_models._model_modules}
    assert 'kd_archs.kd_regressor_arch' in {m.__name__ for m in kd_archs._arch_modules}
    assert kd_losses._loss_modules and all(m.__name__.endswith('_loss') for m in kd_losses._loss_modules)
    assert {'KDLogitsModel', 'KDFeatureModel'} <= set(plugin_names(MODEL_REGISTRY))
    assert {'KDHintLoss', 'KDAttentionTransferLoss', 'KDSpatialAffinityLoss'} <= set(plugin_names(LOSS_REGISTRY))
    assert 'KDConvRegressor' in plugin_names(ARCH_REGISTRY)


def test_scanner_imports_every_matching_file(tmp_path, monkeypatch):
    package = tmp_path / 'kd_scanned_pkg'
    package.mkdir()
    (package / '__init__.py').write_text('')
    for name in ('kd_one_arch', 'kd_two_arch', 'kd_helper', 'kd_three_model'):
        (package / f'{name}.py').write_text(f'NAME = "{name}"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ('', '.kd_one_arch', '.kd_two_arch', '.kd_helper', '.kd_three_model'):
        monkeypatch.delitem(sys.modules, f'kd_scanned_pkg{name}', raising=False)  # dropped again after the test
    modules = import_registered_files('kd_scanned_pkg', str(package / '__init__.py'), '_arch.py')
    assert [m.NAME for m in modules] == ['kd_one_arch', 'kd_two_arch']
    assert {'kd_scanned_pkg.kd_one_arch', 'kd_scanned_pkg.kd_two_arch'} <= set(sys.modules)
    assert 'kd_scanned_pkg.kd_helper' not in sys.modules and 'kd_scanned_pkg.kd_three_model' not in sys.modules


@pytest.mark.parametrize('key, registry, ours', [('model_type', MODEL_REGISTRY, 'KDLogitsModel'),
                                                 ('network_g', ARCH_REGISTRY, 'KDConvRegressor'),
                                                 ('train.pixel_opt', LOSS_REGISTRY, 'KDHintLoss')])
def test_unknown_type_error_names_the_option_and_lists_our_names(key, registry, ours):
    opt = {'model_type': 'SRModel', 'network_g': {'type': 'EDSR'}, 'train': {'pixel_opt': {'type': 'L1Loss'}}}
    if key == 'model_type':
        opt['model_type'] = 'NoSuchThing'
    elif key == 'network_g':
        opt['network_g']['type'] = 'NoSuchThing'
    else:
        opt['train']['pixel_opt']['type'] = 'NoSuchThing'
    with pytest.raises(KeyError) as error:
        check_registered_types(opt)
    message = error.value.args[0]
    assert message.startswith(f'{key if key == "model_type" else key + ".type"} = NoSuchThing')
    assert "No object named 'NoSuchThing'" in message and ours in message
    ours_listed = message.split('registers in it')[1]
    assert not re.search(r'\bEDSR\b', ours_listed) and 'SRModel' not in ours_listed  # only our names (KDSlimmableEDSR)


@pytest.mark.parametrize('registry, name', [(ARCH_REGISTRY, 'EDSR'), (ARCH_REGISTRY, 'RCAN'),
                                            (MODEL_REGISTRY, 'SRModel'), (LOSS_REGISTRY, 'L1Loss')])
def test_basicsr_names_still_resolve(registry, name):
    obj = registry.get(name)
    assert obj.__name__ == name and obj.__module__.startswith('basicsr.')
    assert name not in plugin_names(registry)
