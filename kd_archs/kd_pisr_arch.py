"""PISR's teacher (Lee, Lee, Kim and Ham, "Learning with Privileged Information for Efficient Image Super-Resolution",
ECCV 2020): an encoder that sees the HR image and compresses it to an LR-size image, and a decoder, an SR network."""
from torch import nn
from basicsr.utils.registry import ARCH_REGISTRY


def build_part(net_opt):
    """A network of the registry from its options (BasicSR's ``build_network`` without importing ``basicsr.archs``,
    which a fork is still importing while it scans this file)."""
    net_opt = dict(net_opt)
    return ARCH_REGISTRY.get(net_opt.pop('type'))(**net_opt)


@ARCH_REGISTRY.register()
class KDPISREncoder(nn.Module):
    """PISR's encoder: the HR image (the privileged information) in, an LR-size image out, which the teacher's decoder
    super-resolves and the imitation loss ties to the bicubic LR image.

    Four convolutions, as the authors' ``lcscc`` encoder (their models/encoder.py): 5×5 (image → ``num_feat``), PReLU,
    5×5 with stride ``scale`` (the subsampling), PReLU, 3×3 (→ ``num_shrink``), PReLU, 3×3 (→ the image channels).
    Padding 2, 2, 1, 1: an HR side of s·n gives n. PReLU has one parameter, as ``nn.PReLU()`` in the authors' code.

    Args:
        num_in_ch (int): Image channels (in and out). Default: 3.
        scale (int): The SR scale s, the stride of the second convolution. Default: 4.
        num_feat (int): Width of the first two convolutions (FSRCNN's d; the authors' 56). Default: 56.
        num_shrink (int): Width of the third (FSRCNN's s; the authors' 12). Default: 12.

    Example::

        encoder: {type: KDPISREncoder, num_in_ch: 3, scale: 4, num_feat: 56, num_shrink: 12}
    """

    def __init__(self, num_in_ch=3, scale=4, num_feat=56, num_shrink=12):
        super().__init__()
        if not isinstance(scale, int) or scale < 1:
            raise ValueError(f'KDPISREncoder: scale must be a positive integer, got {scale!r}')
        self.scale = scale
        self.body = nn.Sequential(
            nn.Conv2d(num_in_ch, num_feat, 5, 1, 2), nn.PReLU(),
            nn.Conv2d(num_feat, num_feat, 5, scale, 2), nn.PReLU(),
            nn.Conv2d(num_feat, num_shrink, 3, 1, 1), nn.PReLU(),
            nn.Conv2d(num_shrink, num_in_ch, 3, 1, 1))

    def forward(self, hr):
        return self.body(hr)


@ARCH_REGISTRY.register()
class KDPISRTeacher(nn.Module):
    """PISR's teacher: ``decoder(encoder(HR))``. Both parts are networks of the registry, built from their dicts: the
    encoder (``KDPISREncoder``) compresses the HR image to an LR-size image, the decoder is an SR network of the
    student's family (EDSR, RCAN...), so its features can be distilled into the student (PISR's decoder and student
    share FSRCNN's architecture). Its output is the HR-size reconstruction; the encoder's output is the output of the
    module ``encoder`` (a feature tap on ``encoder`` keeps it), the decoder's features the outputs of
    ``decoder.<path>``.

    Args:
        encoder (dict): The encoder's network options (``type: KDPISREncoder``...).
        decoder (dict): The decoder's network options, an SR network whose ``upscale`` is the encoder's ``scale``.

    Example::

        network_g: {type: KDPISRTeacher, encoder: {type: KDPISREncoder, scale: 4},
                    decoder: {type: EDSR, num_feat: 256, num_block: 32, upscale: 4, res_scale: 0.1}}
    """

    def __init__(self, encoder, decoder):
        super().__init__()
        for key, value in (('encoder', encoder), ('decoder', decoder)):
            if not isinstance(value, dict) or 'type' not in value:
                raise ValueError(f'KDPISRTeacher: {key} must be a network dict with a type, got {value!r}')
        down, up = encoder.get('scale'), decoder.get('upscale', decoder.get('scale'))
        if down != up:
            raise ValueError(f'KDPISRTeacher: encoder.scale = {down} but decoder.upscale = {up}: the decoder must '
                             'bring the encoder\'s LR-size image back to the HR size')
        self.scale = up
        self.encoder = build_part(encoder)
        self.decoder = build_part(decoder)

    def forward(self, hr):
        return self.decoder(self.encoder(hr))
