"""Token maps (B, H*W, C) of windowed transformers (Uformer's layer outputs) as NCHW feature maps."""
import math


def tokens_to_map(feature, reference_hw=None):
    """A tapped feature as an NCHW map: NCHW features pass unchanged; tokens (B, L, C) become (B, C, H, W).

    The level's grid is the reference grid divided by the one integer factor f with ``(h / f) * (w / f) = L``,
    so the same call serves every level of a U-Net. Uformer's layers work on its padded square input
    (``expand2square``), whatever the input's aspect: leave ``reference_hw`` unset for them (a square grid).

    Args:
        feature (Tensor): (B, C, H, W), or (B, L, C) tokens in row-major order (as Uformer flattens them).
        reference_hw (tuple[int] | None): (h, w) of the grid the network tokenises, at any level (e.g. its padded
            input). None: the tokens form a square grid. Default: None.

    Returns:
        Tensor: (B, C, H, W), a view of ``feature`` made contiguous.
    """
    if feature.dim() == 4:
        return feature
    if feature.dim() != 3:
        raise ValueError(f'tokens_to_map: expects NCHW features or (B, L, C) tokens, got {tuple(feature.shape)}')
    batch, length, channels = feature.shape
    if reference_hw is None:
        side = math.isqrt(length)
        if side * side != length:
            raise ValueError(f'tokens_to_map: {length} tokens do not form a square grid; give reference_hw')
        height, width = side, side
    else:
        h, w = reference_hw
        factor = math.sqrt(h * w / length)
        f = round(factor)
        if f < 1 or abs(factor - f) > 1e-6 or h % f or w % f:
            raise ValueError(f'tokens_to_map: {length} tokens are no integer downscaling of the {h} x {w} grid')
        height, width = h // f, w // f
    return feature.transpose(1, 2).reshape(batch, channels, height, width).contiguous()


def tokens_to_maps(features, reference_hw=None):
    """:func:`tokens_to_map` of every feature of a list."""
    return [tokens_to_map(feature, reference_hw) for feature in features]


def map_to_tokens(feature, like):
    """The inverse of :func:`tokens_to_map` for a module output: an NCHW map back to (B, H*W, C) row-major tokens
    when ``like`` (the module's own output) is a token tensor; an NCHW ``like`` takes the map unchanged."""
    if like.dim() == 4:
        return feature
    return feature.flatten(2).transpose(1, 2)
