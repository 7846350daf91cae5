"""Feature distillation baselines (FitNet, AT, FAKD, LFD/LSFD): a loss between tapped student and teacher features."""
from basicsr.utils.registry import LOSS_REGISTRY, MODEL_REGISTRY

from .kd_base_model import KDBaseModel
from .kd_logits_model import KDLogitsModel


@MODEL_REGISTRY.register()
class KDFeatureModel(KDLogitsModel):
    """L = w_pix·L1(S, GT) + w_kd·L1(S, T) + feature_opt(reg(F_S), F_T), summed over the feature taps.

    ``train.feature_taps`` pairs ``network_g`` and ``network_t`` module paths in order; the student's features go
    through the trainable helper ``network_reg`` first when the options define one (FitNet's regressor).
    ``train.feature_opt`` takes any loss between tapped features (a ``KDTapLoss``: KDHintLoss, KDAttentionTransferLoss,
    KDSpatialAffinityLoss, KDLocalSelectiveFeatureLoss, ...).
    ``train.kd_opt`` is optional here. Overrides ``init_training_settings`` (adds ``feature_opt``, checks the taps)
    and ``compute_losses`` (adds ``l_feat``); ``check_tapped_features`` checks the taps, the regressor's channels
    and the paired sizes on the probe forward, before the first step, naming the option keys.

    Example (FAKD on EDSR)::

        model_type: KDFeatureModel
        train:
          feature_taps: {network_g: [body.4, body.10, conv_after_body], network_t: [body.10, body.20, conv_after_body]}
          pixel_opt: {type: L1Loss, loss_weight: 0.5}
          kd_opt: {type: L1Loss, loss_weight: 0.5}
          feature_opt: {type: KDSpatialAffinityLoss, loss_weight: 10}
    """

    requires_kd_opt = False
    frozen_target = KDBaseModel.frozen_target  # the teacher's taps are needed at every step: no cache
    option_keys = {'train': {'feature_opt': ('KDTapLoss', )}}
    helper_networks = ('reg', )

    def init_training_settings(self):
        if not self.opt['train'].get('feature_opt'):
            raise ValueError('KDFeatureModel needs train.feature_opt, the loss between tapped features')
        super().init_training_settings()  # its probe forward checks the taps (check_tapped_features)
        self.cri_feat = self.build_train_loss('feature_opt')

    def check_tapped_features(self, features):
        """Before the first step, on the probe forward: the two tap lists pair up, ``network_reg`` (when set) maps
        the student's tap channels to the teacher's, a loss that compares features element by element
        (``same_channels``) gets equal channels, and paired maps share their size."""
        if 'g' not in self.taps or 't' not in self.taps or len(self.taps['g'].paths) != len(self.taps['t'].paths):
            raise ValueError('KDFeatureModel needs train.feature_taps.network_g and .network_t, equally long')
        loss_class = LOSS_REGISTRY.get(self.opt['train']['feature_opt']['type'])
        self.check_paired_taps(features, regressor='reg' in self.helpers, same_channels=loss_class.same_channels)

    def compute_losses(self, current_iter):
        losses = super().compute_losses(current_iter)
        student = self.taps['g'].outputs()
        if 'reg' in self.helpers:
            student = self.helpers['reg'](student)
        views = len(self.lq)  # the teacher's taps hold all its views (label consistency adds one): keep the first
        losses['l_feat'] = self.cri_feat(student, [feature[:views] for feature in self.taps['t'].outputs()])
        return losses
