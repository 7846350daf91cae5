"""Degradation module D_1..D_N of DCKD's dynamic negative sample generator (dckd.txt, Eq. 4, Tab. 6, Fig. 8a).

Not registered: a helper that distillation models import with ``from .kd_degradations import KDDegradations``.
"""
import math

import torch
from torch.nn import functional as F

DEGRADATION_TYPES = ('noise', 'blur', 'resize', 'mix')
INTERPOLATION_MODES = ('area', 'bilinear', 'bicubic', 'nearest', 'nearest-exact')

# Every key of the option dict with its default; the comment says where the value comes from.
DEFAULTS = {
    'num_negatives': 5,  # N, paper Fig. 8a
    'include_clean_negative': False,  # True: the released code's negatives, clean LQ + N-1 degraded copies
    'kind': 'noise',  # paper Tab. 6 (best) and the released default
    'noise_sigma': [1, 30],  # Gaussian noise sigma ~ U[1, 30] / 255 (released code, as Real-ESRGAN)
    'gray_noise_prob': 0.5,  # probability of the same noise on every channel (released code)
    'blur_kernel_sizes': [3, 5, 7, 9, 11],  # released code: kernel size per axis from {3, 5, 7, 9, 11}
    'blur_sigma': [0.1, 2.0],  # released code: Gaussian sigma per axis ~ U[0.1, 2.0]
    'resize_up_prob': 0.25,  # released code: up with p 0.25, down with p 0.75
    'resize_down_scale': [0.5, 1.0],  # released code: down to U[0.5, 1]
    'resize_up_scale': [1.0, 1.5],  # released code: up to U[1, 1.5]
    'resize_modes': ['area', 'bilinear', 'bicubic'],  # released code: drawn for each resize
}


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class KDDegradations:
    """Random degradations that turn a LQ batch into the N inputs of DCKD's history model (paper Eq. 4).

    The paper (following Real-ESRGAN) compares four kinds of degradation module in Tab. 6: Gaussian noise (best,
    also the released default), Gaussian blur, resize (down- or up-sampling, then back) and their mix. Every copy
    and every sample of a copy gets its own random draw, except the resize factor and interpolation modes, which
    are drawn per copy (a batch must keep one size). All random numbers come from torch's global RNG (per-sample
    draws from the input's device generator, per-copy scalars from the CPU one), which BasicSR seeds per rank.

    Kinds (``kind``):

    - ``noise``: ``x + σ·n``, σ ~ U[noise_sigma]/255 per copy and sample, n ~ N(0, 1) per pixel, the same n on all
      channels (grey noise) with probability ``gray_noise_prob``; clipped to [0, 1].
    - ``blur``: anisotropic, axis-aligned (separable) Gaussian blur. For each copy, sample and axis independently a
      kernel size from ``blur_kernel_sizes`` and σ ~ U[blur_sigma]; taps exp(−t²/2σ²) for |t| ≤ size // 2,
      normalised to sum 1; reflect padding. Axis-aligned as in the released code (kornia ``gaussian_blur2d``); a
      rotated kernel would add a third random parameter the paper never mentions.
    - ``resize``: per copy, up with probability ``resize_up_prob`` by a factor ~ U[resize_up_scale], else down by a
      factor ~ U[resize_down_scale], to ``floor(H·f) x floor(W·f)``, then back to H x W, each of the two
      interpolations with a mode drawn from ``resize_modes``; clamped to [0, 1]. As in the released code, an up
      factor below (H + 1) / H leaves the size, and so the image, unchanged.
    - ``mix``: blur, resize away, noise at the resized size, resize back (the released code's and Real-ESRGAN's
      order: the noise is added before the final resize to the LQ size).

    Output: a tensor (N, B, C, H, W) in [0, 1]. With ``include_clean_negative`` the clean LQ is copy 0 (where the
    released code puts it) and copies 1..N-1 are degraded. The model maps them with one batched forward:
    ``net_his(negatives.flatten(0, 1))``, then ``.view(N, B, ...)``.

    Args:
        opt (dict | None): The option dict (``train.negatives``); missing keys take the defaults in ``DEFAULTS``.
        option_path (str): Where ``opt`` lives in the option file, for error messages. Default: 'train.negatives'.

    Example::

        negatives:
          num_negatives: 5                 # N, Fig. 8a
          include_clean_negative: false    # true: released code (clean LQ + 4 degraded)
          kind: noise                      # noise | blur | resize | mix, Tab. 6
          noise_sigma: [1, 30]             # sigma / 255
          gray_noise_prob: 0.5
    """

    def __init__(self, opt=None, option_path='train.negatives'):
        self.option_path = option_path
        opt = dict(opt or {})
        unknown = sorted(set(opt) - set(DEFAULTS))
        if unknown:
            raise ValueError(f'{option_path}.{unknown[0]}: unknown option; the known ones are {list(DEFAULTS)}')
        self.opt = {**DEFAULTS, **opt}

        self.include_clean_negative = self.opt['include_clean_negative']
        self._check(isinstance(self.include_clean_negative, bool), 'include_clean_negative', 'must be true or false')
        self.num_negatives = self.opt['num_negatives']
        minimum = 1 + self.include_clean_negative
        self._check(
            isinstance(self.num_negatives, int) and not isinstance(self.num_negatives, bool)
            and self.num_negatives >= minimum, 'num_negatives',
            f'must be an integer >= {minimum} (at least one degraded copy)')
        self.kind = self.opt['kind']
        self._check(self.kind in DEGRADATION_TYPES, 'kind', f'must be one of {list(DEGRADATION_TYPES)}')

        self.noise_sigma = self._range('noise_sigma', lowest=0)
        self.gray_noise_prob = self._probability('gray_noise_prob')
        sizes = self.opt['blur_kernel_sizes']
        self._check(
            isinstance(sizes, (list, tuple)) and len(sizes) > 0
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 and s % 2 == 1 for s in sizes),
            'blur_kernel_sizes', 'must be a non-empty list of odd positive integers')
        self.blur_kernel_sizes = list(sizes)
        self.blur_sigma = self._range('blur_sigma', lowest=0, strict=True)
        self.resize_up_prob = self._probability('resize_up_prob')
        self.resize_down_scale = self._range('resize_down_scale', lowest=0, highest=1, strict=True)
        self.resize_up_scale = self._range('resize_up_scale', lowest=1)
        modes = self.opt['resize_modes']
        self._check(
            isinstance(modes, (list, tuple)) and len(modes) > 0 and all(m in INTERPOLATION_MODES for m in modes),
            'resize_modes', f'must be a non-empty list of {list(INTERPOLATION_MODES)}')
        self.resize_modes = list(modes)

    def _check(self, condition, key, requirement):
        if not condition:
            raise ValueError(f'{self.option_path}.{key} = {self.opt[key]!r}: {requirement}')

    def _probability(self, key):
        value = self.opt[key]
        self._check(_is_number(value) and 0 <= value <= 1, key, 'must be a probability in [0, 1]')
        return float(value)

    def _range(self, key, lowest, highest=math.inf, strict=False):
        """A [low, high] pair with lowest <= low (lowest < low if strict) and low <= high <= highest."""
        value = self.opt[key]
        valid = isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)
        valid = valid and (value[0] > lowest if strict else value[0] >= lowest) and value[0] <= value[1] <= highest
        bounds = f'{"(" if strict else "["}{lowest}, {highest}{"]" if highest < math.inf else ")"}'
        self._check(valid, key, f'must be [low, high] with low <= high, both in {bounds}')
        return float(value[0]), float(value[1])

    def __call__(self, lq):
        """Degrade a batch.

        Args:
            lq (Tensor): (B, C, H, W) in [0, 1].

        Returns:
            Tensor: (N, B, C, H, W) in [0, 1], on lq's device and dtype; copy 0 is ``lq`` itself when
            ``include_clean_negative`` is set.
        """
        if lq.dim() != 4:
            raise ValueError(f'KDDegradations expects a (B, C, H, W) batch, got shape {tuple(lq.shape)}')
        copies = self.num_negatives - self.include_clean_negative
        stacked = lq.unsqueeze(0).expand(copies, *lq.shape)
        if self.kind == 'noise':
            degraded = self._add_noise(stacked)
        elif self.kind == 'blur':
            degraded = self._blur(stacked)
        elif self.kind == 'resize':
            degraded = torch.stack([self._resize_back(self._resize_away(lq), lq) for _ in range(copies)])
        else:  # mix
            degraded = torch.stack([
                self._resize_back(self._add_noise(self._resize_away(blurred).unsqueeze(0))[0], lq)
                for blurred in self._blur(stacked)
            ])
        if self.include_clean_negative:
            degraded = torch.cat([lq.unsqueeze(0), degraded])
        return degraded

    def _uniform(self, shape, bounds, like):
        """U[bounds] of the given shape on like's device and dtype (the device's global generator)."""
        return torch.empty(shape, device=like.device, dtype=like.dtype).uniform_(*bounds)

    def _add_noise(self, images):
        """(K, B, C, H, W) -> the same with Gaussian noise, sigma and grey-or-colour drawn per copy and sample."""
        copies, batch = images.shape[:2]
        sigma = self._uniform((copies, batch, 1, 1, 1), self.noise_sigma, images) / 255
        noise = torch.randn(images.shape, device=images.device, dtype=images.dtype)
        gray = torch.rand((copies, batch, 1, 1, 1), device=images.device) < self.gray_noise_prob
        noise = torch.where(gray, noise[:, :, :1], noise)  # grey: channel 0's noise on every channel
        return (images + sigma * noise).clamp_(0, 1)

    def _blur_kernels(self, count, radius, like):
        """(count, 2·radius + 1) normalised 1-D Gaussians, each with its own size and sigma (zero outside it)."""
        taps = torch.arange(-radius, radius + 1, device=like.device, dtype=like.dtype)
        sizes = torch.tensor(self.blur_kernel_sizes, device=like.device)
        half = sizes[torch.randint(len(sizes), (count, ), device=like.device)] // 2
        sigma = self._uniform((count, 1), self.blur_sigma, like)
        weights = torch.exp(-0.5 * (taps / sigma)**2) * (taps.abs() <= half[:, None])
        return weights / weights.sum(1, keepdim=True)

    def _blur(self, images):
        """(K, B, C, H, W) -> separable Gaussian blur, one kernel pair per copy and sample, as one grouped conv."""
        copies, batch, channels, height, width = images.shape
        radius = max(self.blur_kernel_sizes) // 2
        if radius >= min(height, width):
            raise ValueError(f'{self.option_path}.blur_kernel_sizes = {self.blur_kernel_sizes}: reflect padding of '
                             f'{radius} needs inputs larger than {radius} pixels, got {height}x{width}')
        count = copies * batch
        kernel_h = self._blur_kernels(count, radius, images).repeat_interleave(channels, 0)
        kernel_w = self._blur_kernels(count, radius, images).repeat_interleave(channels, 0)
        groups = count * channels
        out = F.pad(images.reshape(1, groups, height, width), [radius] * 4, mode='reflect')
        out = F.conv2d(out, kernel_h.view(groups, 1, -1, 1), groups=groups)
        out = F.conv2d(out, kernel_w.view(groups, 1, 1, -1), groups=groups)
        return out.view(images.shape).clamp_(0, 1)

    def _interpolate(self, images, size):
        """Resize a (B, C, H, W) batch to size with a mode drawn from resize_modes; clamp to [0, 1]."""
        mode = self.resize_modes[torch.randint(len(self.resize_modes), ()).item()]
        align_corners = False if mode in ('bilinear', 'bicubic') else None
        return F.interpolate(images, size=size, mode=mode, align_corners=align_corners).clamp_(0, 1)

    def _resize_away(self, images):
        """Up (p = resize_up_prob) or down by a random factor, one factor for the whole batch."""
        bounds = self.resize_up_scale if torch.rand(()).item() < self.resize_up_prob else self.resize_down_scale
        factor = bounds[0] + (bounds[1] - bounds[0]) * torch.rand(()).item()
        height, width = images.shape[2:]
        return self._interpolate(images, (max(1, int(height * factor)), max(1, int(width * factor))))

    def _resize_back(self, images, lq):
        return self._interpolate(images, lq.shape[2:])
