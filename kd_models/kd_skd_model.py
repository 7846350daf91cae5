"""SKD: Soft Knowledge Distillation with Multi-dimensional Cross-net Attention (skd.txt), as a model."""
import torch
from basicsr.utils.registry import MODEL_REGISTRY

from .kd_base_model import KDBaseModel
from .kd_eval_model import PIXEL_RANGE_KEY, check_pixel_range, to_pixel_range, to_unit_range
from .kd_token_maps import tokens_to_maps


@MODEL_REGISTRY.register()
class KDSKDModel(KDBaseModel):
    """SKD (skd.txt Eq. 6): L = L_REC + α₂·L_GK + α₃·L_CL.

    - L_REC (Eq. 5) = ‖G − S_r‖₁: ``train.pixel_opt`` (L1Loss, weight 1) to the GT.
    - L_GK (Eq. 1-3): ``train.feature_opt`` (``KDGaussianKernelLoss``, its ``loss_weight`` is α₂ = 0.2 and its
      ``alpha`` α₁ = 0.5) between the projected student and teacher features of the matched blocks:
      ``train.feature_taps.network_g`` and ``.network_t`` pair module paths in order (token outputs (B, HW, C) of
      Uformer become square NCHW maps, ``kd_token_maps.tokens_to_map``), and the trainable helper ``network_proj``
      (``KDFeatureProjector``, one 1x1 conv per side and tap; its teacher side frozen by default, against the
      collapse of both projections to 0) maps them into d channels: S_f, T_f.
    - L_CL (Eq. 4): ``train.contrastive_opt`` (``KDImageContrastiveLoss``, ``loss_weight`` α₃ = 0.2, −log of the
      printed ratio) on the features of the frozen ``network_vgg`` (``KDVGG19Features``): the student's output (the
      only encoder call with gradient, to its input), the teacher's output (positive) and the b degraded inputs
      of the batch (negatives), the last two in one no_grad call. Leave ``contrastive_opt`` (and ``network_vgg``)
      out for the ablations without L_CL (Tab. III a-d); ``feature_opt.channel_interaction`` /
      ``spatial_interaction`` switch the two MCA terms.
    - Logged beside the losses, not optimised: ``gk_mean`` and ``gk_saturated``, the mean of L_GK's kernel values
      (GK ≤ 1) and the share of them above 0.99, where GK's gradient has vanished (``KDGaussianKernelLoss``).

    ``train.pixel_range`` is the range the student works in:

    - ``'[0,1]'`` (default): everything in [0, 1], as the data loader gives it, the official teachers expect it and
      KDVGG19Features takes it; the student evaluates with plain SRModel / KDEvalModel.
    - ``'[-1,1]'`` (the paper, Sec. III-A): conversions happen exactly here: ``feed_data`` makes the student's
      input 2·LQ − 1 (the LQ in [0, 1] is kept for the teacher, ``teacher_views``, and as the negatives of L_CL);
      ``pixel_target`` is 2·GT − 1 (L_REC in [−1, 1]); the student's output goes to VGG as (S + 1)/2
      (``unit_range``), so VGG always sees [0, 1] and ImageNet statistics; ``test`` maps the output back to
      [0, 1] for validation. The teacher runs on [0, 1] and its output is used in [0, 1] (VGG positive). Such a
      student expects [−1, 1] inputs: plain SRModel would feed it [0, 1] and read its output as [0, 1]; evaluate it
      with KDEvalModel and ``val.pixel_range: '[-1,1]'`` (``options/test/test_skd_*.yml`` copy the training file's).

    The student's checkpoint records the range (entry ``pixel_range`` beside ``params``/``params_ema``, which BasicSR's
    loader ignores): KDEvalModel refuses to evaluate it in another. This model only trains (its validation included):
    under test.py it is refused, pointing to KDEvalModel.

    Overrides: ``init_training_settings`` (option checks and the two losses),
    ``check_tapped_features`` (the matched blocks' sizes and channels on the probe forward, before the first step),
    ``feed_data``, ``teacher_views``, ``pixel_target``, ``compute_losses`` (adds ``l_gk``, ``l_cl``),
    ``floor_forwards`` (teacher, VGG on the student's output, VGG on positive + negatives), ``test``,
    ``checkpoint_extras`` (the pixel range).

    Example::

        model_type: KDSKDModel
        network_proj: {type: KDFeatureProjector, student_channels: [32, 64], teacher_channels: [48, 96], dim: 64}
        network_vgg: {type: KDVGG19Features}
        train:
          pixel_range: '[0,1]'
          feature_taps: {network_g: [encoder_level1, encoder_level2], network_t: [encoder_level1, encoder_level2]}
          pixel_opt: {type: L1Loss, loss_weight: 1.0}
          feature_opt: {type: KDGaussianKernelLoss, sigma: 1.0, alpha: 0.5, loss_weight: 0.2}
          contrastive_opt: {type: KDImageContrastiveLoss, temperature: !!float 1e-6, loss_weight: 0.2}
    """

    helper_networks = ('proj', )
    single_teacher = True
    not_for_testing = ('it trains a student; evaluate the student with model_type: KDEvalModel '
                       '(options/test/test_skd_*.yml), whose val.pixel_range is the range it was trained in '
                       '(train.pixel_range)')
    option_keys = {'train': {'feature_opt': ('KDGaussianKernelLoss', ), 'contrastive_opt': ('KDImageContrastiveLoss', ),
                             'pixel_range': None}}

    def init_training_settings(self):
        train_opt = self.opt['train']
        unknown = [key for key in train_opt if key.endswith('_opt') and key not in self.loss_kinds()]
        if unknown:
            raise ValueError(f'KDSKDModel does not read train.{unknown[0]}; its losses are {list(self.loss_kinds())}')
        self.pixel_range = check_pixel_range(train_opt.get('pixel_range', '[0,1]'), 'train.pixel_range')
        if not train_opt.get('feature_opt'):
            raise ValueError('KDSKDModel needs train.feature_opt (KDGaussianKernelLoss, L_GK of Eq. 3)')
        if 'network_proj' not in self.opt:
            raise ValueError('KDSKDModel needs network_proj (KDFeatureProjector): it maps the tapped features into '
                             'one dimension d (S_f, T_f of Eq. 1)')
        with_cl = bool(train_opt.get('contrastive_opt'))
        if 'network_vgg' in self.opt and not with_cl:
            raise ValueError('network_vgg is set but train.contrastive_opt is not: VGG-19 serves only L_CL (Eq. 4); '
                             'set train.contrastive_opt or remove network_vgg (the ablations without L_CL)')
        taps = train_opt.get('feature_taps') or {}
        student_taps, teacher_taps = taps.get('network_g') or [], taps.get('network_t') or []
        if not student_taps or len(student_taps) != len(teacher_taps):
            raise ValueError(f'KDSKDModel needs train.feature_taps.network_g and .network_t, equally long (the matched '
                             f'blocks); got {len(student_taps)} and {len(teacher_taps)}')
        proj_opt = self.opt['network_proj']
        for side, paths in (('student_channels', student_taps), ('teacher_channels', teacher_taps)):
            if len(proj_opt.get(side) or []) != len(paths):
                raise ValueError(f'network_proj.{side} lists {len(proj_opt.get(side) or [])} taps but '
                                 f'train.feature_taps has {len(paths)}: one channel count per tapped block')
        self.frozen_networks = ('vgg', ) if with_cl else ()  # the base then requires and loads network_vgg
        super().init_training_settings()
        self.cri_feat = self.build_train_loss('feature_opt')
        self.cri_contrastive = self.build_train_loss('contrastive_opt')

    # ------------------------------------------------------------------------------------------- pixel range
    def feed_data(self, data):
        super().feed_data(data)
        self.lq_unit = self.lq  # the LQ in [0, 1]: the teacher's input and the negatives of L_CL
        self.lq = to_pixel_range(self.lq, self.pixel_range)

    def unit_range(self, image):
        """An image of the student's range in [0, 1]."""
        return to_unit_range(image, self.pixel_range)

    def teacher_views(self, name):
        return [self.gt if self.teacher_inputs[name] == 'gt' else self.lq_unit]

    def pixel_target(self):
        return to_pixel_range(self.gt, self.pixel_range)

    def test(self):
        super().test()
        self.output = self.unit_range(self.output)

    def checkpoint_extras(self, net_label):
        """The student's checkpoint records its pixel range, which KDEvalModel's ``val.pixel_range`` must match."""
        return {PIXEL_RANGE_KEY: self.pixel_range} if net_label == 'net_g' else {}

    # ------------------------------------------------------------------------------------------- losses
    def projected_features(self):
        """S_f, T_f of every matched block."""
        return self.helpers['proj'](tokens_to_maps(self.taps['g'].outputs()), tokens_to_maps(self.taps['t'].outputs()))

    def check_tapped_features(self, features):
        """On the probe forward: paired blocks must have the same resolution and the channels ``network_proj`` was
        built for."""
        student, teacher = tokens_to_maps(features['g']), tokens_to_maps(features['t'])
        proj_opt, taps = self.opt['network_proj'], self.opt['train']['feature_taps']
        for index, (s, t) in enumerate(zip(student, teacher)):
            where = f'train.feature_taps: network_g {taps["network_g"][index]} and network_t {taps["network_t"][index]}'
            if s.shape[2:] != t.shape[2:]:
                raise ValueError(f'{where} give maps of {tuple(s.shape[2:])} and {tuple(t.shape[2:])}: pair blocks of '
                                 'equal resolution')
            for side, feature in (('student_channels', s), ('teacher_channels', t)):
                if proj_opt[side][index] != feature.shape[1]:
                    raise ValueError(f'network_proj.{side}[{index}] = {proj_opt[side][index]} but {where} give '
                                     f'{feature.shape[1]} channels there')

    def contrastive_loss(self):
        """L_CL (Eq. 4): VGG on the student's output with gradient to it; positive and negatives in one call."""
        anchor, _ = self.run_frozen('vgg', self.unit_range(self.output), grad_to_input=True)
        references, _ = self.run_frozen('vgg', self.contrastive_references())
        batch = self.output.shape[0]
        return self.cri_contrastive(list(anchor.values()), [f[:batch] for f in references.values()],
                                    [f[batch:] for f in references.values()])

    def contrastive_references(self):
        """The positive (teacher output) and the b negatives (degraded inputs), batched, in [0, 1]."""
        return torch.cat([self.teacher_outputs['t'], self.lq_unit])

    def compute_losses(self, current_iter):
        losses = super().compute_losses(current_iter)  # l_pix: L_REC (Eq. 5)
        losses['l_gk'] = self.cri_feat(*self.projected_features())  # α₂·L_GK (Eq. 3)
        self.diagnostics.update(self.cri_feat.saturation())  # gk_mean, gk_saturated: logged, not optimised
        if self.cri_contrastive is not None:
            losses['l_cl'] = self.contrastive_loss()  # α₃·L_CL (Eq. 4)
        return losses

    def floor_forwards(self):
        """The teacher on the LQ input; with L_CL also VGG on the student's output (run with gradient to it in the
        step) and VGG on positive + negatives."""
        floors = super().floor_forwards()
        if self.cri_contrastive is not None:
            floors += [('vgg', self.unit_range(self.output.detach())), ('vgg', self.contrastive_references())]
        return floors
