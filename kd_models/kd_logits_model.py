"""Logits KD: the output-distillation baseline every paper of basicsr-kd compares against."""
from basicsr.utils.registry import MODEL_REGISTRY

from .kd_base_model import PIXEL_LOSSES, KDBaseModel
from .kd_label_consistency import apply_label_consistency_ops, draw_label_consistency_ops, undo_label_consistency_ops


@MODEL_REGISTRY.register()
class KDLogitsModel(KDBaseModel):
    """Logits KD for restoration: L = w_pix·L1(S, GT) + w_kd·L1(S, T), the Logits KD rows of the
    papers' tables.

    The two weights are the ``loss_weight`` of ``train.pixel_opt`` and ``train.kd_opt`` (both 1 by default); both
    take any pixel-style loss (L1Loss, MSELoss, CharbonnierLoss), and so does ``label_consistency_opt``.
    Overrides ``init_training_settings`` (adds ``kd_opt``) and ``compute_losses`` (adds ``l_kd``); the rest is
    KDBaseModel's.

    Label consistency (DUKD's term, used by DCKD*; every subclass with one teacher has it): with
    ``train.label_consistency_opt`` set, the teacher also sees a copy of its input transformed per sample (colour
    inversion, vertical and horizontal flip, transpose, each with probability ``prob``, 0.5 by default), in the
    same batched forward as its clean input (``teacher_views``); its output for that copy, transformed back in
    reverse order, is the target of the loss ``l_lc`` = the configured loss (L1, weight 1 in DUKD) to the
    student's output. ``prob`` is read from the dict; the rest builds the loss::

        label_consistency_opt: {type: L1Loss, loss_weight: 1.0, prob: 0.5}

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
    single_teacher = True
    option_keys = {'train': {'kd_opt': PIXEL_LOSSES, 'label_consistency_opt': None}}  # the latter: a loss dict + prob

    @classmethod
    def loss_kinds(cls):
        """The declared kinds, and those of ``label_consistency_opt`` (its dict is a loss plus ``prob``)."""
        return {**super().loss_kinds(), 'label_consistency_opt': PIXEL_LOSSES}

    def init_training_settings(self):
        super().init_training_settings()
        kd_opt = self.opt['train'].get('kd_opt')
        if self.requires_kd_opt and not kd_opt:
            raise ValueError(f'{type(self).__name__} needs train.kd_opt, the loss between student and teacher outputs')
        self.cri_kd = self.build_train_loss('kd_opt')
        self.cri_lc, self.lc_prob, self.lc_ops = None, 0.5, None
        lc_opt = dict(self.opt['train'].get('label_consistency_opt') or {})
        if lc_opt:
            prob = lc_opt.pop('prob', 0.5)
            if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
                raise ValueError(f'train.label_consistency_opt.prob = {prob!r}: must be a probability in [0, 1]')
            try:
                self.cri_lc = self.build_train_loss('label_consistency_opt', lc_opt)
                self.lc_prob = float(prob)
            except TypeError as error:  # an unknown key: the loss class refuses it
                raise ValueError(f'train.label_consistency_opt: {error} (prob is its only own key)') from None

    def teacher_views(self, name):
        """The teacher's input and, with label consistency, a randomly transformed copy of it (one forward)."""
        views = super().teacher_views(name)
        if self.cri_lc is None:
            return views
        self.lc_ops = draw_label_consistency_ops(views[0], self.lc_prob)
        return [views[0], apply_label_consistency_ops(views[0], self.lc_ops)]

    def frozen_target(self, lq):
        """The teacher's output: what ``train.teacher_cache`` stores."""
        return self.run_frozen('t', lq)[0]

    def compute_losses(self, current_iter):
        losses = super().compute_losses(current_iter)
        if self.cri_kd is not None:
            losses['l_kd'] = self.cri_kd(self.output, self.teacher_outputs['t'])
        if self.cri_lc is not None:
            target = undo_label_consistency_ops(self.teacher_view_outputs['t'][1], self.lc_ops)
            losses['l_lc'] = self.cri_lc(self.output, target)
        return losses
