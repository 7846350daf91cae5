"""Logits KD: the output-distillation baseline every paper of basicsr-kd compares against."""
from basicsr.losses import build_loss
from basicsr.utils.registry import MODEL_REGISTRY

from .kd_base_model import KDBaseModel


@MODEL_REGISTRY.register()
class KDLogitsModel(KDBaseModel):
    """Logits KD for restoration: L = w_pix·L1(S, GT) + w_kd·L1(S, T) (METHODS.md, "Logits KD").

    The two weights are the ``loss_weight`` of ``train.pixel_opt`` and ``train.kd_opt`` (both 1 by default).
    Overrides ``init_training_settings`` (adds ``kd_opt``) and ``compute_losses`` (adds ``l_kd``); the rest is
    KDBaseModel's.

    Example::

        model_type: KDLogitsModel
        network_g: {type: EDSR, num_feat: 64, num_block: 16, upscale: 4, res_scale: 1}
        network_t: {type: EDSR, num_feat: 256, num_block: 32, upscale: 4, res_scale: 0.1}
        path:
          pretrain_network_t: experiments/pretrained_models/EDSR_Lx4_f256b32_DIV2K_official-76ee1c8f.pth
          ignore_resume_networks: [network_t]
        train:
          pixel_opt: {type: L1Loss, loss_weight: 1.0}
          kd_opt: {type: L1Loss, loss_weight: 1.0}
    """

    requires_kd_opt = True
    option_keys = {'train': {'kd_opt': 'loss'}}

    def init_training_settings(self):
        super().init_training_settings()
        if list(self.teachers) != ['t']:
            raise ValueError(f'{type(self).__name__} distils one teacher, network_t; got {list(self.teachers)}')
        kd_opt = self.opt['train'].get('kd_opt')
        if self.requires_kd_opt and not kd_opt:
            raise ValueError(f'{type(self).__name__} needs train.kd_opt, the loss between student and teacher outputs')
        self.cri_kd = build_loss(kd_opt).to(self.device) if kd_opt else None

    def frozen_target(self, lq):
        """The teacher's output: what ``train.teacher_cache`` stores."""
        return self.run_frozen('t', lq)[0]

    def compute_losses(self, current_iter):
        losses = super().compute_losses(current_iter)
        if self.cri_kd is not None:
            losses['l_kd'] = self.cri_kd(self.output, self.teacher_outputs['t'])
        return losses
