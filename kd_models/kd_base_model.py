"""The distillation platform every basicsr-kd method builds on: frozen networks, trainable helpers, feature taps, and
the hooks a method needs (per-teacher inputs, extra training state, a step hook, frozen encoders fed the student)."""
import difflib
import hashlib
import json
import math
import os
import pickle
import re
from collections import OrderedDict
from contextlib import contextmanager, nullcontext

import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.registry import LOSS_REGISTRY

from .kd_eval_model import pad_to_multiple
from .kd_progressive_patches import ProgressivePatches

TEACHER_KEY = re.compile(r'^network_(t\d*)$')
AUTOCAST_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}
TEACHER_INPUTS = ('lq', 'gt')
# Any pixel-style loss: a per-pixel distance between two images (the student's output and its target). A loss key
# that takes any of them declares PIXEL_LOSSES (not WeightedTVLoss, a smoothness term of one image).
PIXEL_LOSSES = ('L1Loss', 'MSELoss', 'CharbonnierLoss')
PROBE_SIDE = 16  # the probe image's side is a multiple of this (2 x 2 maps after three halvings)


def option_teacher_names(opt):
    """The teachers an option dict defines (``network_t``, or ``network_t1`` .. ``network_tN``), in order."""
    return sorted((m.group(1) for m in map(TEACHER_KEY.match, opt) if m), key=lambda n: int(n[1:] or 0))


def accepts_loss(loss_class, kinds):
    """Whether a loss class is of one of ``kinds`` (loss class names): named there itself, or derived from a named
    base that is not registered (``KDTapLoss`` admits every tap loss). A registered name admits only itself:
    BasicSR's WeightedTVLoss derives from L1Loss but compares no two images."""
    return loss_class.__name__ in kinds or any(base.__name__ in kinds and base.__name__ not in LOSS_REGISTRY
                                               for base in loss_class.__mro__[1:])


def freeze(net):
    """Make ``net`` a frozen network: eval mode and no parameter takes a gradient."""
    net.eval()
    net.requires_grad_(False)
    return net


def weights_digest(state_dict):
    """A hash of a state dict's names, shapes, dtypes and values: the identity of the weights a network loaded."""
    digest = hashlib.blake2b(digest_size=16)
    for key, value in state_dict.items():
        value = value.detach().cpu().contiguous()
        digest.update(f'{key}:{tuple(value.shape)}:{value.dtype}'.encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b'')
    return digest.hexdigest()


def save_atomically(obj, path):
    """``torch.save`` to a temporary file beside ``path``, then rename: a run killed mid-write never leaves a
    truncated checkpoint or state under the final name. A failed write is logged, as BasicSR does, and the run goes
    on."""
    temporary = f'{path}.tmp'
    try:
        torch.save(obj, temporary)
        os.replace(temporary, path)
    except OSError as error:
        get_root_logger().warning(f'Could not save {path}: {error}')
        if os.path.exists(temporary):
            os.remove(temporary)


class FeatureTaps():
    """Forward hooks that keep the outputs of sub-modules named by their module path (e.g. ``body.5``).

    A tapped module called several times in one forward keeps its last output. The kept tensors are copies (the
    network may change its output in place later: EDSR and RCAN add the head to ``conv_after_body``'s output).
    ``paths`` must list the modules in the order their outputs are produced in the forward pass, input side first
    (``check_order``): every method pairs or weighs the taps by their index.

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
        self.option = option
        self.features = {}
        self._handles = [modules[path].register_forward_hook(self._keeper(path)) for path in self.paths]

    def _keeper(self, path):

        def keep(module, inputs, output):
            self.features.pop(path, None)  # re-inserted: the dict's order is the order the kept outputs were made
            self.features[path] = output.clone() if torch.is_tensor(output) else output

        return keep

    def outputs(self):
        """The kept outputs of the last forward, in the configured order."""
        return [self.features[path] for path in self.paths]

    def take(self):
        """The kept outputs of the last forward, in float32, released from the taps (the next call cannot see them)."""
        outputs = [feature.float() for feature in self.outputs()]
        self.features = {}
        return outputs

    def to_float(self):
        """Cast the kept outputs to float32 (after a forward under autocast)."""
        self.features = {path: feature.float() for path, feature in self.features.items()}

    def check_order(self):
        """After one forward from empty taps: ``paths`` lists each module once, in the order their kept outputs were
        produced (the order the forward hooks fired; a module that did not run is missing from it)."""
        ran = list(self.features)
        if self.paths != ran:
            raise ValueError(f'{self.option} = {self.paths}: list each module once, in the order it runs in the '
                             f'forward pass, input side first (the taps are paired and weighed by index): {ran}')

    def remove(self):
        for handle in self._handles:
            handle.remove()


class KDBaseModel(SRModel):
    """Base of the distillation models: a student (``network_g``) taught by frozen networks.

    Option keys it reads (besides SRModel's):

    - ``network_t`` or ``network_t1`` .. ``network_tN``: teachers, built through ARCH_REGISTRY, loaded strictly from
      ``path.pretrain_network_t*`` (``param_key_t*``: ``params_ema``, falling back to ``params`` where the file has
      no EMA weights; ``strict_load_t*``: true), frozen, moved to the device, never wrapped in DDP, never
      saved. List them in ``path.ignore_resume_networks`` (BasicSR's resume would otherwise look for them among the
      student's files).
    - ``network_<name>`` for each name in the method's ``frozen_networks``: frozen networks loaded from files in the
      same way (``path.pretrain_network_<name>``), e.g. DCKD's VQGAN encoder.
    - ``network_<name>`` for each name in the method's ``helper_networks``: trainable helpers (regressors,
      projectors...), optimised with the student by ``optim_g``, wrapped in DDP, saved as ``net_<name>_<iter>.pth``
      and restored on resume. Any other ``network_*`` key is refused before the first step. A helper named in the
      method's ``own_optimizer_helpers`` is trained by its own optimiser instead, ``train.optim_<name>`` (DFKD's
      generator, which maximises what the student minimises), also saved and resumed with the training state.
    - ``train.teacher_inputs``: ``{t1: lq, t2: gt}``: what each teacher is fed (default: the LQ input).
    - ``train.feature_taps``: ``{network_g: [paths], network_t: [paths], ...}`` module paths whose outputs are kept
      after each forward (``self.taps[<name>]``), each list in execution order (checked by ``probe_taps`` for the
      student and the teachers).
    - ``train.teacher_autocast``: ``bf16`` | ``fp16`` | ``~``: run the frozen forwards under autocast (CUDA only;
      on another device the run says once that it has no effect).
    - ``train.pixel_opt`` (optional): the student's pixel loss to ``pixel_target()`` (GT by default), any pixel-style
      loss (``PIXEL_LOSSES``: L1Loss, MSELoss, CharbonnierLoss); ``train.perceptual_opt`` (optional): BasicSR's
      PerceptualLoss to the same target.
    - ``train.teacher_cache``: a folder of ``datasets_prep/cache_teacher_outputs.py``: the frozen target comes with
      each batch (``KDCachedTargetDataset``) instead of from the frozen forwards, for the methods whose
      ``frozen_target`` needs nothing but the LQ input (its manifest must match the options, checked before step 1).
    - ``train.progressive_patches``: ``[[until iteration, gt_size, batch size per GPU], ...]``: Restormer's progressive
      learning; each step crops the loaded batch (the largest patch and batch of the schedule) to the sizes of its
      iteration (``ProgressivePatches``).

    Hooks for a method (each has a default):

    - ``single_teacher``: True when the method distils exactly one teacher, ``network_t`` (refused otherwise).
    - ``not_for_testing``: where ``test()`` needs what only training builds (teachers, the pixel range), the reason
      and what to use instead; such a model is refused under test.py (``is_train`` false) with it.
    - ``option_keys``: the keys the method reads; a loss key maps to the loss classes it accepts (a tuple of names,
      e.g. ``{'train': {'ce_opt': ('KDCodebookCrossEntropyLoss', )}}``; ``PIXEL_LOSSES`` for any pixel-style loss).
      A loss of another kind is refused first thing in ``init_training_settings`` (``check_loss_kinds``);
      ``build_train_loss(key)`` builds one.
    - ``check_tapped_features(features)``: the method's checks of its taps (channels, sizes) on the features of one
      probe forward before the first step (``probe_taps``, which also checks each tap list's order);
      ``probe_input(name, image)``: what each network is fed there (PISR's teacher, fed GT, gets the GT size).

    - ``compute_losses(current_iter)``: the weighted loss terms of the step (summed for backward); values written to
      ``self.diagnostics`` are logged beside them but not optimised.
    - ``pixel_target()``: the target of ``pixel_opt``/``perceptual_opt``; ``teacher_views(name)``: the inputs of one
      teacher, run in one batched forward (``self.teacher_view_outputs[name]``).
    - ``frozen_copies``: names of frozen copies of the student's architecture made at iteration 0 from the student's
      weights, without its feature taps (DCKD's history model), in ``self.frozen[name]``.
    - ``run_frozen(name, x, grad_to_input)``: one frozen network on ``x`` (gradient to ``x`` but never to its
      weights when asked), returning its output and its taps of that call.
    - ``after_step(current_iter)``: called after every optimiser step (and the EMA update).
    - ``forward_networks()``: the step's forwards (student on LQ, then the teachers); ``checkpoint_extras(label)``:
      entries saved beside the weights of a checkpoint (MTKD's stage 1: the aggregator's input is the teachers'
      outputs, and its checkpoint carries the teacher list; SKD's student: the pixel range it works in).
    - ``checkpoint_weights(label, key, state)``: the entries a network's weights make in its checkpoint (default
      ``{key: state}``; CSD's super-network writes its student slice there and itself beside it).
    - ``training_state()`` / ``load_training_state(state)``: extra state saved in the ``.state`` file and given back
      on resume.

    Overrides of SRModel: ``init_training_settings`` (builds and checks the networks above; the pixel loss becomes
    optional), ``setup_optimizers`` (adds the helpers' parameters), ``optimize_parameters`` (student forward,
    teacher forwards under no_grad, the method's losses, the step hook), ``save`` and ``save_network`` (helpers,
    atomic writes), ``save_training_state`` and ``resume_training`` (extra state; frozen networks checked to be the
    ones the run started with), ``test`` (pads the input of a windowed student, as BasicSR's SwinIRModel does).
    """

    frozen_networks = ()
    frozen_copies = ()
    helper_networks = ()
    own_optimizer_helpers = ()  # helpers trained by an optimiser of their own, train.optim_<name> (DFKD's generator)
    single_teacher = False  # True: the method distils exactly one teacher, network_t
    not_for_testing = None  # why a model whose test() needs its training set-up is refused under test.py
    # the option keys this class reads besides BasicSR's (basicsr_kd/option_keys.py): a tuple of loss class names is a
    # loss dict of one of those kinds; 'text': free text (module or file paths), never read as a number
    option_keys = {'train': {'teacher_inputs': None, 'feature_taps': 'text', 'teacher_autocast': None,
                             'teacher_cache': 'text', 'progressive_patches': None, 'pixel_opt': PIXEL_LOSSES,
                             'perceptual_opt': ('PerceptualLoss', )}}

    def __init__(self, opt):
        if not opt['is_train'] and self.not_for_testing:
            raise ValueError(f'model_type = {type(self).__name__} cannot run under test.py: {self.not_for_testing}')
        self.check_not_data_parallel(opt)  # before SRModel wraps the student
        super().__init__(opt)

    def init_training_settings(self):
        self.check_loss_kinds()  # option checks first: a scale mismatch must not surface as a load error
        self.check_network_keys()
        self.check_resume_settings()
        self.check_scales()
        self.teacher_inputs = self.check_teacher_inputs()
        self.frozen_sources = OrderedDict()
        self.teachers = OrderedDict((name, self.build_frozen_network(name)) for name in self.teacher_names())
        self.frozen = OrderedDict((name, self.build_frozen_network(name)) for name in self.frozen_networks)
        self.frozen.update((name, self.build_frozen_copy(name)) for name in self.frozen_copies)
        self.helpers = OrderedDict((name, self.build_helper_network(name)) for name in self.helper_names())
        self.taps = self.build_feature_taps()
        self.teacher_cache = self.check_teacher_cache()
        self.progressive_patches = self.check_progressive_patches()
        autocast = self.opt['train'].get('teacher_autocast')
        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise ValueError(f'train.teacher_autocast = {autocast}: use one of {list(AUTOCAST_DTYPES)} or ~')
        if autocast is not None and self.device.type != 'cuda':
            get_root_logger().warning(f'train.teacher_autocast = {autocast} has no effect on the device {self.device}: '
                                      'the frozen forwards run under CUDA autocast only, so here in float32')
        self.teacher_autocast = autocast
        self._checked_output_shapes = False
        self.diagnostics = OrderedDict()
        self.init_student_training()
        self.check_tapped_features(self.probe_taps())

    def init_student_training(self):
        """SRModel's training set-up (EMA student, pixel and perceptual losses, optimiser, schedulers), with both
        losses optional: a method may have no pixel term to GT (FACD's image loss replaces it)."""
        self.net_g.train()
        train_opt = self.opt['train']
        self.ema_decay = train_opt.get('ema_decay', 0)
        if self.ema_decay > 0:
            get_root_logger().info(f'Use Exponential Moving Average with decay: {self.ema_decay}')
            self.net_g_ema = build_network(self.opt['network_g']).to(self.device)
            load_path = self.opt['path'].get('pretrain_network_g')
            if load_path is not None:
                self.load_network(self.net_g_ema, load_path, self.opt['path'].get('strict_load_g', True), 'params_ema')
            else:
                self.model_ema(0)
            self.net_g_ema.eval()
        self.cri_pix = self.build_train_loss('pixel_opt')
        self.cri_perceptual = self.build_train_loss('perceptual_opt')
        self.setup_optimizers()
        self.setup_schedulers()

    # ----------------------------------------------------------------------------------------------- losses
    @classmethod
    def loss_kinds(cls):
        """{train key: the loss class names it accepts}, as the class and its bases declare them in ``option_keys``
        (the most derived declaration wins)."""
        kinds = {}
        for base in reversed(cls.__mro__):
            declared = vars(base).get('option_keys', {}).get('train', {})
            kinds.update((key, value) for key, value in declared.items() if isinstance(value, tuple))
        return kinds

    def check_loss_kinds(self):
        """Every loss the options set must be of a kind its key accepts (``loss_kinds``): another kind would train
        silently on the wrong quantity (``ce_opt: {type: L1Loss}``) or fail inside the first step."""
        for key, kinds in self.loss_kinds().items():
            loss_opt = self.opt['train'].get(key)
            if not loss_opt:
                continue
            loss_class = LOSS_REGISTRY.get(loss_opt.get('type'))
            if not accepts_loss(loss_class, kinds):
                accepted = sorted(name for name, other in LOSS_REGISTRY if accepts_loss(other, kinds))
                raise ValueError(f'train.{key}.type = {loss_opt["type"]}: {type(self).__name__} takes '
                                 f'{"one of " if len(accepted) > 1 else ""}{", ".join(accepted)} there')

    def build_train_loss(self, key, loss_opt=None):
        """The loss ``train.<key>`` (or ``loss_opt``, the dict it holds) on the device; None when it is not set. A value
        the loss refuses (its ValueError) is reported with the key."""
        loss_opt = self.opt['train'].get(key) if loss_opt is None else loss_opt
        try:
            return build_loss(loss_opt).to(self.device) if loss_opt else None
        except ValueError as error:
            raise ValueError(f'train.{key}: {error}') from error

    # ----------------------------------------------------------------------------------------------- networks
    def teacher_names(self):
        names = option_teacher_names(self.opt)
        if not names:
            raise ValueError(f'{self.opt["model_type"]} needs a teacher: set network_t (or network_t1..network_tN)')
        if 't' in names and len(names) > 1:
            raise ValueError(f'Use either network_t or network_t1..network_tN, not both (found {names})')
        if self.single_teacher and names != ['t']:
            raise ValueError(f'{type(self).__name__} distils one teacher, network_t; got '
                             f'{["network_" + name for name in names]}')
        return names

    def helper_names(self):
        """The trainable helpers the options define, among the method's ``helper_networks``."""
        return [name for name in self.helper_networks if f'network_{name}' in self.opt]

    @staticmethod
    def check_not_data_parallel(opt):
        """Several GPUs in one process (BasicSR's DataParallel) would split each batch over replicas whose forward
        hooks each keep a slice: the feature taps would silently hold part of the batch."""
        if opt['is_train'] and not opt['dist'] and opt.get('num_gpu', 0) > 1:
            raise ValueError(
                f'num_gpu = {opt["num_gpu"]} without a launcher makes BasicSR use DataParallel, which basicsr-kd does '
                'not support (feature taps would hold one replica\'s part of the batch). Run one process per GPU: '
                f'torchrun --nproc_per_node={opt["num_gpu"]} train.py -opt <options> --launcher pytorch')

    def check_network_keys(self):
        """Every ``network_*`` key must be the student, a teacher or a network the method declares: a misspelt key
        would otherwise be trained and saved silently (and make DDP fail on unused parameters)."""
        known = {'g', *self.teacher_names(), *self.frozen_networks, *self.helper_networks}
        unknown = [key for key in self.opt if key.startswith('network_') and key[len('network_'):] not in known]
        if unknown:
            expected = [f'network_{name}' for name in (*self.frozen_networks, *self.helper_networks)]
            raise ValueError(f'{self.opt["model_type"]} does not use {unknown}; besides network_g and the teachers '
                             f'(network_t or network_t1..tN) it reads {expected or "no other network"}')

    def check_teacher_inputs(self):
        """``train.teacher_inputs``: {teacher name: lq | gt}, every teacher defaulting to the LQ input."""
        given = self.opt['train'].get('teacher_inputs') or {}
        inputs = {name: 'lq' for name in self.teacher_names()}
        for name, source in given.items():
            if name not in inputs:
                raise ValueError(f'train.teacher_inputs.{name}: no such teacher (have {list(inputs)})')
            if source not in TEACHER_INPUTS:
                raise ValueError(f'train.teacher_inputs.{name} = {source}: use one of {list(TEACHER_INPUTS)}')
            if source == 'gt' and self.opt.get('scale', 1) != 1:
                raise ValueError(f'train.teacher_inputs.{name} = gt: a teacher can take the GT image only when input '
                                 f'and output have one size (scale 1, not {self.opt["scale"]})')
            inputs[name] = source
        return inputs

    def build_frozen_network(self, name):
        """Build ``network_<name>``, load its weights strictly from ``path.pretrain_network_<name>``, freeze it."""
        key = f'network_{name}'
        if key not in self.opt:
            raise ValueError(f'{self.opt["model_type"]} needs {key} in the options')
        net = build_network(self.opt[key])
        self.load_frozen_weights(net, name)
        self.print_network(net)
        return freeze(net.to(self.device))

    def build_frozen_copy(self, name):
        """A frozen network of the student's architecture with the student's current weights. Built anew from
        ``network_g`` (not a deep copy), so the student's feature-tap hooks do not come along."""
        net = build_network(self.opt['network_g'])
        net.load_state_dict(self.get_bare_model(self.net_g).state_dict())
        return freeze(net.to(self.device))

    def read_weight_file(self, load_path, option):
        """The dict in a weight file; every failure names the option and the file."""
        if not os.path.isfile(load_path):
            try:  # the manifest is optional: a fork may have copied only the kd_* files
                from basicsr_kd.teacher_manifest import describe
                published = describe(load_path)
            except ImportError:
                published = None
            raise FileNotFoundError(f'{option} = {load_path}: no such file. Put the pretrained weights there. ' +
                                    (published or 'Where each is published: README, "Pretrained teachers".'))
        try:
            return torch.load(load_path, map_location='cpu', weights_only=True)
        except pickle.UnpicklingError as error:
            if 'Weights only load failed' in str(error):
                raise ValueError(f'{option} = {load_path} holds Python objects besides tensors (a training '
                                 'checkpoint?); convert it to a weights-only file with python -m '
                                 'datasets_prep.convert_checkpoint (README, "Pretrained teachers")') from None
            raise self.damaged(load_path, option, error) from None
        except (RuntimeError, EOFError, OSError, ValueError) as error:
            raise self.damaged(load_path, option, error) from None

    @staticmethod
    def damaged(load_path, option, error):
        size = os.path.getsize(load_path)
        return ValueError(f'{option} = {load_path} is damaged ({size} bytes; {type(error).__name__}: '
                          f'{str(error).splitlines()[0] if str(error) else ""}): it is truncated or corrupt, e.g. by '
                          'an interrupted download or copy. Download or convert it again.')

    def read_weights(self, load_path, option, param_key, key_option):
        """The state dict under ``param_key`` of the weight file ``option`` names (``params_ema`` falls back to
        ``params`` where the file has no EMA weights), without DDP's ``module.`` prefix, and the key read. A missing
        key names ``option`` and ``key_option``."""
        checkpoint = self.read_weight_file(load_path, option)
        if param_key == 'params_ema' and isinstance(checkpoint, dict) and param_key not in checkpoint:
            param_key = 'params'  # a file saved without EMA (the official teachers)
        if not isinstance(checkpoint, dict) or param_key not in checkpoint:
            held = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise KeyError(f'{option} = {load_path}: no "{param_key}" in it ({key_option}); it holds '
                           f'{held}. Convert it to BasicSR\'s layout (python -m datasets_prep.convert_checkpoint)')
        state = OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v)
                            for k, v in checkpoint[param_key].items())
        return state, param_key

    def load_frozen_weights(self, net, name, param_key=None):
        """Load ``net`` from ``path.pretrain_network_<name>`` and record what it loaded in ``frozen_sources``."""
        path_opt = self.opt['path']
        option = f'path.pretrain_network_{name}'
        load_path = path_opt.get(f'pretrain_network_{name}')
        if not load_path:
            raise ValueError(f'{option} is not set: network_{name} must load pretrained weights (a random frozen '
                             'network would silently teach noise). See README, "Pretrained teachers".')
        param_key = param_key or path_opt.get(f'param_key_{name}', 'params_ema')
        state, param_key = self.read_weights(load_path, option, param_key, f'path.param_key_{name}')
        strict = path_opt.get(f'strict_load_{name}', True)
        try:
            result = net.load_state_dict(state, strict=strict)
        except RuntimeError as error:
            raise RuntimeError(f'{option} = {load_path} does not fit network_{name} '
                               f'({self.opt[f"network_{name}"]}):\n{error}') from None
        self.frozen_sources[name] = {
            'network': dict(self.opt[f'network_{name}']),
            'file': load_path,
            'param_key': param_key,
            'digest': weights_digest(net.state_dict())
        }
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
                raise KeyError(f'train.feature_taps.{key}: no such frozen network or student (have '
                               f'{["network_" + n for n in nets]})')
            taps[name] = FeatureTaps(nets[name], paths, f'train.feature_taps.{key}')
        return taps

    def probe_taps(self):
        """One forward of the student and of each teacher that has taps, on a zero image with the training data's
        channels, before the first step. Its side is a multiple of ``PROBE_SIDE`` and of what each of these
        networks needs to run unpadded (its ``multiple``, to which the U-Nets of kd_archs pad their input, else its
        ``window_size`` option: SwinIR), so each tapped map is the input divided by its level's downsampling factor.
        Each tap list must be in execution order (``FeatureTaps.check_order``). Nothing trains or changes state (the
        student runs in eval mode, all without gradient).

        Returns:
            dict: {name: [its tapped features, float32, batch 1]}, ``{}`` when neither the student nor a teacher
            has taps.
        """
        student = self.get_bare_model(self.net_g)
        nets = {name: net for name, net in (('g', student), *self.teachers.items()) if name in self.taps}
        if not nets:
            return {}
        side = math.lcm(PROBE_SIDE, *(getattr(net, 'multiple', None) or self.opt[f'network_{name}'].get('window_size')
                                      or 1 for name, net in nets.items()))
        channels = 1 if ((self.opt.get('datasets') or {}).get('train') or {}).get('color') == 'y' else 3
        image = torch.zeros(1, channels, side, side, device=self.device)
        training = student.training
        student.eval()  # no normalisation statistics may change
        features = {}
        with torch.no_grad():
            for name, net in nets.items():
                self.taps[name].features = {}
                net(self.probe_input(name, image))
                self.taps[name].check_order()
                features[name] = self.taps[name].take()
        student.train(training)
        return features

    def probe_input(self, name, image):
        """What network ``name`` (``g`` or a teacher) is fed in ``probe_taps``, from its LQ-size zero ``image``:
        ``image`` itself by default. A teacher fed another input in training (PISR's, the GT image) gets its size."""
        return image

    def check_tapped_features(self, features):
        """Called once before the first step with ``probe_taps()``'s {name: [tapped features]}: a method checks its
        taps' channels and sizes there (naming the option keys). Default: nothing."""

    def check_paired_taps(self, features, regressor=False, same_channels=False, regressor_name='reg'):
        """For a method that pairs the student's taps (``g``) with the teacher's (``t``) by index, on the probe
        features: with ``regressor``, ``network_<regressor_name>`` (``network_reg`` by default) maps each student
        tap's channels to its teacher tap's (``in_channels``/``out_channels``); otherwise ``same_channels`` asks for
        equal channels (a loss that compares the features element-wise); paired maps share their spatial size. Each
        failure names the option keys."""
        student, teacher = features['g'], features['t']
        paths_g, paths_t = self.taps['g'].paths, self.taps['t'].paths
        if regressor:
            reg_key = f'network_{regressor_name}'
            reg_opt = self.opt[reg_key]
            for key, net, maps in (('in_channels', 'network_g', student), ('out_channels', 'network_t', teacher)):
                channels = [feature.shape[1] for feature in maps]
                if list(reg_opt.get(key) or []) != channels:
                    raise ValueError(f'{reg_key}.{key} = {reg_opt.get(key)} but the taps train.feature_taps.{net} = '
                                     f'{self.opt["train"]["feature_taps"][net]} have {channels} channels')
        for path_g, path_t, feature_g, feature_t in zip(paths_g, paths_t, student, teacher):
            if feature_g.shape[2:] != feature_t.shape[2:]:
                raise ValueError(f'train.feature_taps: network_g.{path_g} gives {tuple(feature_g.shape[2:])} maps but '
                                 f'network_t.{path_t} {tuple(feature_t.shape[2:])}; matching points must share a size')
            if not regressor and same_channels and feature_g.shape[1] != feature_t.shape[1]:
                raise ValueError(f'train.feature_taps: network_g.{path_g} has {feature_g.shape[1]} channels but '
                                 f'network_t.{path_t} {feature_t.shape[1]}; train.feature_opt compares them element '
                                 'by element: add a regressor network_reg (KDConvRegressor) to map them')

    # ----------------------------------------------------------------------------------------------- training
    def setup_optimizers(self):
        """The student's ``optim_g`` also optimises every trainable helper but those of ``own_optimizer_helpers``,
        which get an optimiser each from ``train.optim_<name>`` (``self.helper_optimizers[name]``), appended to
        ``self.optimizers``: BasicSR then gives each its scheduler (``train.scheduler``), saves and resumes it."""
        super().setup_optimizers()
        helper_params = [p for name, net in self.helpers.items() if name not in self.own_optimizer_helpers
                         for p in net.parameters() if p.requires_grad]
        if helper_params:
            self.optimizer_g.add_param_group({'params': helper_params})
        self.helper_optimizers = OrderedDict()
        for name in self.own_optimizer_helpers:
            if name not in self.helpers:
                continue
            key = f'optim_{name}'
            optim_opt = dict(self.opt['train'].get(key) or {})
            if 'type' not in optim_opt or 'lr' not in optim_opt:
                raise ValueError(f'train.{key} must give the type and lr of the optimiser of network_{name} '
                                 f'(e.g. {{type: Adam, lr: 1.0e-4}}); have {optim_opt or "nothing"}')
            params = [p for p in self.helpers[name].parameters() if p.requires_grad]
            optimizer = self.get_optimizer(optim_opt.pop('type'), params, option=f'train.{key}', **optim_opt)
            self.helper_optimizers[name] = optimizer
            self.optimizers.append(optimizer)

    def get_optimizer(self, optim_type, params, lr, option='train.optim_g', **kwargs):
        """Any ``torch.optim`` optimiser by its class name (the papers' restoration runs use ``AdamW``); BasicSR
        1.4.2's own builds only ``Adam``. ``option``: the key named in errors."""
        optimizer_class = getattr(torch.optim, optim_type, None)
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
            raise ValueError(f'{option}.type = {optim_type} is not an optimiser of torch.optim '
                             '(e.g. Adam, AdamW, SGD)')
        return optimizer_class(params, lr, **kwargs)

    def teacher_views(self, name):
        """The inputs of teacher ``name``, run as one batched forward: by default one view, ``train.teacher_inputs``
        (the LQ input unless set to ``gt``). A method adds views (e.g. a transformed copy of the input) by overriding
        this; the views must share their size. Taps of that teacher then hold all views, concatenated in order."""
        return [self.gt if self.teacher_inputs[name] == 'gt' else self.lq]

    @contextmanager
    def frozen_context(self, grad_to_input=False):
        """The context of every frozen forward: no_grad (or grad to the input only, the weights being frozen) and
        the optional CUDA autocast of ``train.teacher_autocast``."""
        dtype = AUTOCAST_DTYPES.get(self.teacher_autocast)
        autocast = torch.autocast('cuda', dtype=dtype) if dtype and self.device.type == 'cuda' else nullcontext()
        with (torch.enable_grad() if grad_to_input else torch.no_grad()), autocast:
            yield

    def forward_teachers(self):
        """Run every teacher on its views in one batched forward each. Sets ``teacher_view_outputs`` {name: [one
        output per view]} and returns {name: output of its first view}, all float32. With ``train.teacher_cache``:
        no forward; {first teacher: the cached target} (a method whose target is not a teacher's output overrides)."""
        if self.teacher_cache:
            return OrderedDict([(next(iter(self.teachers)), self.cached_target)])
        self.teacher_view_outputs = OrderedDict()
        with self.frozen_context():
            for name, net in self.teachers.items():
                views = self.teacher_views(name)
                output = net(torch.cat(views) if len(views) > 1 else views[0]).float()
                self.teacher_view_outputs[name] = list(output.split([view.shape[0] for view in views]))
        if self.teacher_autocast:
            for name in self.teachers:
                if name in self.taps:
                    self.taps[name].to_float()
        return OrderedDict((name, outputs[0]) for name, outputs in self.teacher_view_outputs.items())

    def run_frozen(self, name, x, grad_to_input=False):
        """Run the frozen network (or teacher) ``name`` on ``x`` and return (output, [its tapped features of this
        call]). With ``grad_to_input`` the output carries gradient to ``x`` (an encoder fed the student's output);
        the weights never get any. The taps are released, so one network can serve several calls in a step."""
        net = self.frozen[name] if name in self.frozen else self.teachers[name]
        with self.frozen_context(grad_to_input):
            output = net(x)
        features = self.taps[name].take() if name in self.taps else []
        return (output.float() if torch.is_tensor(output) else output), features

    def floor_forwards(self):
        """[(frozen network name, input)]: the frozen forwards one step of the method needs at least, which
        ``benchmarks/kd_step.py`` times (under no_grad) for the step's floor. Default: each teacher on its views."""
        if self.teacher_cache:
            return []
        return [(name, torch.cat(self.teacher_views(name))) for name in self.teachers]

    # ----------------------------------------------------------------------------------------------- target cache
    def frozen_target(self, lq):
        """The method's frozen target for an LQ batch, as the cache stores it (``datasets_prep/
        cache_teacher_outputs.py``). Not defined here: a method whose frozen forwards need more than the LQ input
        (taps, views, its own output) cannot use a cache."""
        raise NotImplementedError

    def cache_manifest(self):
        """What a cache of ``frozen_target`` depends on: the method that defines the target, scale, the frozen
        networks' options and weights (by digest) and the LQ data."""
        train_set = self.opt['datasets']['train']
        return {
            'target': type(self).frozen_target.__qualname__,
            'scale': self.opt.get('scale', 1),
            'frozen': {name: {'network': source['network'], 'param_key': source['param_key'],
                              'digest': source['digest']} for name, source in self.frozen_sources.items()},
            'dataroot_lq': os.path.abspath(os.path.expanduser(train_set['dataroot_lq'])),
        }

    def check_teacher_cache(self):
        """``train.teacher_cache``: the folder the training set reads its targets from, built for these options."""
        folder = self.opt['train'].get('teacher_cache')
        if not folder:
            return None
        if type(self).frozen_target is KDBaseModel.frozen_target:
            raise ValueError(f'{self.opt["model_type"]} cannot take its targets from a cache (train.teacher_cache): '
                             'its frozen forwards need more than the LQ input')
        if self.opt['train'].get('label_consistency_opt'):
            raise ValueError('train.teacher_cache cannot serve train.label_consistency_opt: it needs a teacher forward '
                             'on a transformed input at every step')
        train_set = self.opt['datasets']['train']
        if train_set.get('type') != 'KDCachedTargetDataset' or train_set.get('dataroot_target') != folder:
            raise ValueError(f'train.teacher_cache = {folder} needs datasets.train.type: KDCachedTargetDataset with '
                             f'dataroot_target: {folder} (have {train_set.get("type")}, '
                             f'{train_set.get("dataroot_target")})')
        path = os.path.join(folder, 'manifest.json')
        if not os.path.isfile(path):
            raise FileNotFoundError(f'train.teacher_cache = {folder}: no manifest.json; build the cache with python -m '
                                    'datasets_prep.cache_teacher_outputs -opt <this option file>')
        with open(path) as f:
            built = json.load(f)
        expected = json.loads(json.dumps(self.cache_manifest()))  # tuples as lists, as in the file
        differing = [key for key in expected if built.get(key) != expected[key]]
        if differing:
            details = '; '.join(f'{key}: cache {built.get(key)} != options {expected[key]}' for key in differing)
            raise ValueError(f'train.teacher_cache = {folder} was built for other options ({details}). Build it again '
                             'for these options (python -m datasets_prep.cache_teacher_outputs) or use another folder.')
        return folder

    def check_progressive_patches(self):
        """``train.progressive_patches``, checked against the training set's patch and batch sizes."""
        rows = self.opt['train'].get('progressive_patches')
        if not rows:
            return None
        train_set = self.opt.get('datasets', {}).get('train', {})
        return ProgressivePatches(rows, train_set.get('gt_size'), train_set.get('batch_size_per_gpu'),
                                  self.opt.get('scale', 1))

    def feed_data(self, data):
        """SRModel's, plus the cached target of the batch when ``train.teacher_cache`` is set; the batch is kept for
        ``train.progressive_patches``, which crops it at the step."""
        super().feed_data(data)
        self.fed_batch = data
        if 'target' in data:
            self.cached_target = data['target'].to(self.device)

    def check_output_shapes(self):
        for name, out in self.teacher_outputs.items():
            if out.shape != self.output.shape:
                raise ValueError(f'network_{name} gives {tuple(out.shape)} but network_g gives '
                                 f'{tuple(self.output.shape)} for the same input: check their upscale/task options.')
        self._checked_output_shapes = True

    def pixel_target(self):
        """The target of ``pixel_opt`` and ``perceptual_opt``: GT (SLKD's is teacher B's output)."""
        return self.gt

    def compute_losses(self, current_iter):
        """Weighted loss terms of this step; the base gives the pixel and perceptual losses, where configured."""
        losses = OrderedDict()
        if self.cri_pix is not None:
            losses['l_pix'] = self.cri_pix(self.output, self.pixel_target())
        if self.cri_perceptual is not None:
            percep, style = self.cri_perceptual(self.output, self.pixel_target())
            for key, value in (('l_percep', percep), ('l_style', style)):
                if value is not None:
                    losses[key] = value
        return losses

    def optimize_parameters(self, current_iter):
        if self.progressive_patches is not None:  # fed again: a method's feed_data derives its inputs from the batch
            loaded = self.fed_batch
            self.feed_data(self.progressive_patches.crop(current_iter, loaded))
            self.fed_batch = loaded  # the loader's batch: another step on the same feed crops it anew
        self.optimizer_g.zero_grad()
        self.diagnostics = OrderedDict()
        self.forward_networks()
        if not self._checked_output_shapes:
            self.check_output_shapes()
        losses = self.compute_losses(current_iter)
        if not losses:
            raise ValueError(f'{self.opt["model_type"]}: no loss term is configured (train.pixel_opt and the '
                             'method\'s losses are all unset)')
        sum(losses.values()).backward()
        self.optimizer_g.step()
        self.log_dict = self.reduce_loss_dict(OrderedDict(**losses, **self.diagnostics))
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)
        self.after_step(current_iter)

    def forward_networks(self):
        """The forwards of a step: sets ``self.output`` (the student on the LQ input, with gradient) and
        ``self.teacher_outputs`` (``forward_teachers()``). MTKD's stage 1 feeds its trained network the teachers'
        outputs instead, so it runs the teachers first."""
        self.output = self.net_g(self.lq)
        self.teacher_outputs = self.forward_teachers()

    def after_step(self, current_iter):
        """Called after each optimiser step and EMA update (DCKD updates its history model here)."""

    # ----------------------------------------------------------------------------------------------- state
    def training_state(self):
        """Extra state of the method, saved in every ``.state`` file (tensors, numbers, dicts of them)."""
        return {}

    def load_training_state(self, state):
        """Restore what ``training_state`` returned, on resume."""

    def save_training_state(self, epoch, current_iter):
        """BasicSR's training state plus ``kd``: the method's ``training_state()`` and what each frozen network
        loaded, written atomically."""
        if current_iter == -1:
            return
        state = {
            'epoch': epoch,
            'iter': current_iter,
            'optimizers': [o.state_dict() for o in self.optimizers],
            'schedulers': [s.state_dict() for s in self.schedulers],
            'kd': {'method': self.training_state(), 'frozen_sources': self.frozen_sources}
        }
        save_atomically(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state):
        """BasicSR's resume (optimisers, schedulers), then the frozen networks are made the ones the run started
        with, and the method's extra state is restored."""
        super().resume_training(resume_state)
        kd_state = resume_state.get('kd')
        if kd_state is None:
            raise ValueError(f'{self.opt["path"].get("resume_state")} has no basicsr-kd state (it was not written by '
                             f'{self.opt["model_type"]}); start a new run instead of resuming this one')
        self.restore_frozen_sources(kd_state['frozen_sources'])
        self.load_training_state(kd_state['method'])

    def restore_frozen_sources(self, started):
        """Every frozen network loaded from a file must hold the weights the run started with. BasicSR's resume
        rewrites every ``path.param_key_*: params_ema`` to ``params``, which would give a teacher its raw weights
        instead of its EMA weights: reload with the recorded key, then compare the weights' digest."""
        nets = {**self.teachers, **self.frozen}
        for name, source in started.items():
            if name not in self.frozen_sources:
                raise ValueError(f'The run started with network_{name}, which the options no longer define')
            if self.frozen_sources[name]['param_key'] != source['param_key']:
                get_root_logger().info(f'Resume: network_{name} reloaded with [{source["param_key"]}], the key it '
                                       f'started with (not [{self.frozen_sources[name]["param_key"]}])')
                self.load_frozen_weights(self.get_bare_model(nets[name]), name, param_key=source['param_key'])
            if self.frozen_sources[name]['digest'] != source['digest']:
                raise ValueError(f'path.pretrain_network_{name} = {self.frozen_sources[name]["file"]} now holds other '
                                 f'weights than the ones this run started with (from {source["file"]}): a resumed '
                                 'run must be taught by the same networks. Restore that file or start a new run.')

    def save_network(self, net, net_label, current_iter, param_key='params'):
        """BasicSR's checkpoint layout (``{param_key: state_dict}``, no ``module.`` prefix, on the CPU), written
        atomically."""
        nets, keys = (net, param_key) if isinstance(net, list) else ([net], [param_key])
        checkpoint = self.checkpoint_extras(net_label)
        for net_, key in zip(nets, keys):
            state = self.get_bare_model(net_).state_dict()
            checkpoint.update(self.checkpoint_weights(net_label, key, OrderedDict(
                (k[len('module.'):] if k.startswith('module.') else k, v.cpu()) for k, v in state.items())))
        label = 'latest' if current_iter == -1 else current_iter
        save_atomically(checkpoint, os.path.join(self.opt['path']['models'], f'{net_label}_{label}.pth'))

    def checkpoint_weights(self, net_label, param_key, state):
        """The entries of one network's weights ``state`` (``param_key``: params or params_ema) in the checkpoint of
        ``net_label``. Default: ``{param_key: state}``; CSD stores its student slice there and the super-network
        beside it."""
        return {param_key: state}

    def checkpoint_extras(self, net_label):
        """Entries saved beside the weights in the checkpoint of ``net_label`` (e.g. ``net_g``): plain Python
        values and tensors, as ``torch.load(weights_only=True)`` reads them (BasicSR's loader reads only the weights'
        key). MTKD's stage 1 stores the teacher list with its aggregator, SKD the student's pixel range. Default:
        none."""
        return {}

    def save(self, epoch, current_iter):
        """Save the student (and its EMA) as SRModel does, then each trainable helper; never the frozen networks."""
        for name, net in self.helpers.items():
            self.save_network(net, f'net_{name}', current_iter)
        super().save(epoch, current_iter)

    @classmethod
    def write_random_frozen_files(cls, opt, folder, seed=0):
        """For the tools that run without pretrained files (the tests, ``benchmarks/kd_step.py``): random weights
        (seeded) for every frozen network of ``opt`` (``path.ignore_resume_networks``), saved in BasicSR's layout as
        ``<folder>/<name>_<network key>.pth`` and set as its ``path.pretrain_network_*``; ``opt`` changes in place.
        A method whose frozen files carry more than weights adds it (MTKD's aggregator: its teacher list)."""
        for key in opt['path'].get('ignore_resume_networks') or []:
            torch.manual_seed(seed)
            path = os.path.join(folder, f'{opt["name"]}_{key}.pth')
            torch.save({'params': build_network(opt[key]).state_dict()}, path)
            opt['path'][f'pretrain_{key}'] = path

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
