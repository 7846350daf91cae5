"""A loss of a kind its key does not take is refused before the first step, naming the key (``option_keys`` declare
the kinds, ``KDBaseModel.check_loss_kinds`` checks them): every declared loss key of every model is tried."""
import glob
import os

import pytest
from basicsr.utils.registry import LOSS_REGISTRY, MODEL_REGISTRY

from basicsr_kd.option_keys import LOSS, class_keys
from conftest import OPTIONS, build_model_from, load_option, shrink_option
from kd_models.kd_base_model import PIXEL_LOSSES, KDBaseModel, accepts_loss

KD_MODELS = sorted(name for name, cls in MODEL_REGISTRY if isinstance(cls, type) and issubclass(cls, KDBaseModel)
                   and cls.__module__.startswith('kd_models.'))
WRONG_KINDS = ('L1Loss', 'KDImageKLLoss')  # the first one a key does not take is tried there


def first_option_files():
    """{model type: its first option file} for the distillation models."""
    found = {}
    for path in sorted(glob.glob(os.path.join(OPTIONS, '*.yml'))):
        found.setdefault(load_option(path)['model_type'], path)
    return {name: found[name] for name in KD_MODELS}


def cases():
    """(option file, loss key, a loss type it does not take), once per key and kinds (an inherited key is tried on
    the first model that has it)."""
    seen = set()
    for model_type, path in sorted(first_option_files().items()):
        for key, kinds in MODEL_REGISTRY.get(model_type).loss_kinds().items():
            if (key, kinds) not in seen:
                seen.add((key, kinds))
                wrong = next(name for name in WRONG_KINDS if not accepts_loss(LOSS_REGISTRY.get(name), kinds))
                yield pytest.param(path, key, wrong, id=f'{model_type}-{key}')


@pytest.mark.parametrize('path, key, wrong', list(cases()))
def test_a_loss_of_another_kind_is_refused_naming_the_key(path, key, wrong, demo_root, restoration_root, tmp_path):
    opt = load_option(path)
    opt = shrink_option(opt, restoration_root if opt['scale'] == 1 else demo_root, str(tmp_path), 'kinds')
    opt['train'][key] = {'type': wrong}
    with pytest.raises(ValueError, match=rf'^train\.{key}\.type = {wrong}: KD\w+Model takes '):
        build_model_from(opt, str(tmp_path / 'exp'))


def test_every_loss_key_of_a_model_declares_its_kinds():
    """A loss key declared as any loss ('loss') would escape the check."""
    for name in KD_MODELS:
        untyped = [key for key, value in class_keys(MODEL_REGISTRY.get(name))['train'].items() if value == LOSS]
        assert not untyped, f'{name}: declare the loss classes of train.{untyped} (a tuple of names)'


def test_a_pixel_key_takes_pixel_losses_only_and_a_tap_key_every_tap_loss():
    pixel = [name for name, cls in LOSS_REGISTRY if accepts_loss(cls, PIXEL_LOSSES)]
    assert sorted(pixel) == sorted(PIXEL_LOSSES)  # not WeightedTVLoss, a subclass of L1Loss that takes one image
    taps = sorted(name for name, cls in LOSS_REGISTRY if accepts_loss(cls, ('KDTapLoss', )))
    assert taps == ['KDAttentionTransferLoss', 'KDEdgeTextureLoss', 'KDGaussianKernelLoss', 'KDHintLoss',
                    'KDLocalSelectiveFeatureLoss', 'KDNaturalnessLoss', 'KDSpatialAffinityLoss']


def test_the_message_lists_the_losses_the_key_takes(logits_opt, tmp_path):
    logits_opt['train']['kd_opt'] = {'type': 'KDWaveletLoss'}
    with pytest.raises(ValueError, match=r'^train\.kd_opt\.type = KDWaveletLoss: KDLogitsModel takes one of '
                                         r'CharbonnierLoss, L1Loss, MSELoss there$'):
        build_model_from(logits_opt, str(tmp_path / 'exp'))
