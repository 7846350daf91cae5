"""Differentiable natural-scene-statistics features of SLKD (slkd.txt, Sec. II-B and II-C), per channel of NCHW maps.

* :func:`mscn`: mean-subtracted contrast-normalised coefficients, Eq. 1, ``(I − μ) / (σ + C)``.
* :func:`brisque_features`: BRISQUE's 18 features per scale (Mittal et al., TIP 2012, Sec. III): the generalised
  Gaussian (GGD) shape and variance of the MSCN map, and the asymmetric GGD (AGGD) shape, mean, left and right
  variance of its products with the four neighbours (0, 1), (1, 0), (1, 1), (1, −1).
* :func:`piqe_features`: PIQE's block features (Venkatanath et al., NCC 2015): variance of 16 x 16 MSCN blocks,
  spatial activity, noticeable distortion (edge-segment criterion) and noise (centre-surround criterion), with
  sigmoids in place of PIQE's thresholds so that every feature has a gradient.

Every channel of every sample is treated as one grey image, so the same code serves images and feature maps.
Inputs below float32 are computed in float32. Nothing here is a table look-up or a rounding: gradients reach the
input everywhere, and stay finite on flat (constant) maps, whose MSCN map is zero (see ``eps``).

Choices where the papers leave room (or where their code and a differentiable loss part ways):

* Borders: the local mean and variance use replicate padding, as MATLAB's ``piqe`` does (MATLAB's BRISQUE and piq
  zero-pad, which makes the MSCN map of a constant image non-zero along a 3-pixel border).
* Each channel is centred by its global mean before the local moments: MSCN is invariant to it, and it spares the
  float32 cancellation in ``E[I²] − μ²`` on feature maps with a large mean.
* ``C`` is an argument: BRISQUE's and PIQE's ``C = 1`` is for pixels in [0, 255]; ``c = 1/255`` is the same
  normalisation for data in [0, 1] (and the default here).
* Neighbour products only pair pixels that are both inside the map; MATLAB's BRISQUE and piq use ``circshift`` /
  ``roll``, which also pairs opposite borders. On small feature maps those wrapped pairs would be a sizeable share.
* The GGD/AGGD shape solves BRISQUE's moment ratio ``ρ(α) = Γ(2/α)² / (Γ(1/α) Γ(3/α))`` by Newton's method (see
  :func:`solve_shape`) instead of BRISQUE's nearest entry of a table with step 0.001, within the table's range
  [0.2, 10].
* The second BRISQUE scale is the map downsampled by two with bicubic antialiased interpolation (torch's
  ``interpolate``), which matches MATLAB's ``imresize(·, 0.5)`` of BRISQUE away from the border.
* PIQE pads maps whose sides are not multiples of the block size by replicating the last row/column (MATLAB's
  ``padarray(..., 'replicate', 'post')``). Its centre-surround criterion takes the two middle columns as the centre
  and the other ``block_size − 2`` columns as the surround, as the PIQE paper describes (MATLAB's ``centerSurDev``
  deletes column 10 instead of column 9 from the surround, an index slip after the first deletion).
"""
import math

import torch
import torch.nn.functional as F

BRISQUE_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))
GAUSSIAN_RATIO = 2 / math.pi  # ρ(2): (E|x|)² / E[x²] of a Gaussian, the shape given to maps without contrast


def _as_float(x, name):
    if x.dim() != 4:
        raise ValueError(f'{name} must be NCHW, got shape {tuple(x.shape)}')
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _safe_sqrt(x, eps):
    """sqrt(max(x, 0) + eps): finite gradient at 0, off by at most sqrt(eps)."""
    return torch.sqrt(x.clamp(min=0) + eps)


def gaussian_window(kernel_size, sigma, dtype=None, device=None):
    """The normalised 2-D Gaussian window (MATLAB's ``fspecial('gaussian', kernel_size, sigma)``)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be a positive odd number, got {kernel_size}')
    coords = torch.arange(kernel_size, dtype=dtype, device=device) - (kernel_size - 1) / 2
    window = torch.exp(-(coords[:, None]**2 + coords[None, :]**2) / (2 * sigma**2))
    return window / window.sum()


def mscn(x, c=1 / 255, kernel_size=7, sigma=7 / 6, eps=1e-10):
    """MSCN coefficients (slkd.txt Eq. 1; BRISQUE Eq. 1-3) of every channel of ``x``.

    Args:
        x (Tensor): NCHW images or feature maps.
        c (float): The constant C. BRISQUE's C = 1 for [0, 255] pixels is ``c = 1/255`` for [0, 1] data.
            Default: 1/255.
        kernel_size (int): Side of the Gaussian window. Default: 7.
        sigma (float): Standard deviation of the window. Default: 7/6.
        eps (float): Added under the square root of the local variance, so that its gradient stays finite on flat
            windows. Default: 1e-10.

    Returns:
        Tensor: the MSCN map, shape of ``x``.
    """
    x = _as_float(x, 'x')
    channels = x.shape[1]
    window = gaussian_window(kernel_size, sigma, x.dtype, x.device).expand(channels, 1, kernel_size, kernel_size)
    x = x - x.mean(dim=(2, 3), keepdim=True)

    def local_mean(y):
        return F.conv2d(F.pad(y, [kernel_size // 2] * 4, mode='replicate'), window, groups=channels)

    mu = local_mean(x)
    local_std = _safe_sqrt(local_mean(x * x) - mu * mu, eps)
    return (x - mu) / (local_std + c)


def _log_shape_ratio(alpha):
    """log ρ(α) = 2 log Γ(2/α) − log Γ(1/α) − log Γ(3/α)."""
    return 2 * torch.lgamma(2 / alpha) - torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha)


def _log_shape_ratio_slope(alpha):
    """d log ρ(e^u) / du at u = log α: (ψ(1/α) + 3 ψ(3/α) − 4 ψ(2/α)) / α, positive and decreasing in u."""
    return (torch.digamma(1 / alpha) + 3 * torch.digamma(3 / alpha) - 4 * torch.digamma(2 / alpha)) / alpha


def solve_shape(ratio, shape_range=(0.2, 10.0), newton_steps=12):
    """The (A)GGD shape α with ρ(α) = ``ratio``, ρ(α) = Γ(2/α)² / (Γ(1/α) Γ(3/α)), α clamped to ``shape_range``.

    Newton's method on g(u) = log ρ(e^u) − log(ratio) in u = log α, started at the lower end of the range: g is
    increasing and concave in u, so the iterates rise monotonically to the root (12 steps reach float64 precision
    over [0.2, 10]). The iterations run without autograd; one last Newton step is taken with ``ratio`` in the graph,
    so that the gradient is the implicit-function one, dα/d ratio = α / (ratio · g'(log α)). Ratios outside
    [ρ(0.2), ρ(10)] give the end of the range, with zero gradient.

    Args:
        ratio (Tensor): Positive moment ratios.
        shape_range (tuple[float]): Smallest and largest shape (BRISQUE's table spans 0.2 to 10). Default: (0.2, 10).
        newton_steps (int): Newton iterations before the final differentiable step. Default: 12.

    Returns:
        Tensor: α, shape of ``ratio``.
    """
    low, high = math.log(shape_range[0]), math.log(shape_range[1])
    bounds = [_log_shape_ratio(torch.tensor(math.exp(u), dtype=torch.float64)).item() for u in (low, high)]
    target = ratio.log().clamp(*bounds)
    with torch.no_grad():
        u = torch.full_like(target, low)
        for _ in range(newton_steps):
            alpha = u.exp()
            u = (u - (_log_shape_ratio(alpha) - target) / _log_shape_ratio_slope(alpha)).clamp(low, high)
        alpha = u.exp()
        residual, slope = _log_shape_ratio(alpha), _log_shape_ratio_slope(alpha)
    return (u - (residual - target) / slope).exp()


def _moment_ratio(x, eps):
    """(E|x|)² / E[x²] over the last dim, pulled towards the Gaussian's 2/π where E[x²] is not far above ``eps``."""
    return (x.abs().mean(-1)**2 + eps * GAUSSIAN_RATIO) / (x.pow(2).mean(-1) + eps)


def ggd_fit(x, eps=1e-10):
    """Zero-mean GGD fit of the values on the last dim (BRISQUE's ``estimateggdparam``): (ratio, variance σ²).

    σ² = E[x²]; the shape is ``solve_shape(ratio)``, ratio = (E|x|)² / E[x²]. A map of zeros gets the ratio of a
    Gaussian (shape 2) and σ² = 0.
    """
    return _moment_ratio(x, eps), x.pow(2).mean(-1)


def aggd_fit(x, eps=1e-10):
    """AGGD fit of the values on the last dim (BRISQUE's ``estimateaggdparam``): (ratio, σ_l², σ_r²).

    σ_l² and σ_r² are the mean squares of the negative and of the positive values; with γ = σ_l / σ_r the shape is
    ``solve_shape(ratio)``, ratio = (E|x|)² / E[x²] · (γ³ + 1)(γ + 1) / (γ² + 1)². ``eps`` is added to σ_l² and
    σ_r² inside γ: a map of zeros gets γ = 1 and the ratio of a Gaussian (shape 2).
    """
    negative, positive = (x < 0).to(x.dtype), (x > 0).to(x.dtype)
    square = x.pow(2)
    left = (square * negative).sum(-1) / negative.sum(-1).clamp(min=1)
    right = (square * positive).sum(-1) / positive.sum(-1).clamp(min=1)
    gamma = torch.sqrt((left + eps) / (right + eps))
    return _moment_ratio(x, eps) * (gamma**3 + 1) * (gamma + 1) / (gamma**2 + 1)**2, left, right


def aggd_mean(alpha, left, right, eps=1e-10):
    """BRISQUE's AGGD mean η = (σ_r − σ_l) Γ(2/α) / √(Γ(1/α) Γ(3/α)), σ = √(σ² + eps)."""
    scale = torch.exp(torch.lgamma(2 / alpha) - (torch.lgamma(1 / alpha) + torch.lgamma(3 / alpha)) / 2)
    return (torch.sqrt(right + eps) - torch.sqrt(left + eps)) * scale


def neighbour_products(x, shift):
    """x(i, j) · x(i + di, j + dj) for every pair of positions inside the map, flattened to (N, C, pairs)."""
    di, dj = shift
    height, width = x.shape[-2:]
    left, right = max(0, -dj), width - max(0, dj)
    return (x[..., :height - di, left:right] * x[..., di:, left + dj:right + dj]).flatten(2)


def brisque_features(x,
                     c=1 / 255,
                     kernel_size=7,
                     sigma=7 / 6,
                     num_scales=2,
                     eps=1e-10,
                     shape_range=(0.2, 10.0),
                     newton_steps=12):
    """BRISQUE's natural-scene statistics of every channel of ``x``, differentiable.

    Per scale, in BRISQUE's order: GGD (α, σ²) of the MSCN map, then for each neighbour shift (0, 1), (1, 0),
    (1, 1), (1, −1) the AGGD (α, η, σ_l², σ_r²) of the MSCN products: 18 features. Scale s + 1 is scale s
    downsampled by two (bicubic, antialiased).

    Args:
        x (Tensor): NCHW images or feature maps; each side at least 2 at the coarsest scale.
        c (float): MSCN constant (see :func:`mscn`). Default: 1/255.
        kernel_size (int): MSCN window side. Default: 7.
        sigma (float): MSCN window standard deviation. Default: 7/6.
        num_scales (int): Number of scales; BRISQUE uses 2. Default: 2.
        eps (float): Regulariser of square roots and moment ratios on flat maps. Default: 1e-10.
        shape_range (tuple[float]): Range of the shape parameters. Default: (0.2, 10).
        newton_steps (int): Newton iterations of the shape solver. Default: 12.

    Returns:
        Tensor: shape (N, C, 18 · num_scales).
    """
    x = _as_float(x, 'x')
    if num_scales < 1:
        raise ValueError(f'num_scales must be at least 1, got {num_scales}')
    coarsest = [side // 2**(num_scales - 1) for side in x.shape[2:]]
    if min(coarsest) < 2:
        raise ValueError(f'x of spatial size {tuple(x.shape[2:])} is {coarsest} at scale {num_scales}; '
                         'BRISQUE features need at least 2 x 2 (lower num_scales)')
    ratios, moments = [], []  # per fit: its shape ratio; (σ², ) for a GGD, (σ_l², σ_r²) for an AGGD
    for scale in range(num_scales):
        if scale:
            x = F.interpolate(x, size=(x.shape[2] // 2, x.shape[3] // 2), mode='bicubic', antialias=True)
        coefficients = mscn(x, c, kernel_size, sigma, eps)
        ratio, variance = ggd_fit(coefficients.flatten(2), eps)
        ratios.append(ratio)
        moments.append((variance, ))
        for shift in BRISQUE_SHIFTS:
            ratio, *sides = aggd_fit(neighbour_products(coefficients, shift), eps)
            ratios.append(ratio)
            moments.append(sides)
    shapes = solve_shape(torch.stack(ratios, dim=-1), shape_range, newton_steps).unbind(-1)  # one solve for all
    features = []
    for shape, fit in zip(shapes, moments):
        if len(fit) == 1:  # GGD: (α, σ²)
            features += [shape, fit[0]]
        else:  # AGGD: (α, η, σ_l², σ_r²)
            features += [shape, aggd_mean(shape, *fit, eps), *fit]
    return torch.stack(features, dim=-1)


def piqe_features(x,
                  c=1 / 255,
                  kernel_size=7,
                  sigma=7 / 6,
                  block_size=16,
                  segment_size=6,
                  activity_threshold=0.1,
                  edge_threshold=0.1,
                  tau_activity=0.01,
                  tau_edge=0.01,
                  tau_noise=0.05,
                  eps=1e-10,
                  return_gates=False):
    """PIQE's block features of every channel of ``x``, with sigmoids instead of thresholds (no rounding).

    The map is padded to multiples of ``block_size`` (last row/column replicated), turned into MSCN coefficients
    and cut into non-overlapping blocks. Per block, with v its MSCN variance (unbiased, as MATLAB's ``var``):

    * variance: v;
    * activity (PIQE: v > T_A): a = sigmoid((v − T_A) / τ_A);
    * noticeable distortion (PIQE: some segment of ``segment_size`` consecutive pixels on one of the four block
      edges has standard deviation s < T_E): d = 1 − Π_segments (1 − sigmoid((T_E − s) / τ_E)), a soft "any";
      the feature is a · d, since PIQE only examines active blocks;
    * noise (PIQE: σ > 2β with σ = √v, β = |σ − r| / max(σ, r), r the standard deviation of the two centre columns
      over that of the other columns): n = sigmoid((σ − 2β) / τ_N); the feature is a · n.

    As every τ → 0 the soft criteria become PIQE's hard ones. Square roots of variances are taken as
    √(v + eps); a centre-surround ratio with a flat surround is then finite instead of MATLAB's NaN → 0.

    Args:
        x (Tensor): NCHW images or feature maps.
        c (float): MSCN constant (see :func:`mscn`). Default: 1/255.
        kernel_size (int): MSCN window side. Default: 7.
        sigma (float): MSCN window standard deviation. Default: 7/6.
        block_size (int): Side of the blocks, even. Default: 16.
        segment_size (int): Pixels per edge segment. Default: 6.
        activity_threshold (float): T_A on the block variance. Default: 0.1.
        edge_threshold (float): T_E on the segment standard deviation. Default: 0.1.
        tau_activity (float): Temperature τ_A of the activity sigmoid. Default: 0.01.
        tau_edge (float): Temperature τ_E of the edge-segment sigmoids. Default: 0.01.
        tau_noise (float): Temperature τ_N of the noise sigmoid. Default: 0.05.
        eps (float): Added under square roots (see :func:`mscn`). Default: 1e-10.
        return_gates (bool): Also return the soft criteria a, d and n themselves, before the products with a.
            Default: False.

    Returns:
        Tensor: shape (N, C, 4, H_blocks, W_blocks): variance, activity, distortion, noise. With ``return_gates``,
        (that, the gates a, d, n as (N, C, 3, H_blocks, W_blocks)).
    """
    x = _as_float(x, 'x')
    if block_size < 4 or block_size % 2:
        raise ValueError(f'block_size must be an even number of at least 4, got {block_size}')
    if not 2 <= segment_size <= block_size:
        raise ValueError(f'segment_size must lie in [2, block_size = {block_size}], got {segment_size}')
    if min(tau_activity, tau_edge, tau_noise) <= 0:
        raise ValueError(f'temperatures must be positive, got tau_activity={tau_activity}, tau_edge={tau_edge}, '
                         f'tau_noise={tau_noise}')
    pad_h, pad_w = (-x.shape[2]) % block_size, (-x.shape[3]) % block_size
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode='replicate')
    blocks = mscn(x, c, kernel_size, sigma, eps).unfold(2, block_size, block_size).unfold(3, block_size, block_size)
    variance = blocks.flatten(-2).var(-1)
    activity = torch.sigmoid((variance - activity_threshold) / tau_activity)

    edges = torch.stack([blocks[..., 0, :], blocks[..., :, -1], blocks[..., -1, :], blocks[..., :, 0]], dim=-2)
    segment_std = _safe_sqrt(edges.unfold(-1, segment_size, 1).var(-1), eps)
    # 1 − Π (1 − sigmoid(z)) = 1 − exp(−Σ softplus(z)), without underflow in the product
    distortion = -torch.expm1(-F.softplus((edge_threshold - segment_std) / tau_edge).sum(dim=(-1, -2)))

    middle = block_size // 2
    centre = blocks[..., middle - 1:middle + 1].flatten(-2)
    surround = torch.cat([blocks[..., :middle - 1], blocks[..., middle + 1:]], dim=-1).flatten(-2)
    centre_surround = _safe_sqrt(centre.var(-1), eps) / _safe_sqrt(surround.var(-1), eps)
    block_std = _safe_sqrt(variance, eps)
    beta = (block_std - centre_surround).abs() / torch.maximum(block_std, centre_surround)
    noise = torch.sigmoid((block_std - 2 * beta) / tau_noise)
    features = torch.stack([variance, activity, activity * distortion, activity * noise], dim=2)
    return (features, torch.stack([activity, distortion, noise], dim=2)) if return_gates else features
