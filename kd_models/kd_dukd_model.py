"""DUKD (Zhang et al., "Data Upcycling Knowledge Distillation for Image Super-Resolution", 2023): Logits KD plus the
teacher's labels on upcycled inputs (zoom-in GT tiles, zoomed-out LR patches) with label consistency; a baseline of
MTKD's tables (mtkd.txt Tab. 2 and 4, RCAN and SwinIR students)."""
from basicsr.utils.registry import MODEL_REGISTRY

from .kd_logits_model import KDLogitsModel


@MODEL_REGISTRY.register()
class KDDUKDModel(KDLogitsModel):
    """DUKD: L = L_rec + λ_kd·L_kd + λ_dukd·L_dukd, one objective per step.

    - L_rec = ``train.pixel_opt`` (L1 to GT), L_kd = ``train.kd_opt`` (L1 to the teacher's output on LQ).
    - L_dukd = ``train.upcycling_opt`` (``loss_weight`` = λ_dukd), ``KDLogitsModel``'s data upcycling: L1 between
      F⁻¹(S(F(x_zi))) and T(x_zi) on ``zoom_in_tiles`` LR-size tiles x_zi of each GT patch (F: the label-consistency
      operations, each drawn with probability ``prob``), and, with ``zoom_out``, between S(x_zo) and T(x_zo) on the
      LR patch downscaled by 1/s, x_zo, whose output also takes ``pixel_opt`` to the LR patch.

    This class only requires ``upcycling_opt``; every term is ``KDLogitsModel``'s (overrides
    ``init_training_settings``). The authors' code optimises L_rec + L_kd and the upcycled terms in two optimiser
    steps per iteration; here they are one objective, as the paper writes it.

    Example::

        model_type: KDDUKDModel
        train:
          pixel_opt: {type: L1Loss, loss_weight: 1.0}
          kd_opt: {type: L1Loss, loss_weight: 1.0}
          upcycling_opt: {type: L1Loss, loss_weight: 1.0, zoom_in_tiles: 1, zoom_out: true, prob: 0.3}
    """

    def init_training_settings(self):
        if not self.opt['train'].get('upcycling_opt'):
            raise ValueError('KDDUKDModel needs train.upcycling_opt, the loss between student and teacher outputs on '
                             'the upcycled inputs (e.g. {type: L1Loss, loss_weight: 1.0, zoom_in_tiles: 1, zoom_out: '
                             'true, prob: 0.3})')
        super().init_training_settings()
