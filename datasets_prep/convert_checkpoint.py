"""Convert the authors' released checkpoints into BasicSR's layout, ``{'params': state_dict}``, checked against our
network: the result must load with ``strict=True`` into the preset (``kd_archs/kd_presets.yml``) or the ``--arch``
network it is meant for, or nothing is written.

Sources (the first argument):

- ``rcan``: yulunzhang/RCAN (``RCAN_BIX{2,3,4}.pt``): official keys (``head``, ``body``, ``tail``) to BasicSR's RCAN.
- ``edsr``: thstkdgus35/EDSR-PyTorch (``edsr_x{2,3,4}-*.pt``, ``edsr_baseline_x{2,3,4}-*.pt``) to BasicSR's EDSR.
  The official mean-shift layers (``sub_mean``, ``add_mean``) are dropped after checking that they shift by what
  BasicSR's RCAN/EDSR subtract and add back (``rgb_mean * img_range``).
- ``swinir``, ``nafnet``, ``restormer``, ``uformer``, ``drsformer``: the official files already use our keys; the
  state dict is taken from whatever top-level key holds it (``params_ema``, ``params``, ``state_dict``, ``model``,
  ``net`` or none) and ``module.`` prefixes are removed.
- ``vqgan``: taming-transformers' Lightning ``last.ckpt`` (``vqgan_imagenet_f16_1024``): only ``encoder.*``,
  ``quant_conv.*`` and ``quantize.embedding.weight`` are kept (decoder, post_quant_conv and loss are dropped).
- ``vgg19``: torchvision's ``vgg19-dcbb9e9d.pth``: only ``features.*`` is kept (the classifier is dropped).

Reading never runs code from the file: ``torch.load(weights_only=True)``. A file whose pickle names classes outside
torch's weights-only allowlist (a Lightning checkpoint's callbacks, an ``argparse.Namespace``...) is read by the same
weights-only unpickler with each such class replaced by an inert stand-in (so pytorch_lightning need not be
installed); only tensors are kept. The result loads with ``torch.load(weights_only=True)``.

Usage (from the repository root)::

    python -m datasets_prep.convert_checkpoint rcan RCAN_BIX4.pt experiments/pretrained_models/RCAN_BIX4.pth \\
        --preset rcan_teacher_x4
    python -m datasets_prep.convert_checkpoint vqgan last.ckpt experiments/pretrained_models/vqgan_imagenet_f16_1024.pth
    python -m datasets_prep.convert_checkpoint restormer net.pth out.pth --arch "{type: Restormer, dim: 24}"
"""
import argparse
import os
import pickle
import re
import sys
import zipfile
from collections import Counter, OrderedDict, namedtuple

import torch
import yaml

import kd_archs  # noqa: F401  (registers our networks)
from basicsr.archs import build_network
from kd_archs.presets import preset_network

CONTAINER_KEYS = ('params_ema', 'params', 'state_dict', 'model', 'net')


def rules(*pairs):
    """(full-key regex, replacement template) pairs, compiled."""
    return tuple((re.compile(pattern), template) for pattern, template in pairs)


# official EDSR-PyTorch/RCAN names -> BasicSR names; the trunk's last conv is body.<number of blocks or groups>
HEAD_TAIL = (
    (r'head\.0\.(\w+)', r'conv_first.\1'),
    (r'body\.(\d+)\.(\w+)', r'conv_after_body.\2'),
    (r'tail\.0\.(\d+)\.(\w+)', r'upsample.\1.\2'),  # Upsampler: conv, PixelShuffle per x2 stage (or one x3)
    (r'tail\.1\.(\w+)', r'conv_last.\1'),
)
RCAN_RULES = rules(
    *HEAD_TAIL,
    (r'body\.(\d+)\.body\.(\d+)\.body\.([02])\.(\w+)', r'body.\1.residual_group.\2.rcab.\3.\4'),
    # CALayer.conv_du (conv, ReLU, conv, Sigmoid) -> ChannelAttention.attention (pool, conv, ReLU, conv, Sigmoid)
    (r'body\.(\d+)\.body\.(\d+)\.body\.3\.conv_du\.0\.(\w+)', r'body.\1.residual_group.\2.rcab.3.attention.1.\3'),
    (r'body\.(\d+)\.body\.(\d+)\.body\.3\.conv_du\.2\.(\w+)', r'body.\1.residual_group.\2.rcab.3.attention.3.\3'),
    (r'body\.(\d+)\.body\.(\d+)\.(\w+)', r'body.\1.conv.\3'),  # a group's last conv, after its blocks
)
EDSR_RULES = rules(
    *HEAD_TAIL,
    (r'body\.(\d+)\.body\.0\.(\w+)', r'body.\1.conv1.\2'),
    (r'body\.(\d+)\.body\.2\.(\w+)', r'body.\1.conv2.\2'),
)

VQGAN_KEEP = ('encoder.', 'quant_conv.', 'quantize.embedding.weight')  # taming's VQModel without its decoder and loss
Source = namedtuple(
    'Source', ['archs', 'rules', 'mean_shift', 'keep', 'default_preset'], defaults=((), False, (), None))
SOURCES = {
    'rcan': Source(('RCAN', ), RCAN_RULES, mean_shift=True),
    'edsr': Source(('EDSR', ), EDSR_RULES, mean_shift=True),
    'swinir': Source(('SwinIR', )),
    'nafnet': Source(('NAFNet', 'NAFNetLocal')),
    'restormer': Source(('Restormer', )),
    'uformer': Source(('Uformer', )),
    'drsformer': Source(('DRSformer', )),
    'vqgan': Source(('KDVQGANEncoder', ), keep=VQGAN_KEEP, default_preset='vqgan_encoder_f16_1024'),
    'vgg19': Source(('KDVGG19Features', ), keep=('features.', ), default_preset='vgg19_features'),
}


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the file and the reason."""


class StandIn:
    """Takes the place of a class that a checkpoint's pickle names but the conversion does not need: it accepts any
    constructor arguments and state and runs none of the original class's code."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


def stand_in(full_name):
    """A StandIn subclass named like the global ``module.name`` it replaces."""
    module, _, name = full_name.rpartition('.')
    return type(name, (StandIn, ), {'__module__': module})


def unpickler_reason(error):
    """The reason in torch's long weights-only error message (e.g. 'Unsupported global: GLOBAL ...')."""
    return str(error).split('WeightsUnpickler error:')[-1].strip().splitlines()[0]


def read_checkpoint(path):
    """The object saved in ``path`` (weights-only unpickling) and the globals replaced by stand-ins to read it."""
    if not os.path.isfile(path):
        raise ConversionError(f'{path}: no such file')
    try:
        return torch.load(path, map_location='cpu', weights_only=True), []
    except pickle.UnpicklingError as error:
        if not zipfile.is_zipfile(path):  # stand-ins need the zip format of torch >= 1.6 (legacy files hold tensors)
            raise ConversionError(f'{path} is not a PyTorch checkpoint: {unpickler_reason(error)}') from None
        first_error = error
    except Exception as error:  # torch raises many kinds for files that torch.save did not write
        raise ConversionError(f'{path} is not a PyTorch checkpoint: {error}') from None
    names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    if not names:
        raise ConversionError(f'{path} cannot be read with weights_only=True: {unpickler_reason(first_error)}')
    try:
        with torch.serialization.safe_globals([(stand_in(name), name) for name in names]):
            return torch.load(path, map_location='cpu', weights_only=True), names
    except pickle.UnpicklingError as error:
        raise ConversionError(f'{path} cannot be read with weights_only=True, even with stand-ins for {names}: '
                              f'{unpickler_reason(error)}') from None


def is_state_dict(obj):
    """A non-empty dict of tensors."""
    return isinstance(obj, dict) and len(obj) > 0 and all(torch.is_tensor(value) for value in obj.values())


def find_state_dict(checkpoint, path, param_key=None):
    """(container key or None, state dict) of a checkpoint: under ``param_key``, the first of ``CONTAINER_KEYS``
    that holds one, or the checkpoint itself."""
    keys = sorted(map(str, checkpoint))[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    if param_key is not None:
        if isinstance(checkpoint, dict) and is_state_dict(checkpoint.get(param_key)):
            return param_key, checkpoint[param_key]
        raise ConversionError(f'{path}: no state dict under "{param_key}"; it holds {keys}')
    if is_state_dict(checkpoint):
        return None, checkpoint
    for key in CONTAINER_KEYS:
        if isinstance(checkpoint, dict) and is_state_dict(checkpoint.get(key)):
            return key, checkpoint[key]
    raise ConversionError(f'{path} is not recognised: no state dict at the top level nor under any of '
                          f'{list(CONTAINER_KEYS)}; it holds {keys}')


def check_mean_shift(shift, net, path):
    """The official ``sub_mean``/``add_mean`` convs (``shift``: their tensors) must subtract and add back
    ``rgb_mean * img_range`` of ``net``, as BasicSR's RCAN/EDSR do without layers."""
    expected = net.mean.flatten() * net.img_range
    for name, sign in (('sub_mean', -1), ('add_mean', 1)):
        weight, bias = shift.get(f'{name}.weight'), shift.get(f'{name}.bias')
        if weight is None or bias is None:
            raise ConversionError(f'{path}: no {name}.weight/.bias, which every official checkpoint has')
        if not torch.allclose(weight.flatten(1).float(), torch.eye(3)):
            raise ConversionError(f'{path}: {name} divides by an rgb_std other than 1, which {type(net).__name__} '
                                  'cannot do')
        if not torch.allclose(bias.float(), sign * expected, atol=1e-3):
            raise ConversionError(
                f'{path}: {name} shifts by {bias.tolist()}, but {type(net).__name__} shifts by '
                f'{(sign * expected).tolist()} (rgb_mean * img_range): give --arch the rgb_mean '
                f'{[round(v, 4) for v in (sign * bias.float() / net.img_range).tolist()]} and the img_range of this '
                'checkpoint')


def rename(state, source_rules, path, arch):
    """Official keys -> BasicSR keys by the first of ``source_rules`` that matches; every key must match one."""
    renamed, unmatched = OrderedDict(), []
    for key, value in state.items():
        for pattern, template in source_rules:
            match = pattern.fullmatch(key)
            if match:
                break
        else:
            unmatched.append(key)
            continue
        new_key = match.expand(template)
        if new_key in renamed:
            raise ConversionError(f'{path}: two keys map to {new_key}')
        renamed[new_key] = value
    if unmatched:
        hint = ' (it looks like BasicSR\'s layout already: load it directly)' if 'conv_first.weight' in state else ''
        raise ConversionError(f'{path} is not an official {arch} checkpoint{hint}: {len(unmatched)} keys match no '
                              f'official name, e.g. {unmatched[:5]}')
    return renamed


def check_fit(state, net, path):
    """``state`` must have exactly ``net``'s keys and shapes; load it strictly."""
    expected = net.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise ConversionError(f'{path} does not fit {type(net).__name__}: {len(missing)} missing keys {missing[:8]}, '
                              f'{len(unexpected)} unexpected keys {unexpected[:8]}')
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ConversionError(f'{path} does not fit {type(net).__name__}: {error}') from None
    return OrderedDict((key, state[key].detach().clone()) for key in expected)


def convert(source, in_path, out_path, net_opt, param_key=None):
    """Convert ``in_path`` (an official ``source`` checkpoint) into ``out_path`` = ``{'params': state_dict}``.

    Args:
        source (str): A key of ``SOURCES``.
        in_path (str): The published file.
        out_path (str): Where to write the converted file.
        net_opt (dict): The target network (``type`` + arguments) the result must load into strictly.
        param_key (str | None): The top-level key of the state dict; None to find it.

    Returns:
        list[str]: What was read, changed and written.

    Raises:
        ConversionError: The file is not a checkpoint of that source, or does not fit the network.
    """
    spec = SOURCES[source]
    if net_opt.get('type') not in spec.archs:
        raise ConversionError(f'the target network is {net_opt.get("type")}, but {source} checkpoints are for '
                              f'{" or ".join(spec.archs)}')
    checkpoint, stand_ins = read_checkpoint(in_path)
    container, state = find_state_dict(checkpoint, in_path, param_key)
    where = f'under "{container}"' if container else 'at the top level'
    report = [
        f'read {in_path}: {len(state)} tensors {where}' +
        (f'; stand-ins for {", ".join(stand_ins)}' if stand_ins else '')
    ]
    if all(key.startswith('module.') for key in state):
        state = OrderedDict((key[len('module.'):], value) for key, value in state.items())
        report.append('removed the "module." prefix of every key')
    state = OrderedDict(state)
    if spec.keep:
        dropped = Counter(key.split('.')[0] for key in state if not key.startswith(spec.keep))
        state = OrderedDict((key, value) for key, value in state.items() if key.startswith(spec.keep))
        if not state:
            raise ConversionError(f'{in_path} is not a {source} checkpoint: no key starts with {list(spec.keep)}')
        report.append(f'kept {len(state)} tensors ({", ".join(spec.keep)}); dropped {sum(dropped.values())} '
                      f'({", ".join(f"{prefix}: {count}" for prefix, count in sorted(dropped.items()))})')
    shift = {key: state.pop(key) for key in list(state) if key.startswith(('sub_mean.', 'add_mean.'))}
    if spec.rules:
        state = rename(state, spec.rules, in_path, net_opt['type'])
        report.append(f'renamed {len(state)} official keys to BasicSR\'s {net_opt["type"]} keys')
    net = build_network(net_opt)
    if spec.mean_shift:
        check_mean_shift(shift, net, in_path)
        report.append('sub_mean/add_mean: the same shift as rgb_mean * img_range of the target; dropped')
    state = check_fit(state, net, in_path)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    torch.save({'params': state}, out_path)
    params = sum(p.numel() for p in net.parameters())
    report.append(f'wrote {out_path}: {{"params": {len(state)} tensors}}, loads strictly into {net_opt["type"]} '
                  f'({params / 1e6:.2f}M parameters)')
    return report


def target_network(args, parser):
    """The network dict from --preset, --arch or the source's default preset."""
    if args.arch:
        net_opt = yaml.safe_load(args.arch)
        if not isinstance(net_opt, dict) or 'type' not in net_opt:
            parser.error(f'--arch must be a YAML dict with a type, e.g. "{{type: RCAN, upscale: 2}}"; got {args.arch}')
        return net_opt
    name = args.preset or SOURCES[args.source].default_preset
    if name is None:
        parser.error(f'{args.source}: give the target network with --preset NAME (kd_archs/kd_presets.yml) or --arch')
    try:
        return preset_network(name)
    except KeyError as error:
        parser.error(error.args[0])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('source', choices=list(SOURCES), help='who published the checkpoint')
    parser.add_argument('input', help='the published file')
    parser.add_argument('output', help='the converted file, {"params": state_dict}')
    target = parser.add_mutually_exclusive_group()
    target.add_argument('--preset', help='target network: a preset of kd_archs/kd_presets.yml')
    target.add_argument('--arch', help='target network as a YAML dict, e.g. "{type: RCAN, num_block: 6, upscale: 2}"')
    parser.add_argument('--param-key', help='top-level key of the state dict (default: found automatically)')
    args = parser.parse_args(argv)
    net_opt = target_network(args, parser)
    try:
        report = convert(args.source, args.input, args.output, net_opt, args.param_key)
    except ConversionError as error:
        sys.exit(f'convert_checkpoint {args.source}: {error}')
    print('\n'.join(report))


if __name__ == '__main__':
    main()
