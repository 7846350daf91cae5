"""FACD (Moon et al., IEEE Access 2023, facd.txt): feature-domain adaptive contrastive distillation, and FCD."""
from basicsr.utils.registry import MODEL_REGISTRY

from .kd_base_model import KDBaseModel

SWITCHES = ('adaptive_image', 'adaptive_feature')


@MODEL_REGISTRY.register()
class KDFACDModel(KDBaseModel):
    """FACD, Eq. 5: L = L_SR + λ·L_FACD, with λ = the ``loss_weight`` of ``train.feature_opt`` (4 in the paper).

    - α_i (Eq. 1) is computed each step without gradient from the student's, the teacher's and GT's per-sample mean
      absolute errors (``image_opt``'s ``adaptive_indicator``). Two switches, one per domain, in ``train.facd``:
      ``adaptive_image`` uses α in L_SR (Eq. 2), ``adaptive_feature`` in L_FACD (Eq. 4). Both on: FACD; only
      ``adaptive_image``: Tab. 11's L_SR + λ·L_FACD^off; both off (every α_i = 1): FCD (Tab. 9). The share of
      samples distilled, mean α, is logged as ``alpha_mean`` (not optimised).
    - ``train.image_opt``: ``KDAdaptiveImageLoss`` (Eq. 2), logged as ``l_sr``; it replaces the plain pixel loss
      (``pixel_opt`` stays optional and is added when set, e.g. for the ablations of Tab. 8).
    - ``train.feature_opt``: ``KDFeatureContrastiveLoss`` (Eq. 3-4), logged as ``l_facd``, between the teacher's
      tapped features and the student's, the latter through the trainable deep regressor ``network_reg``
      (``KDConvRegressor`` with ``normalize_input: true``: Eq. 3's normalisation, then DR's 1×1 convolutions).
      ``train.feature_taps`` pairs ``network_g`` and ``network_t`` paths in order, input side first.
    - The negatives are the other samples of the batch; under DDP, of each rank's own batch (not gathered across
      ranks), so K = 2·(batch_size_per_gpu − 1). A batch of one sample has none: refused before the first step.

    Checked before the first step, naming the option key: one teacher; ``facd`` holds only the two switches; the loss
    types; the taps, one per point weight, each list in execution order (input side first: w_j is the weight of
    the j-th point from the input); ``network_reg`` normalises its input and maps each tap's student channels to the
    teacher's (read from the probe forward of both networks, ``probe_taps``); the taps' spatial sizes agree;
    ``datasets.train.batch_size_per_gpu`` ≥ 2.

    Example (FACD, EDSR x4)::

        model_type: KDFACDModel
        network_reg: {type: KDConvRegressor, in_channels: [64, 64, 64], out_channels: [256, 256, 256],
                      num_layers: 5, normalize_input: true}
        train:
          facd: {adaptive_image: true, adaptive_feature: true}   # both false: FCD
          feature_taps: {network_g: [body.4, body.10, conv_after_body], network_t: [body.10, body.20, conv_after_body]}
          image_opt: {type: KDAdaptiveImageLoss, loss_weight: 1.0}
          feature_opt: {type: KDFeatureContrastiveLoss, point_weights: [0.5, 0.3, 0.2], distance: l1, loss_weight: 4}
    """

    helper_networks = ('reg', )
    single_teacher = True
    option_keys = {'train': {'facd': {'adaptive_image': None, 'adaptive_feature': None},
                             'image_opt': ('KDAdaptiveImageLoss', ), 'feature_opt': ('KDFeatureContrastiveLoss', )}}

    def init_training_settings(self):
        self.check_batch_size()
        train_opt = self.opt['train']
        for key in ('image_opt', 'feature_opt'):
            if not train_opt.get(key):
                raise ValueError(f'KDFACDModel needs train.{key} ({self.loss_kinds()[key][0]})')
        switches = train_opt.get('facd') or {}
        unknown = sorted(set(switches) - set(SWITCHES))
        if unknown:
            raise ValueError(f'train.facd: unknown option(s) {unknown}; it reads {list(SWITCHES)}')
        self.adaptive = {name: switches.get(name, True) for name in SWITCHES}
        for name, value in self.adaptive.items():
            if not isinstance(value, bool):
                raise ValueError(f'train.facd.{name} = {value!r}: use true or false')
        self.check_loss_kinds()  # the losses are needed by the base's probe (check_tapped_features reads w_j)
        self.cri_image = self.build_train_loss('image_opt')
        self.cri_feature = self.build_train_loss('feature_opt')
        super().init_training_settings()  # its probe forward checks the taps (check_tapped_features)

    def check_batch_size(self):
        """Eq. 4's negatives are the other samples of the batch (of each rank's batch under DDP)."""
        train_set = (self.opt.get('datasets') or {}).get('train')
        if train_set is not None and train_set.get('batch_size_per_gpu', 2) < 2:
            raise ValueError(f'datasets.train.batch_size_per_gpu = {train_set["batch_size_per_gpu"]}: FACD\'s '
                             'negatives are the other samples of each GPU\'s batch (Eq. 4), so a batch of one has '
                             'none. Use at least 2 samples per GPU (the paper: 16 on one GPU).')

    def check_tapped_features(self, features):
        """One tap per point weight, the regressor's channels and the paired maps' sizes, on the probe forward. The
        probe also refused tap lists out of execution order: w_j belongs to the j-th point from the input side."""
        taps_g, taps_t = self.taps.get('g'), self.taps.get('t')
        points = len(self.cri_feature.point_weights)
        if taps_g is None or taps_t is None or not len(taps_g.paths) == len(taps_t.paths) == points:
            raise ValueError(f'train.feature_taps: KDFACDModel needs network_g and network_t lists of {points} '
                             'module paths each, one per weight of train.feature_opt.point_weights')
        reg_opt = self.opt.get('network_reg')
        if reg_opt is None:
            raise ValueError('KDFACDModel needs network_reg, the deep regressor DR (KDConvRegressor, num_layers: 5, '
                             'normalize_input: true)')
        if not reg_opt.get('normalize_input', False):
            raise ValueError('network_reg.normalize_input must be true: Eq. 3 normalises each sample\'s student '
                             'feature map before DR (the teacher\'s are normalised in the loss)')
        self.check_paired_taps(features, regressor=True)

    def compute_losses(self, current_iter):
        losses = super().compute_losses(current_iter)
        teacher = self.teacher_outputs['t']
        alpha = self.cri_image.adaptive_indicator(self.output, teacher, self.gt)
        losses['l_sr'] = self.cri_image(self.output, teacher, self.gt,
                                        alpha if self.adaptive['adaptive_image'] else None)
        regressed = self.helpers['reg'](self.taps['g'].outputs())
        losses['l_facd'] = self.cri_feature(regressed, self.taps['t'].outputs(),
                                            alpha if self.adaptive['adaptive_feature'] else None)
        self.diagnostics['alpha_mean'] = alpha.mean()
        return losses
