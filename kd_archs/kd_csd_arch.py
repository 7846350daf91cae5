"""CSD's channel-splitting super-resolution networks (CSSR-Net) for EDSR and RCAN: one set of weights, run at any
width slice, its student slice a plain BasicSR network."""
from collections import OrderedDict

import torch.nn.functional as F
from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.rcan_arch import RCAN
from basicsr.utils.registry import ARCH_REGISTRY


class ChannelSplitting():
    """Mixin of the channel-splitting networks of CSD (Wang et al., "Towards Compact Single Image Super-Resolution
    via Contrastive Self-distillation", IJCAI 2021) over a BasicSR network with ``conv_first``, a body,
    ``conv_after_body``, ``upsample`` and ``conv_last`` (EDSR, RCAN).

    The weights are the BasicSR network's (same state_dict keys and shapes), so a trained network loads as the
    super-network (CSD starts from the teacher) and the super-network's full width is that network. At width ``w``
    every feature layer keeps its first ``c = w·num_feat`` channels, as the authors' code slices them:
    ``conv_first`` its first ``c`` filters; each body convolution the top-left block of its sliced output and input
    channels; ``conv_after_body`` the top-left ``c x c`` block; each upsampling convolution its first ``r²·c``
    filters on its first ``c`` input channels (the first ``c`` channels after the pixel shuffle); ``conv_last`` all
    its filters on its first ``c`` input channels. The image channels, the mean shift, ``img_range`` and
    ``res_scale`` are shared by every width. The student is the slice at ``student_width``: ``student_state_dict()``
    gives it as the plain network of ``student_options()`` (``student_type``), which BasicSR's ``SRModel`` loads.

    A class using it sets ``student_type`` and defines ``body_slices(width, c)`` (the body's entries of
    ``sliced_convolutions``) and ``slim_body(x, conv)`` (the body's forward through the sliced ``conv``).
    """

    student_type = None

    def init_splitting(self, num_feat, student_width):
        self.num_feat = num_feat
        self.student_width = student_width
        self.sliced_convolutions(student_width)  # refuses a width that does not slice every layer into whole channels

    def channels(self, width, channels=None):
        """The channels the slice at ``width`` keeps of ``channels`` (default: ``num_feat``)."""
        channels = self.num_feat if channels is None else channels
        kept = channels * width
        if not 0 < width <= 1 or kept != int(kept) or kept < 1:
            raise ValueError(f'{type(self).__name__}: width {width} must be in (0, 1] and keep whole channels of '
                             f'{channels} (got {kept})')
        return int(kept)

    def sliced_convolutions(self, width):
        """{module path: (output channels, input channels)} kept by each convolution at ``width``, in forward order."""
        c = self.channels(width)
        table = OrderedDict(conv_first=(c, self.conv_first.in_channels))
        table.update(self.body_slices(width, c))
        table['conv_after_body'] = (c, c)
        for name, layer in self.upsample.named_children():
            if hasattr(layer, 'weight'):  # a convolution; PixelShuffle has none
                table[f'upsample.{name}'] = (layer.out_channels // self.num_feat * c, c)
        table['conv_last'] = (self.conv_last.out_channels, c)
        return table

    def forward(self, x, width=1.0):
        """The super-resolved ``x`` by the slice at ``width`` (1: the whole network); a list or tuple of widths gives
        a tuple of outputs, one per width, from one call (one DDP forward for the teacher and the student)."""
        if isinstance(width, (list, tuple)):
            return tuple(self.forward(x, w) for w in width)
        modules, slices = dict(self.named_modules()), self.sliced_convolutions(width)

        def conv(path, features):
            out_channels, in_channels = slices[path]
            layer = modules[path]
            return F.conv2d(features, layer.weight[:out_channels, :in_channels], layer.bias[:out_channels],
                            padding=layer.padding)

        self.mean = self.mean.type_as(x)
        x = conv('conv_first', (x - self.mean) * self.img_range)
        res = conv('conv_after_body', self.slim_body(x, conv)) + x
        for name, layer in self.upsample.named_children():
            res = conv(f'upsample.{name}', res) if hasattr(layer, 'weight') else layer(res)
        return conv('conv_last', res) / self.img_range + self.mean

    def student_state_dict(self, state_dict=None):
        """The student slice (``student_width``) as the state_dict of the plain network of ``student_options()``.

        Args:
            state_dict (dict): Weights of this architecture to slice (e.g. the EMA copy's). Default: this network's.
        """
        state_dict = self.state_dict() if state_dict is None else state_dict
        student = OrderedDict()
        for path, (out_channels, in_channels) in self.sliced_convolutions(self.student_width).items():
            student[f'{path}.weight'] = state_dict[f'{path}.weight'][:out_channels, :in_channels].clone()
            student[f'{path}.bias'] = state_dict[f'{path}.bias'][:out_channels].clone()
        return student

    @classmethod
    def student_options(cls, network_opt):
        """The options of the plain network that the student slice of the super-network ``network_opt`` is."""
        options = {key: value for key, value in network_opt.items() if key != 'student_width'}
        width = network_opt.get('student_width', 0.25)
        options.update(type=cls.student_type, num_feat=int(network_opt.get('num_feat', 64) * width))
        return options


@ARCH_REGISTRY.register()
class KDSlimmableEDSR(ChannelSplitting, EDSR):
    """BasicSR's EDSR as a channel-splitting super-network of CSD (``ChannelSplitting``): each residual block's two
    convolutions keep their top-left ``c x c`` block.

    Args:
        num_in_ch, num_out_ch, num_feat, num_block, upscale, res_scale, img_range, rgb_mean: as BasicSR's ``EDSR``
            (here the teacher: the super-network's full width).
        student_width (float): The student's share of the channels, in (0, 1]; ``num_feat·student_width`` must be
            a whole number. Default: 0.25 (CSD's students, the authors' ``--stu_width_mult``).

    Example::

        network_g:
          type: KDSlimmableEDSR
          num_in_ch: 3
          num_out_ch: 3
          num_feat: 256
          num_block: 16
          upscale: 4
          res_scale: 0.1
          img_range: 255.
          student_width: 0.25
    """

    student_type = 'EDSR'

    def __init__(self,
                 num_in_ch,
                 num_out_ch,
                 num_feat=64,
                 num_block=16,
                 upscale=4,
                 res_scale=1,
                 img_range=255.,
                 rgb_mean=(0.4488, 0.4371, 0.4040),
                 student_width=0.25):
        super().__init__(num_in_ch, num_out_ch, num_feat, num_block, upscale, res_scale, img_range, rgb_mean)
        self.init_splitting(num_feat, student_width)

    def body_slices(self, width, c):
        table = OrderedDict()
        for index in range(len(self.body)):
            table[f'body.{index}.conv1'] = table[f'body.{index}.conv2'] = (c, c)
        return table

    def slim_body(self, x, conv):
        for index, block in enumerate(self.body):
            x = x + conv(f'body.{index}.conv2', F.relu(conv(f'body.{index}.conv1', x))) * block.res_scale
        return x


@ARCH_REGISTRY.register()
class KDSlimmableRCAN(ChannelSplitting, RCAN):
    """BasicSR's RCAN as a channel-splitting super-network of CSD (``ChannelSplitting``): each RCAB's two 3x3
    convolutions and each group's closing convolution keep their top-left ``c x c`` block; the channel attention's
    squeeze keeps ``w·num_feat/squeeze_factor`` channels (1 of 4 at 64 channels, factor 16 and width 0.25: the
    authors' ``CALayer`` slices both 1x1 convolutions by the width), so the slice is a plain RCAN of ``c`` channels
    and the same squeeze factor.

    Args:
        num_in_ch, num_out_ch, num_feat, num_group, num_block, squeeze_factor, upscale, res_scale, img_range,
            rgb_mean: as BasicSR's ``RCAN`` (here the teacher: the super-network's full width).
        student_width (float): The student's share of the channels, in (0, 1]; ``num_feat·student_width`` and
            ``(num_feat // squeeze_factor)·student_width`` must be whole numbers (then the slice squeezes as a plain
            RCAN of ``c`` channels and the same ``squeeze_factor`` does). Default: 0.25.

    Example::

        network_g:
          type: KDSlimmableRCAN
          num_in_ch: 3
          num_out_ch: 3
          num_feat: 64
          num_group: 10
          num_block: 20
          squeeze_factor: 16
          upscale: 4
          res_scale: 1
          img_range: 255.
          student_width: 0.25
    """

    student_type = 'RCAN'

    def __init__(self,
                 num_in_ch,
                 num_out_ch,
                 num_feat=64,
                 num_group=10,
                 num_block=16,
                 squeeze_factor=16,
                 upscale=4,
                 res_scale=1,
                 img_range=255.,
                 rgb_mean=(0.4488, 0.4371, 0.4040),
                 student_width=0.25):
        super().__init__(num_in_ch, num_out_ch, num_feat, num_group, num_block, squeeze_factor, upscale, res_scale,
                         img_range, rgb_mean)
        self.squeeze_factor = squeeze_factor
        self.init_splitting(num_feat, student_width)

    def body_slices(self, width, c):
        squeezed = self.channels(width, self.num_feat // self.squeeze_factor)
        table = OrderedDict()
        for g, group in enumerate(self.body):
            for b in range(len(group.residual_group)):
                block = f'body.{g}.residual_group.{b}.rcab'
                table[f'{block}.0'] = table[f'{block}.2'] = (c, c)
                table[f'{block}.3.attention.1'] = (squeezed, c)
                table[f'{block}.3.attention.3'] = (c, squeezed)
            table[f'body.{g}.conv'] = (c, c)
        return table

    def slim_body(self, x, conv):
        res = x
        for g, group in enumerate(self.body):
            group_input = res
            for b, block in enumerate(group.residual_group):
                path = f'body.{g}.residual_group.{b}.rcab'
                features = conv(f'{path}.2', F.relu(conv(f'{path}.0', res)))
                attention = F.relu(conv(f'{path}.3.attention.1', features.mean((2, 3), keepdim=True)))
                res = res + features * conv(f'{path}.3.attention.3', attention).sigmoid() * block.res_scale
            res = conv(f'body.{g}.conv', res) + group_input
        return res
