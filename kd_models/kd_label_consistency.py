"""DUKD's label-consistency transform, the extra teacher term of DCKD* (every released DCKD
config enables it).

Four invertible operations, each drawn per sample with probability p = 0.5, transform the teacher's input; undone
on the teacher's output in reverse order, they give the target of ``L1(S(LQ), undone T)``. Not registered: models
import it with ``from .kd_label_consistency import ...``.

Usage in a model::

    ops = draw_label_consistency_ops(lq, prob)                        # (B, 4) bool
    target = undo_label_consistency_ops(net_t(apply_label_consistency_ops(lq, ops)), ops)

All three functions are batched (``torch.where`` over per-sample masks, no loop over samples) and work on any
device; the undo works at any spatial size, so it applies to SR outputs larger than the input.

Transpose of a non-square batch cannot be stacked with untransposed samples: ``draw_label_consistency_ops`` never
draws it when H != W (the other three operations keep p), and the apply/undo functions refuse with a ValueError
a transpose asked for on a non-square batch. Training patches are square in every DCKD configuration.
"""
import torch

# Column k of an ops mask switches operation k; applied in this order, undone in the reverse order.
LABEL_CONSISTENCY_OPS = ('invert', 'flip_h', 'flip_w', 'transpose')
_FUNCTIONS = {
    'invert': lambda x: 1 - x,  # colour inversion of images in [0, 1]
    'flip_h': lambda x: x.flip(-2),  # reverse the rows (height axis)
    'flip_w': lambda x: x.flip(-1),  # reverse the columns (width axis)
    'transpose': lambda x: x.transpose(-2, -1),  # swap height and width
}


def _check_batch(images):
    if images.dim() != 4:
        raise ValueError(f'label consistency expects a (B, C, H, W) batch, got shape {tuple(images.shape)}')


def draw_label_consistency_ops(images, prob=0.5):
    """Draw the operations of a batch from torch's global RNG (on the batch's device).

    Args:
        images (Tensor): The (B, C, H, W) batch the operations will transform (its size, device and shape decide).
        prob (float): Probability of each operation for each sample. Default: 0.5 (DUKD, released DCKD code).

    Returns:
        Tensor: (B, 4) bool on the batch's device; column k is operation ``LABEL_CONSISTENCY_OPS[k]``. The transpose
        column is all false when H != W.
    """
    _check_batch(images)
    if not 0 <= prob <= 1:
        raise ValueError(f'label consistency: prob = {prob!r} must be a probability in [0, 1]')
    ops = torch.rand((images.shape[0], len(LABEL_CONSISTENCY_OPS)), device=images.device) < prob
    if images.shape[2] != images.shape[3]:
        ops[:, LABEL_CONSISTENCY_OPS.index('transpose')] = False
    return ops


def _transform(images, ops, order):
    _check_batch(images)
    if ops.dtype != torch.bool or tuple(ops.shape) != (images.shape[0], len(LABEL_CONSISTENCY_OPS)):
        raise ValueError(f'label consistency: ops must be a bool tensor of shape ({images.shape[0]}, '
                         f'{len(LABEL_CONSISTENCY_OPS)}), got {ops.dtype} {tuple(ops.shape)}')
    ops = ops.to(images.device)
    for index in order:
        name = LABEL_CONSISTENCY_OPS[index]
        if name == 'transpose' and images.shape[2] != images.shape[3]:
            if ops[:, index].any():
                raise ValueError(f'label consistency: cannot transpose some samples of a non-square batch '
                                 f'{tuple(images.shape)}; draw the ops with draw_label_consistency_ops, which never '
                                 f'selects transpose when H != W')
            continue
        images = torch.where(ops[:, index].view(-1, 1, 1, 1), _FUNCTIONS[name](images), images)
    return images


def apply_label_consistency_ops(images, ops):
    """Apply the drawn operations per sample in the order invert, flip_h, flip_w, transpose.

    Args:
        images (Tensor): (B, C, H, W), values in [0, 1] (the inversion is 1 − x).
        ops (Tensor): (B, 4) bool from ``draw_label_consistency_ops``.

    Returns:
        Tensor: The transformed batch, same shape (H and W swapped only if square).
    """
    return _transform(images, ops, range(len(LABEL_CONSISTENCY_OPS)))


def undo_label_consistency_ops(images, ops):
    """Undo ``apply_label_consistency_ops`` (each operation is its own inverse: apply them in reverse order).

    Args:
        images (Tensor): (B, C, H', W') at any size, e.g. the teacher's SR output of the transformed batch.
        ops (Tensor): The (B, 4) bool ops that transformed the teacher's input.

    Returns:
        Tensor: The batch in the original orientation and colours.
    """
    return _transform(images, ops, reversed(range(len(LABEL_CONSISTENCY_OPS))))
