"""CSD (Wang et al., IJCAI 2021): contrastive self-distillation of a channel-splitting super-network, as a model."""
import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
from basicsr.archs import build_network
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

from .kd_base_model import PIXEL_LOSSES, KDBaseModel

SUPERNET = 'supernet_'  # prefix of the super-network's entries in a CSD checkpoint (its plain keys: the student)


@MODEL_REGISTRY.register()
class KDCSDModel(KDBaseModel):
    """CSD: the teacher is the full width of the super-network ``network_g`` and the student its slice; both are
    trained together (self-distillation: they share the student's weights). The loss of a step::

        L = L1(Y_S, GT) + λ_T·L1(Y_T, GT) + λ_CL·L_CL(Y_S; Y_T, Y^-)

    - ``network_g``: a channel-splitting super-network (``KDSlimmableEDSR`` or ``KDSlimmableRCAN``, its
      ``student_width`` the student's share of the channels, CSD's 0.25), started from the trained teacher
      (``path.pretrain_network_g``: a plain EDSR / RCAN checkpoint of the full width loads as it is). One forward
      gives Y_T (width 1) and Y_S (the slice), both with gradient.
    - ``train.pixel_opt``: the student's reconstruction loss to GT (required, ``l_pix``);
      ``train.teacher_pixel_opt``: the teacher's (λ_T, the authors' ``--t_lambda``; ``l_pix_t``).
    - ``train.contrastive_opt``: L_CL (``KDCSDContrastiveLoss``, ``loss_weight`` λ_CL, ``l_csd``) on the features of
      the frozen ``network_vgg`` (``KDVGG19Features``, its ``layer_names`` one per ``layer_weights``): the anchor
      Y_S (the only VGG call with gradient, to Y_S), the positive Y_T and the negatives, the bicubic-upsampled LR
      inputs of the first ``train.num_negatives`` samples of the batch (of each rank's batch under DDP), each
      compared with every sample. ``train.detach_positive`` (default true, the authors' ``--contrast_t_detach`` of
      their training command): Y_T enters L_CL as a constant and goes through VGG with the negatives in one no_grad
      call; false: L_CL also trains the teacher width, and Y_S and Y_T go through VGG in one call with gradient.
      Leave ``contrastive_opt`` and ``network_vgg`` out for CSD without L_CL (plain self-distillation).

    Checkpoints: ``net_g_<iter>.pth`` holds the student slice under ``params`` (and ``params_ema``), a plain
    ``EDSR`` or ``RCAN`` of the super-network's ``student_options`` that ``SRModel`` loads
    (``options/test/test_csd_*.yml``), and the whole super-network under ``supernet_params``
    (``supernet_params_ema``), which this model loads back (resume, ``pretrain_network_g``). Validation runs the
    student slice.

    Checked before the first step, naming the option key: ``network_g`` is a channel-splitting super-network;
    ``path.pretrain_network_g`` is set (the trained teacher) unless ``train.from_scratch`` is true; no
    teacher network (the teacher is ``network_g``'s full width); ``pixel_opt`` is set; ``network_vgg`` comes with
    ``contrastive_opt`` and has one layer per weight; ``num_negatives`` is a whole number from 1 to
    ``datasets.train.batch_size_per_gpu``; ``detach_positive`` and ``from_scratch`` are booleans.

    Overrides: ``teacher_names`` (none), ``init_training_settings``, ``forward_networks`` (both widths in one call),
    ``compute_losses`` (adds ``l_pix_t``, ``l_csd``), ``floor_forwards`` (VGG on the student's output, VGG on the
    positive and negatives), ``test`` (the student slice), ``checkpoint_weights`` and ``load_network`` (the
    checkpoint layout above).

    Example::

        model_type: KDCSDModel
        network_g: {type: KDSlimmableEDSR, num_in_ch: 3, num_out_ch: 3, num_feat: 256, num_block: 16, upscale: 4,
                    res_scale: 0.1, student_width: 0.25}
        network_vgg: {type: KDVGG19Features, layer_names: [relu1_1, relu2_1, relu3_1, relu4_1, relu5_1]}
        train:
          num_negatives: 10
          detach_positive: true
          pixel_opt: {type: L1Loss, loss_weight: 1.0}
          teacher_pixel_opt: {type: L1Loss, loss_weight: 1.0}
          contrastive_opt: {type: KDCSDContrastiveLoss, layer_weights: [0.03125, 0.0625, 0.125, 0.25, 1.0],
                            loss_weight: 200}
    """

    option_keys = {'train': {'from_scratch': None, 'num_negatives': None, 'detach_positive': None,
                             'teacher_pixel_opt': PIXEL_LOSSES,
                             'contrastive_opt': ('KDCSDContrastiveLoss', )}}

    def teacher_names(self):
        """None: CSD's teacher is the super-network's full width (a ``network_t`` key is refused as unknown)."""
        return []

    def init_training_settings(self):
        train_opt = self.opt['train']
        supernet = self.get_bare_model(self.net_g)
        if not hasattr(supernet, 'student_state_dict'):
            raise ValueError(f'network_g.type = {self.opt["network_g"]["type"]}: KDCSDModel trains a channel-splitting '
                             'super-network whose slice is the student (KDSlimmableEDSR, KDSlimmableRCAN)')
        if not train_opt.get('pixel_opt'):
            raise ValueError('KDCSDModel needs train.pixel_opt, the student\'s reconstruction loss (L1Loss)')
        for key, default in (('from_scratch', False), ('detach_positive', True)):
            if not isinstance(train_opt.get(key, default), bool):
                raise ValueError(f'train.{key} = {train_opt[key]!r}: use true or false')
        if not self.opt['path'].get('pretrain_network_g') and not train_opt.get('from_scratch', False):
            raise ValueError('path.pretrain_network_g is not set: CSD starts its super-network from the trained '
                             'teacher (a plain checkpoint of network_g\'s full width loads as it is); set it, '
                             'or set train.from_scratch: true to start from random weights')
        with_cl = bool(train_opt.get('contrastive_opt'))
        if 'network_vgg' in self.opt and not with_cl:
            raise ValueError('network_vgg is set but train.contrastive_opt is not: VGG-19 serves only L_CL; set '
                             'train.contrastive_opt or remove network_vgg (CSD without L_CL)')
        if with_cl and 'network_vgg' not in self.opt:
            raise ValueError('train.contrastive_opt needs network_vgg (KDVGG19Features), the features of L_CL')
        self.frozen_networks = ('vgg', ) if with_cl else ()  # the base then requires and loads network_vgg
        self.detach_positive = train_opt.get('detach_positive', True)
        self.num_negatives = self.check_num_negatives() if with_cl else 0
        super().init_training_settings()
        self.cri_teacher_pix = self.build_train_loss('teacher_pixel_opt')
        self.cri_contrastive = self.build_train_loss('contrastive_opt')
        if with_cl:
            layers = self.opt['network_vgg'].get('layer_names') or self.frozen['vgg'].layer_names
            if len(layers) != len(self.cri_contrastive.layer_weights):
                raise ValueError(f'train.contrastive_opt.layer_weights has {len(self.cri_contrastive.layer_weights)} '
                                 f'weights but network_vgg.layer_names {len(layers)} layers: one weight per layer')

    def check_num_negatives(self):
        """``train.num_negatives``: K, drawn from each rank's batch."""
        count = self.opt['train'].get('num_negatives')
        batch = ((self.opt.get('datasets') or {}).get('train') or {}).get('batch_size_per_gpu')
        if not isinstance(count, int) or isinstance(count, bool) or count < 1 or (batch and count > batch):
            raise ValueError(f'train.num_negatives = {count!r}: L_CL needs a whole number of negatives from 1 to '
                             f'datasets.train.batch_size_per_gpu ({batch}), the LR images of the batch they come from')
        return count

    @classmethod
    def write_random_frozen_files(cls, opt, folder, seed=0):
        """The base's random frozen files, and random weights for the trained teacher the super-network starts from
        (``path.pretrain_network_g``) unless ``train.from_scratch``."""
        super().write_random_frozen_files(opt, folder, seed)
        if not opt['train'].get('from_scratch', False):
            torch.manual_seed(seed)
            path = os.path.join(folder, f'{opt["name"]}_network_g.pth')
            torch.save({'params': build_network(opt['network_g']).state_dict()}, path)
            opt['path']['pretrain_network_g'] = path

    # ------------------------------------------------------------------------------------------- step
    def forward_networks(self):
        """Y_T (full width) and Y_S (the student slice), both with gradient, from one call of ``network_g``."""
        widths = (1.0, self.get_bare_model(self.net_g).student_width)
        self.teacher_output, self.output = self.net_g(self.lq, width=widths)
        self.teacher_outputs = OrderedDict(t=self.teacher_output)

    def negatives(self):
        """Y^-: the first ``num_negatives`` LR inputs of the batch, bicubic-upsampled to the output size."""
        return F.interpolate(self.lq[:self.num_negatives], scale_factor=self.opt['scale'], mode='bicubic',
                             align_corners=False)

    def contrastive_loss(self):
        """L_CL: VGG on Y_S with gradient to it; the positive and the negatives without gradient, in one call each
        set (one call for both when the positive is detached)."""
        batch = self.output.shape[0]
        if self.detach_positive:
            anchors, _ = self.run_frozen('vgg', self.output, grad_to_input=True)
            references, _ = self.run_frozen('vgg', torch.cat([self.teacher_output.detach(), self.negatives()]))
            positives = [feature[:batch] for feature in references.values()]
            negatives = [feature[batch:] for feature in references.values()]
            anchors = list(anchors.values())
        else:
            pairs, _ = self.run_frozen('vgg', torch.cat([self.output, self.teacher_output]), grad_to_input=True)
            anchors = [feature[:batch] for feature in pairs.values()]
            positives = [feature[batch:] for feature in pairs.values()]
            negatives = list(self.run_frozen('vgg', self.negatives())[0].values())
        return self.cri_contrastive(anchors, positives, negatives)

    def compute_losses(self, current_iter):
        losses = super().compute_losses(current_iter)  # l_pix: the student's L1 to GT
        if self.cri_teacher_pix is not None:
            losses['l_pix_t'] = self.cri_teacher_pix(self.teacher_output, self.gt)
        if self.cri_contrastive is not None:
            losses['l_csd'] = self.contrastive_loss()
        return losses

    def floor_forwards(self):
        """VGG on the student's output (run with gradient to it in the step) and on the positive and negatives."""
        if self.cri_contrastive is None:
            return []
        if self.detach_positive:
            return [('vgg', self.output.detach()), ('vgg', torch.cat([self.teacher_output.detach(), self.negatives()]))]
        return [('vgg', torch.cat([self.output.detach(), self.teacher_output.detach()])), ('vgg', self.negatives())]

    def test(self):
        """The student slice on the LQ input (the EMA copy's, where kept)."""
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g
        net.eval()
        with torch.no_grad():
            self.output = net(self.lq, width=self.get_bare_model(net).student_width)
        self.net_g.train()

    # ------------------------------------------------------------------------------------------- checkpoints
    def checkpoint_weights(self, net_label, param_key, state):
        """``net_g``: the student slice under ``param_key`` (what SRModel loads), the super-network beside it."""
        if net_label != 'net_g':
            return super().checkpoint_weights(net_label, param_key, state)
        student = self.get_bare_model(self.net_g).student_state_dict(state)
        return {param_key: student, SUPERNET + param_key: state}

    def load_network(self, net, load_path, strict=True, param_key='params'):
        """A CSD checkpoint gives the super-network its ``supernet_<param_key>`` entry (``supernet_params`` where it
        has no EMA weights); any other file (a trained teacher) loads as BasicSR loads it."""
        checkpoint = self.read_weight_file(load_path, 'path.pretrain_network_g')
        key = SUPERNET + param_key if SUPERNET + param_key in checkpoint else SUPERNET + 'params'
        if key not in checkpoint:
            return super().load_network(net, load_path, strict, param_key)
        self.get_bare_model(net).load_state_dict(checkpoint[key], strict=strict)
        get_root_logger().info(f'Loading the CSD super-network from {load_path}, with param key: [{key}].')
