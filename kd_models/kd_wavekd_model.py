"""WaveKD (Zhang et al., CVPR 2022): the student distilled on the high-frequency wavelet bands of the teacher's output,
the baseline SKD re-runs on restoration (skd.txt Tab. I, rows Res-Wave, Ufor-Wave, DRS-Wave)."""
from basicsr.utils.registry import MODEL_REGISTRY

from .kd_logits_model import KDLogitsModel


@MODEL_REGISTRY.register()
class KDWaveKDModel(KDLogitsModel):
    """WaveKD for restoration: L = w_pix·L1(S, GT) + α·L_WKD(S, T).

    L_WKD is ``train.wavelet_opt`` (a ``KDWaveKDLoss``: the L1 distance of the Haar detail bands LH, HL, HH of K
    levels, the low-frequency band left out; ``loss_weight`` = α) between the student's output and the teacher's;
    ``train.pixel_opt`` is the student's loss to GT (the task loss WaveKD adds its term to). WaveKD distils the
    teacher's output only through its high-frequency bands, so ``train.kd_opt`` (L1 to the whole teacher output) is
    optional here and unset in the option files; ``label_consistency_opt`` and ``train.teacher_cache`` work as for
    Logits KD (the target is the teacher's output on the LQ input, ``KDLogitsModel.frozen_target``).
    Overrides ``init_training_settings`` (adds ``wavelet_opt``, required) and ``compute_losses`` (adds ``l_wave``);
    the rest is KDLogitsModel's.

    Example::

        model_type: KDWaveKDModel
        train:
          pixel_opt: {type: L1Loss, loss_weight: 1.0}
          wavelet_opt: {type: KDWaveKDLoss, levels: 4, distance: l1, loss_weight: 0.4}
    """

    requires_kd_opt = False
    option_keys = {'train': {'wavelet_opt': ('KDWaveKDLoss', )}}

    def init_training_settings(self):
        if not self.opt['train'].get('wavelet_opt'):
            raise ValueError('KDWaveKDModel needs train.wavelet_opt, the wavelet loss between student and teacher '
                             'outputs (e.g. {type: KDWaveKDLoss, levels: 4, loss_weight: 0.4})')
        super().init_training_settings()
        self.cri_wave = self.build_train_loss('wavelet_opt')  # a value the loss refuses is reported with the key

    def compute_losses(self, current_iter):
        losses = super().compute_losses(current_iter)
        losses['l_wave'] = self.cri_wave(self.output, self.teacher_outputs['t'])
        return losses
