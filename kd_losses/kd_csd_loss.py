"""CSD's contrastive loss: VGG features of the student's output pulled to the teacher's, pushed from negatives."""
import torch
from basicsr.utils.registry import LOSS_REGISTRY

from .kd_contrastive_ratio import check_distance, shared_negatives_contrastive_ratio


@LOSS_REGISTRY.register()
class KDCSDContrastiveLoss(torch.nn.Module):
    """The contrastive loss L_CL of CSD (Wang et al., "Towards Compact Single Image Super-Resolution via Contrastive
    Self-distillation", IJCAI 2021), as the authors' released code computes it (``loss/contrast_loss.py``,
    ``ContrastLoss.L1_forward``): the student's output Y_S is the anchor, the teacher's output Y_T (the super-network's
    full width) the positive and K images Y_k^- the negatives (CSD: the bicubic-upsampled LR inputs of the batch),
    compared on the features φ_i of n layers of a frozen VGG-19::

        L_CL = Σ_{i=1..n} λ_i · d(φ_i(Y_S), φ_i(Y_T)) / (Σ_{k=1..K} d(φ_i(Y_S), φ_i(Y_k^-)) + eps)

    d is the L1 distance: the mean absolute difference over the whole batch (samples, channels, positions), each
    negative being compared with every sample of the batch (the authors' ``ContrastLoss.L1_forward``: the K negatives
    are shared by the batch, not one set per sample). One ratio per layer, weighted by λ_i, summed over the layers and
    multiplied by ``loss_weight``. The ratios come from ``shared_negatives_contrastive_ratio`` (one ``torch.cdist`` for
    all sample-negative pairs of a layer). Gradient flows wherever the inputs carry it; the caller passes the positive
    and the negatives without (CSD detaches them).

    Args:
        layer_weights (list[float]): λ_i, one per feature layer, shallow to deep. Default: [1/32, 1/16, 1/8, 1/4, 1]
            (the authors' ``--vgg_weight`` for relu1_1 .. relu5_1).
        distance (str): ``l1`` (CSD's d) or ``l2`` (the root mean square difference; ``feature_distance``).
            Default: ``l1``.
        eps (float): Added to each denominator (the authors' 1e-7). Default: 1e-7.
        loss_weight (float): The weight of L_CL in the total loss (the authors' ``--contra_lambda``; their README's
            training command: 200). Default: 1.0.

    Example::

        contrastive_opt:
          type: KDCSDContrastiveLoss
          layer_weights: [0.03125, 0.0625, 0.125, 0.25, 1.0]   # λ_i for relu1_1 .. relu5_1
          distance: l1
          loss_weight: 200                                    # λ_CL
    """

    def __init__(self, layer_weights=(1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0), distance='l1', eps=1e-7, loss_weight=1.0):
        super().__init__()
        check_distance(distance)
        if not layer_weights:
            raise ValueError('layer_weights must list one weight per feature layer')
        self.layer_weights = [float(weight) for weight in layer_weights]
        self.distance = distance
        self.eps = eps
        self.loss_weight = loss_weight

    def forward(self, anchors, positives, negatives):
        """
        Args:
            anchors (list[Tensor]): φ_i(Y_S), one (B, C_i, H_i, W_i) tensor per layer, shallow to deep.
            positives (list[Tensor]): φ_i(Y_T), the shapes of ``anchors``.
            negatives (list[Tensor]): φ_i(Y_k^-), one (K, C_i, H_i, W_i) tensor per layer.

        Returns:
            Tensor: The weighted scalar loss.
        """
        if not len(anchors) == len(positives) == len(negatives) == len(self.layer_weights):
            raise ValueError(f'KDCSDContrastiveLoss: {len(self.layer_weights)} layer_weights but {len(anchors)} '
                             f'anchor, {len(positives)} positive and {len(negatives)} negative feature layers')
        return self.loss_weight * sum(
            weight * shared_negatives_contrastive_ratio(anchor, positive, negative, self.distance, self.eps)
            for weight, anchor, positive, negative in zip(self.layer_weights, anchors, positives, negatives))
