"""MiPKD (Li et al., "Knowledge Distillation with Multi-granularity Mixture of Priors for Image Super-Resolution",
ICLR 2025, arXiv:2404.02573): the feature prior mixer and the block prior mixer on top of Logits KD."""
from contextlib import contextmanager

import torch
from basicsr.utils.registry import MODEL_REGISTRY

from .kd_base_model import PIXEL_LOSSES, KDBaseModel
from .kd_logits_model import KDLogitsModel
from .kd_token_maps import map_to_tokens, tokens_to_maps

MIXING_KEYS = ('mask_ratio', 'student_prob')


@contextmanager
def replaced_outputs(net, replacements):
    """Forward hooks that make the modules of ``net`` named in ``replacements`` ({module path: NCHW map}) return the
    given map instead of their own output (as tokens where the module gives tokens). The hook returns a copy: the
    network may change the output of a module in place afterwards (EDSR and RCAN add the head to
    ``conv_after_body``'s output), which must not touch a tensor a loss also reads."""
    modules = dict(net.named_modules())
    handles = []
    for path, value in replacements.items():

        def replace(module, inputs, output, value=value):
            return map_to_tokens(value, output).clone(memory_format=torch.contiguous_format)

        handles.append(modules[path].register_forward_hook(replace))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@MODEL_REGISTRY.register()
class KDMiPKDModel(KDLogitsModel):
    """MiPKD: L = w_pix·L1(S, GT) + w_kd·L1(S, T) + λ_feat·L_FPM + λ_block·L_BPM (λ_feat = 1, λ_block = 0.1:
    MiPKD Tab. 10 as published summaries of the paper report it; its text was not at hand, README "MiPKD").

    Distillation positions k = 1..K are the paired module paths of ``train.feature_taps`` (``network_g`` and
    ``network_t``, equally long, input side first); token outputs (SwinIR's RSTBs) become NCHW maps of the LQ grid.

    - **Feature prior mixer** (``train.feature_opt``: ``KDFeaturePriorMixerLoss``, logged ``l_fpm``): the trainable
      ``network_mixer`` (``KDPriorMixer``) encodes F_S,k and F_T,k into one latent space, mixes the latents with a
      3D random mask I_k (each latent element of each sample taken from the student with probability
      ``train.prior_mixing.mask_ratio``, drawn per step) and decodes the mix into the teacher's space (compared with
      F_T,k) and the student's; the loss also holds the teacher auto-encoder term D_T(E_T(F_T,k)) ≈ F_T,k.
    - **Block prior mixer** (``train.block_opt``: a pixel loss, logged ``l_bpm``): each step draws one position k
      (uniformly) and R_k ~ Bernoulli(``train.prior_mixing.student_prob``): the mixed feature goes on into the
      student's next block (R_k = 1, its student-space decode) or the teacher's (R_k = 0, the teacher-space decode)
      and through the rest of that network: the network runs once more on LQ with the output of its module at
      position k replaced (forward hooks, ``replaced_outputs``; the teacher's weights stay frozen, gradient passes
      through it to the mixer and the student's layers before k). The term is the loss between that output and the
      teacher's output on LQ. ``bpm_to_student`` (logged, not optimised) averages R_k. One position per step (our
      reading): replacing several positions in one forward would cut every replaced position but the last off the
      output, and one forward per position would cost K extra forwards a step.

    Without ``block_opt`` only the feature mixer trains (MiPKD Tab. 5, FPM alone); without ``feature_opt`` the
    mixer learns through L_BPM alone (Tab. 5, BPM alone). Under DDP ``find_unused_parameters: true`` is required with
    ``block_opt``: the decoders of the positions and the network R did not pick take no gradient that step.

    Overrides ``init_training_settings`` (the checks and losses), ``check_tapped_features`` (positions, channels and
    sizes on the probe forward), ``forward_networks`` (the mixer and the mixed forwards after the student's and the
    teacher's) and ``compute_losses`` (``l_fpm``, ``l_bpm``). Checked before the first step, naming the key: the
    loss kinds, ``network_mixer`` and its channels, ``train.prior_mixing``, DDP's ``find_unused_parameters``.

    Example (RCAN x4)::

        model_type: KDMiPKDModel
        network_mixer: {type: KDPriorMixer, student_channels: [64, 64, 64], teacher_channels: [64, 64, 64],
                        latent_channels: 64}
        train:
          feature_taps: {network_g: [body.2, body.6, body.9], network_t: [body.2, body.6, body.9]}
          prior_mixing: {mask_ratio: 0.5, student_prob: 0.5}
          pixel_opt: {type: L1Loss, loss_weight: 1.0}
          kd_opt: {type: L1Loss, loss_weight: 1.0}
          feature_opt: {type: KDFeaturePriorMixerLoss, ae_weight: 1.0, loss_weight: 1.0}
          block_opt: {type: L1Loss, loss_weight: 0.1}
    """

    helper_networks = ('mixer', )
    frozen_target = KDBaseModel.frozen_target  # the teacher's taps are needed at every step: no cache
    option_keys = {'train': {'feature_opt': ('KDFeaturePriorMixerLoss', ), 'block_opt': PIXEL_LOSSES,
                             'prior_mixing': {key: None for key in MIXING_KEYS}}}

    def __init__(self, opt):
        self.check_ddp_settings(opt)  # before SRModel wraps the student in DDP
        super().__init__(opt)

    @staticmethod
    def check_ddp_settings(opt):
        """Under DDP the block mixer needs ``find_unused_parameters: true``: in a step, the decoders of the positions
        and the network it did not pick take no gradient, which DDP otherwise stops on at the next step."""
        if opt['is_train'] and opt.get('dist') and (opt.get('train') or {}).get('block_opt') \
                and not opt.get('find_unused_parameters'):
            raise ValueError('train.block_opt under DDP needs find_unused_parameters: true at the top of the options: '
                             'the decoders of the positions and the network it did not pick take no gradient in '
                             'that step')

    def init_training_settings(self):
        train_opt = self.opt['train']
        if not train_opt.get('feature_opt') and not train_opt.get('block_opt'):
            raise ValueError('KDMiPKDModel needs train.feature_opt (KDFeaturePriorMixerLoss, L_FPM), train.block_opt '
                             '(L_BPM) or both')
        if 'network_mixer' not in self.opt:
            raise ValueError('KDMiPKDModel needs network_mixer (KDPriorMixer), the encoders and decoders of the '
                             'feature prior mixer')
        taps = train_opt.get('feature_taps') or {}
        if not taps.get('network_g') or len(taps['network_g']) != len(taps.get('network_t') or []):
            raise ValueError('KDMiPKDModel needs train.feature_taps.network_g and .network_t, equally long: the '
                             f'distillation positions (have {taps})')
        for key, net in (('student_channels', 'network_g'), ('teacher_channels', 'network_t')):
            channels, paths = self.opt['network_mixer'].get(key) or [], taps.get(net) or []
            if len(channels) != len(paths):
                raise ValueError(f'network_mixer.{key} = {channels} lists {len(channels)} positions but '
                                 f'train.feature_taps.{net} = {paths} {len(paths)}')
        self.mask_ratio, self.student_prob = self.check_prior_mixing()
        super().init_training_settings()  # its probe forward checks the positions (check_tapped_features)
        self.cri_fpm = self.build_train_loss('feature_opt')
        self.cri_bpm = self.build_train_loss('block_opt')

    def check_prior_mixing(self):
        """``train.prior_mixing``: the mask ratio of I and the probability of R_k = 1, each in [0, 1]."""
        mixing = self.opt['train'].get('prior_mixing') or {}
        unknown = sorted(set(mixing) - set(MIXING_KEYS))
        if unknown:
            raise ValueError(f'train.prior_mixing: unknown option(s) {unknown}; it reads {list(MIXING_KEYS)}')
        values = []
        for key in MIXING_KEYS:
            value = mixing.get(key, 0.5)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f'train.prior_mixing.{key} = {value!r}: must be a probability in [0, 1]')
            values.append(float(value))
        return values

    def check_tapped_features(self, features):
        """On the probe forward: ``network_mixer`` has each position's channels, paired maps share their size."""
        taps = self.opt['train']['feature_taps']
        maps = {name: tokens_to_maps(features[name]) for name in ('g', 't')}  # the probe image is square
        mixer_opt = self.opt['network_mixer']
        for key, net in (('student_channels', 'g'), ('teacher_channels', 't')):
            channels = [feature.shape[1] for feature in maps[net]]
            if list(mixer_opt.get(key) or []) != channels:
                raise ValueError(f'network_mixer.{key} = {mixer_opt.get(key)} but the positions '
                                 f'train.feature_taps.network_{net} = {taps[f"network_{net}"]} have {channels} '
                                 'channels')
        self.check_paired_taps(maps)

    def forward_networks(self):
        """The student and the teacher on LQ (their taps: F_S, F_T), the mixer on all positions in one call, then
        the block mixer's forward: the student or the teacher once more, a mixed feature in place at one position."""
        super().forward_networks()
        hw = tuple(self.lq.shape[-2:])
        views = len(self.lq)  # the teacher's taps hold all its views (label consistency adds one): keep the first
        student = tokens_to_maps(self.taps['g'].outputs(), hw)
        self.teacher_features = tokens_to_maps([feature[:views] for feature in self.taps['t'].outputs()], hw)
        latent = self.get_bare_model(self.helpers['mixer']).latent_channels
        masks = [(torch.rand(views, latent, *f.shape[2:], device=self.device) < self.mask_ratio).to(f.dtype)
                 for f in self.teacher_features]
        mixed = self.helpers['mixer'](student, self.teacher_features, masks)
        self.mixed_t, self.mixed_s, self.reconstructed = mixed
        self.block_output = None
        if self.cri_bpm is None:
            return
        self.block_position, self.block_to_student = self.draw_block_route(len(masks))
        self.diagnostics['bpm_to_student'] = torch.tensor(float(self.block_to_student), device=self.device)
        k = self.block_position
        if self.block_to_student:
            with replaced_outputs(self.get_bare_model(self.net_g), {self.taps['g'].paths[k]: self.mixed_s[k]}):
                self.block_output = self.net_g(self.lq)
            self.taps['g'].take()  # release the student taps of this forward (the layers before k: no loss uses them)
        else:
            teacher = self.teachers['t']
            with replaced_outputs(teacher, {self.taps['t'].paths[k]: self.mixed_t[k]}), \
                    self.frozen_context(grad_to_input=True):
                # in the student's dtype (float32 after autocast): the term is the student's, like its other terms
                self.block_output = teacher(self.lq).to(self.output.dtype)
            self.taps['t'].take()  # release the teacher taps of this forward (they hold the mixed path's features)

    def draw_block_route(self, positions):
        """The block mixer's draw of a step: a position k, uniformly, and R_k (True: on in the student)."""
        return int(torch.randint(positions, ())), bool(torch.rand(()) < self.student_prob)

    def compute_losses(self, current_iter):
        losses = super().compute_losses(current_iter)
        if self.cri_fpm is not None:
            losses['l_fpm'] = self.cri_fpm(self.mixed_t, self.teacher_features, self.reconstructed)
        if self.cri_bpm is not None:
            losses['l_bpm'] = self.cri_bpm(self.block_output, self.teacher_outputs['t'])
        return losses
