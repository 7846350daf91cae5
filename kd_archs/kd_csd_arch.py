"""CSD's channel-splitting super-resolution network (CSSR-Net) for EDSR: one set of weights, run at any width."""
from collections import OrderedDict

import torch.nn.functional as F
from basicsr.archs.edsr_arch import EDSR
from basicsr.utils.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class KDSlimmableEDSR(EDSR):
    """EDSR whose forward runs a width slice of itself: the channel-splitting super-network of CSD (Wang et al.,
    "Towards Compact Single Image Super-Resolution via Contrastive Self-distillation", IJCAI 2021, Sec. 3.1).

    The weights are BasicSR's ``EDSR`` (same state_dict keys and shapes): a trained EDSR loads as the super-network
    (CSD starts from the teacher) and the super-network's full width is that EDSR. At width ``w`` every feature layer
    keeps its first ``c = w·num_feat`` channels, as the authors' code slices them: ``conv_first`` its first ``c``
    filters; each body convolution and ``conv_after_body`` the top-left ``c x c`` block; each upsampling
    convolution its first ``r²·c`` filters on its first ``c`` input channels (the first ``c`` channels after the
    pixel shuffle); ``conv_last`` all its filters on its first ``c`` input channels. The image channels, the mean
    shift, ``img_range`` and ``res_scale`` are shared by every width. The student of CSD is the slice at
    ``student_width``: ``student_state_dict()`` gives it as a plain ``EDSR`` of ``student_options()``, which
    BasicSR's ``SRModel`` loads.

    Args:
        num_in_ch, num_out_ch, num_feat, num_block, upscale, res_scale, img_range, rgb_mean: as BasicSR's ``EDSR``
            (here the teacher: the super-network's full width).
        student_width (float): The student's share of the channels, in (0, 1]; ``num_feat·student_width`` must be
            a whole number. Default: 0.25 (CSD's EDSR and RCAN students).

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
        self.num_feat = num_feat
        self.student_width = student_width
        self.channels(student_width)  # refuses a width that does not slice num_feat into whole channels

    def channels(self, width):
        """The feature channels of the slice at ``width``."""
        channels = self.num_feat * width
        if not 0 < width <= 1 or channels != int(channels):
            raise ValueError(f'KDSlimmableEDSR: width {width} must be in (0, 1] and give whole channels of num_feat = '
                             f'{self.num_feat} (got {channels})')
        return int(channels)

    def sliced_convolutions(self, width):
        """{module path: (output channels, input channels)} kept by each convolution at ``width``, in forward order."""
        c = self.channels(width)
        table = OrderedDict(conv_first=(c, self.conv_first.in_channels))
        for index in range(len(self.body)):
            table[f'body.{index}.conv1'] = table[f'body.{index}.conv2'] = (c, c)
        table['conv_after_body'] = (c, c)
        for name, layer in self.upsample.named_children():
            if hasattr(layer, 'weight'):  # a convolution; PixelShuffle has none
                table[f'upsample.{name}'] = (layer.out_channels // self.num_feat * c, c)
        table['conv_last'] = (self.conv_last.out_channels, c)
        return table

    def forward(self, x, width=1.0):
        """The super-resolved ``x`` by the slice at ``width`` (1: the whole EDSR); a list or tuple of widths gives a
        tuple of outputs, one per width, from one call (one DDP forward for the teacher and the student)."""
        if isinstance(width, (list, tuple)):
            return tuple(self.forward(x, w) for w in width)
        modules, slices = dict(self.named_modules()), self.sliced_convolutions(width)

        def conv(path, features):
            out_channels, in_channels = slices[path]
            layer = modules[path]
            return F.conv2d(features, layer.weight[:out_channels, :in_channels], layer.bias[:out_channels], padding=1)

        self.mean = self.mean.type_as(x)
        x = conv('conv_first', (x - self.mean) * self.img_range)
        res = x
        for index, block in enumerate(self.body):
            res = res + conv(f'body.{index}.conv2', F.relu(conv(f'body.{index}.conv1', res))) * block.res_scale
        res = conv('conv_after_body', res) + x
        for name, layer in self.upsample.named_children():
            res = conv(f'upsample.{name}', res) if hasattr(layer, 'weight') else layer(res)
        return conv('conv_last', res) / self.img_range + self.mean

    def student_state_dict(self, state_dict=None):
        """The student slice (``student_width``) as the state_dict of a plain ``EDSR`` of ``student_options()``.

        Args:
            state_dict (dict): Weights of this architecture to slice (e.g. the EMA copy's). Default: this network's.
        """
        state_dict = self.state_dict() if state_dict is None else state_dict
        student = OrderedDict()
        for path, (out_channels, in_channels) in self.sliced_convolutions(self.student_width).items():
            student[f'{path}.weight'] = state_dict[f'{path}.weight'][:out_channels, :in_channels].clone()
            student[f'{path}.bias'] = state_dict[f'{path}.bias'][:out_channels].clone()
        return student

    @staticmethod
    def student_options(network_opt):
        """The options of the plain ``EDSR`` that the student slice of the super-network ``network_opt`` is."""
        options = {key: value for key, value in network_opt.items() if key != 'student_width'}
        width = network_opt.get('student_width', 0.25)
        options.update(type='EDSR', num_feat=int(network_opt.get('num_feat', 64) * width))
        return options
