"""SLKD: a student taught by teacher A on the degraded image and teacher B on the clean image (slkd.txt, Eq. 6)."""
from collections import OrderedDict

import torch
from basicsr.utils.registry import MODEL_REGISTRY

from .kd_base_model import KDBaseModel
from .kd_token_maps import tokens_to_maps

# (loss option, Scale Conversion Module, teacher, what it sees) of the two feature-level strategies
STRATEGIES = (('naturalness_opt', 'scm_e', 't1', 'encoder'), ('edge_texture_opt', 'scm_d', 't2', 'decoder'))
SLKD_TRAIN_KEYS = ('kl_opt', 'naturalness_opt', 'edge_texture_opt')


@MODEL_REGISTRY.register()
class KDSLKDModel(KDBaseModel):
    """Simultaneous Learning KD (Zhang & Yan, "Knowledge Distillation for Image Restoration: Simultaneous Learning
    from Degraded and Clean Images", Sec. II, Eq. 6)::

        L = L_pixel + α₁·L_KL + α₂·L_NC + α₂'·L_ET

    - ``network_t1``, teacher A, is fed the degraded input (``train.teacher_inputs.t1: lq``); ``network_t2``,
      teacher B, the clean image (``t2: gt``; ``t2: lq`` is the "source: rainy" row of Tab. IV). B is by default
      the same pretrained network as A (the option file loads the same file twice).
    - L_pixel (Eq. 5): ``train.pixel_opt`` (L1Loss) to teacher B's output (``pixel_target``).
    - L_KL (Eq. 4): ``train.kl_opt`` (KDImageKLLoss, ``loss_weight`` α₁) between the student's and teacher A's
      outputs.
    - L_NC (Eq. 2, DRL): ``train.naturalness_opt`` (KDNaturalnessLoss, α₂) on the encoder levels of the student
      and teacher A, mapped into one space by the trainable ``network_scm_e`` (KDScaleConversion).
    - L_ET (Eq. 3, IRL): ``train.edge_texture_opt`` (KDEdgeTextureLoss, α₂) on the decoder levels of the student and
      teacher B, mapped by ``network_scm_d``. Logged beside it, not optimised: ``et_gates_saturated``, the share of
      the student's soft PIQE criteria within 1e-3 of 0 or 1, which pass hardly any gradient (``KDEdgeTextureLoss``).

    Each term is optional (Tab. IV's ablations): leave out its option (and, for L_NC / L_ET, its SCM and its taps).
    ``train.feature_taps``: ``network_t1`` lists the encoder levels, ``network_t2`` the decoder levels, and
    ``network_g`` the student's encoder levels (paired in order with ``network_t1``'s) followed by its decoder levels
    (paired with ``network_t2``'s), each list in execution order. Eq. 2-3 pair the k-th level of the student with the
    k-th level of the teacher: the two must have one resolution, the input downsampled by the same factor (the SCM
    maps channels, not sizes). Checked before the first step on a probe forward of all three networks (one square
    image whose side each network takes unpadded): a pair of other sizes (e.g. decoder taps listed deepest-last
    for the student but deepest-first for teacher B) is refused, naming the taps and their sizes; so is an SCM whose
    channels do not fit. Token outputs (B, H*W, C) (Uformer) become square NCHW maps
    (:func:`kd_models.kd_token_maps.tokens_to_map`). Overrides ``init_training_settings`` (checks),
    ``check_tapped_features``, ``pixel_target`` and ``compute_losses``.

    Example (Restormer, deraining; options/slkd_restormer_derain.yml)::

        model_type: KDSLKDModel
        network_scm_e: {type: KDScaleConversion, student_channels: [24, 48, 96], teacher_channels: [48, 96, 192]}
        network_scm_d: {type: KDScaleConversion, student_channels: [96, 48, 48], teacher_channels: [192, 96, 96]}
        train:
          teacher_inputs: {t1: lq, t2: gt}
          feature_taps:
            network_g: [encoder_level1, encoder_level2, encoder_level3, decoder_level3, decoder_level2, decoder_level1]
            network_t1: [encoder_level1, encoder_level2, encoder_level3]
            network_t2: [decoder_level3, decoder_level2, decoder_level1]
          pixel_opt: {type: L1Loss, loss_weight: 1.0}
          kl_opt: {type: KDImageKLLoss, loss_weight: 0.5}
          naturalness_opt: {type: KDNaturalnessLoss, loss_weight: 0.1}
          edge_texture_opt: {type: KDEdgeTextureLoss, loss_weight: 0.1}
    """

    helper_networks = ('scm_e', 'scm_d')
    option_keys = {'train': {'naturalness_opt': ('KDNaturalnessLoss', ), 'edge_texture_opt': ('KDEdgeTextureLoss', ),
                             'kl_opt': ('KDImageKLLoss', )}}

    def init_training_settings(self):
        if sorted(self.teacher_names()) != ['t1', 't2']:
            raise ValueError(f'KDSLKDModel needs two teachers, network_t1 (teacher A) and network_t2 (teacher B); '
                             f'got {["network_" + name for name in self.teacher_names()]}')
        self.check_strategies()
        self.check_tap_counts()
        super().init_training_settings()  # its probe forward checks the paired levels (check_tapped_features)
        train_opt = self.opt['train']
        self.cri_kl = self.build_train_loss('kl_opt')
        self.cri_levels = OrderedDict((loss_key, self.build_train_loss(loss_key))
                                      for loss_key, *_ in STRATEGIES if train_opt.get(loss_key))

    def check_strategies(self):
        """Each feature-level loss comes with its SCM and its teacher's taps, and neither comes without the loss (an
        SCM no loss uses would take no gradient, which DDP refuses)."""
        train_opt = self.opt['train']
        unknown = [key for key in train_opt if key.endswith('_opt') and key not in self.loss_kinds()]
        if unknown:
            raise ValueError(f'KDSLKDModel does not read train.{unknown}; its losses are ' +
                             ', '.join(f'train.{key}' for key in self.loss_kinds()))
        taps = train_opt.get('feature_taps') or {}
        for loss_key, scm, teacher, levels in STRATEGIES:
            has_loss, has_scm = bool(train_opt.get(loss_key)), f'network_{scm}' in self.opt
            has_taps = bool(taps.get(f'network_{teacher}'))
            if has_loss and not (has_scm and has_taps):
                raise ValueError(f'train.{loss_key} is set: it needs network_{scm} (KDScaleConversion) and '
                                 f'train.feature_taps.network_{teacher} (the {levels} levels)')
            if not has_loss and (has_scm or has_taps):
                raise ValueError(f'train.{loss_key} is not set: remove network_{scm} and '
                                 f'train.feature_taps.network_{teacher} too (the {levels} levels are unused)')
        if not any(train_opt.get(key) for key in ('pixel_opt', *SLKD_TRAIN_KEYS)):
            raise ValueError('KDSLKDModel: set at least one of train.pixel_opt, ' +
                             ', '.join(f'train.{key}' for key in SLKD_TRAIN_KEYS))

    def check_tap_counts(self):
        """The student taps its encoder levels then its decoder levels, as many as teacher A and B tap."""
        taps = self.opt['train'].get('feature_taps') or {}
        expected = sum(len(taps.get(f'network_{teacher}') or []) for _, _, teacher, _ in STRATEGIES)
        student = len(taps.get('network_g') or [])
        if student != expected:
            raise ValueError(f'train.feature_taps.network_g has {student} paths, but network_t1 and network_t2 tap '
                             f'{expected} levels together: list the student\'s encoder levels (paired with '
                             'network_t1\'s) then its decoder levels (paired with network_t2\'s)')

    def pixel_target(self):
        """Eq. 5: L_pixel is to teacher B's restoration TB_r."""
        return self.teacher_outputs['t2']

    @staticmethod
    def paired_levels(levels):
        """{teacher name: (the student's levels paired with that teacher's, the teacher's levels)} from {name: list
        of levels} (features or tap paths): the student lists the encoder levels (``t1``'s), then the decoder
        levels (``t2``'s)."""
        pairs, start = {}, 0
        for _, _, teacher, _ in STRATEGIES:
            if teacher in levels:
                count = len(levels[teacher])
                pairs[teacher] = (levels['g'][start:start + count], levels[teacher])
                start += count
        return pairs

    def check_tapped_features(self, features):
        """On the probe forward: each student level has the size of the teacher level it is paired with, and each
        SCM fits the levels' channels."""
        paths = self.paired_levels({name: taps.paths for name, taps in self.taps.items()})
        pairs = self.paired_levels({name: tokens_to_maps(maps) for name, maps in features.items()})
        for _, scm, teacher, _ in STRATEGIES:
            if teacher not in pairs:
                continue
            for path_g, path_t, level_g, level_t in zip(*paths[teacher], *pairs[teacher]):
                if level_g.shape[2:] != level_t.shape[2:]:
                    raise ValueError(
                        f'train.feature_taps: network_g.{path_g} gives {tuple(level_g.shape[2:])} maps but '
                        f'network_{teacher}.{path_t} {tuple(level_t.shape[2:])} for one input: pair the student\'s '
                        'level k with the teacher\'s level k, the input downsampled by the same factor (Eq. 2-3)')
            with torch.no_grad():
                self.unified(self.get_bare_model(self.helpers[scm]), scm, *pairs[teacher])

    def unified(self, net, scm, student, teacher):
        """``net`` (``network_<scm>`` or its bare module) on paired levels; a misfit names the option keys."""
        try:
            return net(student, teacher)
        except ValueError as error:
            raise ValueError(f'network_{scm} does not fit the tapped levels (train.feature_taps; its '
                             f'student_channels / teacher_channels must be their channels): {error}') from None

    def compute_losses(self, current_iter):
        losses = super().compute_losses(current_iter)  # l_pix: Eq. 5, to pixel_target()
        if self.cri_kl is not None:
            losses['l_kl'] = self.cri_kl(self.output, self.teacher_outputs['t1'])  # Eq. 4
        pairs = self.paired_levels({name: tokens_to_maps(taps.outputs()) for name, taps in self.taps.items()})
        for loss_key, scm, teacher, _ in STRATEGIES:
            if loss_key in self.cri_levels:
                unified_student, unified_teacher = self.unified(self.helpers[scm], scm, *pairs[teacher])
                name = 'l_nc' if loss_key == 'naturalness_opt' else 'l_et'
                losses[name] = self.cri_levels[loss_key](unified_student, unified_teacher)  # Eq. 2 / Eq. 3
        if 'edge_texture_opt' in self.cri_levels:  # et_gates_saturated: logged, not optimised
            self.diagnostics.update(self.cri_levels['edge_texture_opt'].saturation())
        return losses
