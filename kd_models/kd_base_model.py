"""The distillation platform every basicsr-kd method builds on: frozen teachers, trainable helpers, feature taps."""
import difflib
import os
import re
from collections import OrderedDict
from contextlib import nullcontext

import torch
from basicsr.archs import build_network
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger

from .kd_eval_model import pad_to_multiple

TEACHER_KEY = re.compile(r'^network_(t\d*)$')
AUTOCAST_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def freeze(net):
    """Make ``net`` a frozen network: eval mode and no parameter takes a gradient."""
    net.eval()
    net.requires_grad_(False)
    return net


class FeatureTaps():
    """Forward hooks that keep the outputs of sub-modules named by their module path (e.g. ``body.5``).

    A tapped module called several times in one forward keeps its last output.

    Args:
        net (nn.Module): The bare network (not its DDP wrapper; hooks on it also fire under DDP).
        paths (list[str]): Module paths as in ``net.named_modules()``.
        option (str): The option key the paths come from, named in errors.
    """

    def __init__(self, net, paths, option):
        modules = dict(net.named_modules())
        for path in paths:
            if path not in modules:
                closest = difflib.get_close_matches(path, [name for name in modules if name], n=5, cutoff=0.5)
                raise KeyError(f'{option}: {type(net).__name__} has no module "{path}"; closest: {closest}')
        self.paths = list(paths)
        self.features = {}
        self._handles = [modules[path].register_forward_hook(self._keeper(path)) for path in self.paths]

    def _keeper(self, path):

        def keep(module, inputs, output):
            # a copy: the network may change the output in place later (EDSR, RCAN: `res += x` after conv_after_body)
            self.features[path] = output.clone() if torch.is_tensor(output) else output

        return keep

    def outputs(self):
        """The kept outputs of the last forward, in the configured order."""
        return [self.features[path] for path in self.paths]

    def to_float(self):
        """Cast the kept outputs to float32 (after a forward under autocast)."""
        self.features = {path: feature.float() for path, feature in self.features.items()}

    def remove(self):
        for handle in self._handles:
            handle.remove()


class KDBaseModel(SRModel):
    """Base of the distillation models: a student (``network_g``) taught by frozen networks.

    Option keys it reads (besides SRModel's):

    - ``network_t`` or ``network_t1`` .. ``network_tN``: teachers, built through ARCH_REGISTRY, loaded strictly from
      ``path.pretrain_network_t*`` (``param_key_t*``: ``params_ema``, falling back to ``params``; ``strict_load_t*``:
      true), frozen, moved to the device, never wrapped in DDP, never saved. List them in
      ``path.ignore_resume_networks`` (BasicSR's resume would otherwise look for them among the student's files).
    - Frozen auxiliary networks named in the subclass's ``frozen_networks`` (``network_<name>``): as teachers.
    - Every other ``network_<name>``: a trainable helper (regressor, projector...), optimised with the student by
      ``optim_g``, wrapped in DDP, saved as ``net_<name>_<iter>.pth`` and restored on resume. Call helpers through
      ``self.helpers[name]`` so DDP synchronises their gradients.
    - ``train.feature_taps``: ``{network_g: [paths], network_t: [paths], ...}`` module paths whose outputs are kept in
      ``self.taps[<name>].outputs()`` after each forward.
    - ``train.teacher_autocast``: ``bf16`` | ``fp16`` | ``~``: run the frozen forwards under autocast (CUDA only).

    Overrides of SRModel: ``init_training_settings`` (builds the networks above before the student's optimiser),
    ``setup_optimizers`` (adds the helpers' parameters), ``optimize_parameters`` (student forward, teacher forwards
    under no_grad, then the subclass's ``compute_losses``), ``save`` (adds the helpers), ``test`` (pads the input of
    a windowed student, as BasicSR's SwinIRModel does). Inherited unchanged: ``feed_data``, validation, EMA and
    resume of optimisers and schedulers.

    Subclasses implement ``compute_losses(current_iter) -> OrderedDict`` of weighted loss terms (the base adds the
    pixel loss ``l_pix`` to GT) and may override ``teacher_input(name)``.
    """

    frozen_networks = ()

    def init_training_settings(self):
        self.check_resume_settings()  # option checks first: a scale mismatch must not surface as a load error
        self.check_scales()
        self.teachers = OrderedDict((name, self.build_frozen_network(name)) for name in self.teacher_names())
        self.frozen = OrderedDict((name, self.build_frozen_network(name)) for name in self.frozen_networks)
        self.helpers = OrderedDict((name, self.build_helper_network(name)) for name in self.helper_names())
        self.taps = self.build_feature_taps()
        autocast = self.opt['train'].get('teacher_autocast')
        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise ValueError(f'train.teacher_autocast = {autocast}: use one of {list(AUTOCAST_DTYPES)} or ~')
        self.teacher_autocast = autocast
        self._checked_output_shapes = False
        super().init_training_settings()

    # ----------------------------------------------------------------------------------------------- networks
    def teacher_names(self):
        names = sorted((m.group(1) for m in map(TEACHER_KEY.match, self.opt) if m), key=lambda n: int(n[1:] or 0))
        if not names:
            raise ValueError(f'{self.opt["model_type"]} needs a teacher: set network_t (or network_t1..network_tN)')
        if 't' in names and len(names) > 1:
            raise ValueError(f'Use either network_t or network_t1..network_tN, not both (found {names})')
        return names

    def helper_names(self):
        reserved = {'g', *self.teacher_names(), *self.frozen_networks}
        return [key[len('network_'):] for key in self.opt if key.startswith('network_')
                and key[len('network_'):] not in reserved]

    def build_frozen_network(self, name):
        """Build ``network_<name>``, load its weights strictly from ``path.pretrain_network_<name>``, freeze it."""
        key = f'network_{name}'
        if key not in self.opt:
            raise ValueError(f'{self.opt["model_type"]} needs {key} in the options')
        net = build_network(self.opt[key])
        self.load_frozen_weights(net, name)
        self.print_network(net)
        return freeze(net.to(self.device))

    def load_frozen_weights(self, net, name):
        """Load ``net`` from ``path.pretrain_network_<name>``; every failure names the option and the file."""
        path_opt = self.opt['path']
        option = f'path.pretrain_network_{name}'
        load_path = path_opt.get(f'pretrain_network_{name}')
        if not load_path:
            raise ValueError(f'{option} is not set: network_{name} must load pretrained weights (a random frozen '
                             'network would silently teach noise). See README, "Pretrained teachers".')
        if not os.path.isfile(load_path):
            try:  # the manifest is optional: a fork may have copied only the *_model.py files
                from .teacher_manifest import describe
                published = describe(load_path)
            except ImportError:
                published = None
            raise FileNotFoundError(f'{option} = {load_path}: no such file. Put the pretrained weights there. ' +
                                    (published or 'Where each is published: README, "Pretrained teachers".'))
        checkpoint = torch.load(load_path, map_location='cpu', weights_only=True)
        param_key = path_opt.get(f'param_key_{name}', 'params_ema')
        if param_key not in checkpoint and 'params' in checkpoint:
            param_key = 'params'
        if param_key not in checkpoint:
            raise KeyError(f'{option} = {load_path}: no "{param_key}" (nor "params") in it; it holds '
                           f'{sorted(checkpoint)[:8]}. Convert it to BasicSR\'s layout first.')
        state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in checkpoint[param_key].items()}
        strict = path_opt.get(f'strict_load_{name}', True)
        try:
            result = net.load_state_dict(state, strict=strict)
        except RuntimeError as error:
            raise RuntimeError(f'{option} = {load_path} does not fit network_{name} '
                               f'({self.opt[f"network_{name}"]}):\n{error}') from None
        get_root_logger().info(f'Loaded frozen network_{name} from {load_path} [{param_key}], strict={strict}; '
                               f'missing: {len(result.missing_keys)}, unexpected: {len(result.unexpected_keys)}')

    def build_helper_network(self, name):
        """Build the trainable helper ``network_<name>``; restore it from ``path.pretrain_network_<name>`` if set."""
        net = build_network(self.opt[f'network_{name}']).to(self.device)
        load_path = self.opt['path'].get(f'pretrain_network_{name}')
        if load_path is not None:
            self.load_network(net, load_path, self.opt['path'].get(f'strict_load_{name}', True), 'params')
        net.train()
        self.print_network(net)
        return self.model_to_device(net)

    def check_resume_settings(self):
        """Frozen networks must be in ``path.ignore_resume_networks``: they are not in the student's checkpoints."""
        ignored = self.opt['path'].get('ignore_resume_networks') or []
        missing = [f'network_{name}' for name in [*self.teacher_names(), *self.frozen_networks]
                   if f'network_{name}' not in ignored]
        if missing:
            raise ValueError(f'path.ignore_resume_networks must list the frozen networks {missing}: they are never '
                             'saved with the student, so a resumed run could not find them.')

    def check_scales(self):
        """Teachers must upscale like the student and the data (``scale``)."""
        expected = self.opt.get('scale', 1)
        for key in ['network_g'] + [f'network_{name}' for name in self.teacher_names()]:
            scale = self.opt[key].get('upscale', self.opt[key].get('scale'))
            if scale is not None and scale != expected:
                raise ValueError(f'{key}.upscale = {scale} but scale = {expected}: teacher, student and data must '
                                 'share one scale.')

    def build_feature_taps(self):
        nets = {'g': self.get_bare_model(self.net_g), **self.teachers, **self.frozen}
        taps = {}
        for key, paths in (self.opt['train'].get('feature_taps') or {}).items():
            name = key[len('network_'):]
            if name not in nets:
                raise KeyError(f'train.feature_taps.{key}: no such frozen network or student (have {sorted(nets)})')
            taps[name] = FeatureTaps(nets[name], paths, f'train.feature_taps.{key}')
        return taps

    # ----------------------------------------------------------------------------------------------- training
    def setup_optimizers(self):
        """The student's ``optim_g`` also optimises every trainable helper."""
        super().setup_optimizers()
        helper_params = [p for net in self.helpers.values() for p in net.parameters() if p.requires_grad]
        if helper_params:
            self.optimizer_g.add_param_group({'params': helper_params})

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        """Any ``torch.optim`` optimiser by its class name (the papers' restoration runs use ``AdamW``); BasicSR
        1.4.2's own builds only ``Adam``."""
        optimizer_class = getattr(torch.optim, optim_type, None)
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
            raise ValueError(f'train.optim_g.type = {optim_type} is not an optimiser of torch.optim '
                             '(e.g. Adam, AdamW, SGD)')
        return optimizer_class(params, lr, **kwargs)

    def teacher_input(self, name):
        """The input of teacher ``name`` (default: the student's LQ input)."""
        return self.lq

    def forward_teachers(self):
        """Outputs of every teacher (OrderedDict), under no_grad and the optional CUDA autocast."""
        dtype = AUTOCAST_DTYPES.get(self.teacher_autocast)
        autocast = torch.autocast('cuda', dtype=dtype) if dtype and self.device.type == 'cuda' else nullcontext()
        with torch.no_grad(), autocast:
            outputs = OrderedDict((name, net(self.teacher_input(name))) for name, net in self.teachers.items())
        if dtype:
            for name in self.teachers:
                if name in self.taps:
                    self.taps[name].to_float()
        return OrderedDict((name, out.float()) for name, out in outputs.items())

    def check_output_shapes(self):
        for name, out in self.teacher_outputs.items():
            if out.shape != self.output.shape:
                raise ValueError(f'network_{name} gives {tuple(out.shape)} but network_g gives '
                                 f'{tuple(self.output.shape)} for the same input: check their upscale/task options.')
        self._checked_output_shapes = True

    def compute_losses(self, current_iter):
        """Weighted loss terms of this step; the base gives the student's pixel loss to GT."""
        return OrderedDict(l_pix=self.cri_pix(self.output, self.gt))

    def optimize_parameters(self, current_iter):
        self.optimizer_g.zero_grad()
        self.output = self.net_g(self.lq)
        self.teacher_outputs = self.forward_teachers()
        if not self._checked_output_shapes:
            self.check_output_shapes()
        losses = self.compute_losses(current_iter)
        sum(losses.values()).backward()
        self.optimizer_g.step()
        self.log_dict = self.reduce_loss_dict(losses)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def test(self):
        """SRModel's test; a student with ``window_size`` (SwinIR) gets its input reflect-padded to a multiple of
        the window and its output cropped back, as BasicSR's SwinIRModel does (validation images are any size)."""
        window_size = self.opt['network_g'].get('window_size')
        if not window_size:
            return super().test()
        lq, (h, w), scale = self.lq, self.lq.shape[-2:], self.opt.get('scale', 1)
        self.lq = pad_to_multiple(lq, window_size)
        try:
            super().test()
        finally:
            self.lq = lq
        self.output = self.output[..., :h * scale, :w * scale]

    def save(self, epoch, current_iter):
        """Save the student (and its EMA) as SRModel does, then each trainable helper; never the frozen networks."""
        for name, net in self.helpers.items():
            self.save_network(net, f'net_{name}', current_iter)
        super().save(epoch, current_iter)
