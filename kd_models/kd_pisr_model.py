"""PISR (Lee, Lee, Kim and Ham, "Learning with Privileged Information for Efficient Image Super-Resolution", ECCV
2020): stage 1 trains a teacher whose encoder sees the HR image, stage 2 distils its decoder's features into a
student by VID."""
import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
from basicsr.archs import build_network
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

from .kd_base_model import PIXEL_LOSSES, FeatureTaps, KDBaseModel, option_teacher_names

ENCODER = 'encoder'  # the module of KDPISRTeacher whose output is the encoded LR-size image


def check_pisr_teacher(opt, key, scale):
    """``opt[key]`` is a ``KDPISRTeacher`` whose decoder upscales by ``scale`` (the encoder's scale equals it, which
    the network itself checks)."""
    net_opt = opt[key]
    if net_opt.get('type') != 'KDPISRTeacher':
        raise ValueError(f'{key}.type = {net_opt.get("type")}: PISR\'s teacher is a KDPISRTeacher (an encoder of the '
                         'HR image and an SR decoder)')
    decoder = net_opt.get('decoder') or {}
    upscale = decoder.get('upscale', decoder.get('scale'))
    if upscale != scale:
        raise ValueError(f'{key}.decoder.upscale = {upscale} but scale = {scale}: teacher, student and data must '
                         'share one scale.')


@MODEL_REGISTRY.register()
class KDPISRTeacherModel(KDBaseModel):
    """PISR stage 1, the teacher: ``network_g`` is a ``KDPISRTeacher``, an encoder E that compresses the HR image Y
    (the privileged information) to an LR-size image Ẑ = E(Y), and a decoder D (an SR network of the student's
    family) that reconstructs Ŷ = D(Ẑ). Both are trained on

        L_T = L_recon(Ŷ, Y) + λ_T·L_im(Ẑ, X)

    with X the bicubic LR image: ``train.pixel_opt`` is L_recon (L1, weight 1) and ``train.imitation_opt`` is λ_T·L_im
    (L1; the authors' λ_T = 1e-4, their configs/fsrcnn/step1.yml), the imitation loss that makes Ẑ look like an LR
    image. There is no frozen network. Ẑ is kept by a forward hook on the module ``encoder``.

    ``path.pretrain_network_decoder`` (optional) starts the decoder from a trained SR network's weights
    (``param_key_decoder``: params_ema, falling back to params; ``strict_load_decoder``: true), e.g. the file the other
    methods load as their teacher; it is not read when ``path.pretrain_network_g`` is set (a resumed run or a started
    teacher). The name holds ``pretrain_network`` so that BasicSR neither makes a folder of it nor leaves ``~``
    unexpanded.

    Validation and ``test()`` feed the teacher the GT image (its input), so its metrics are those of the teacher with
    privileged information: stage 2's upper reference, not an SR result.

    Overrides ``__init__`` (checks ``network_g`` before SRModel builds it), ``teacher_names`` (none),
    ``init_training_settings`` (the imitation loss, the encoder's hook, the decoder's start),
    ``write_random_frozen_files`` (a random decoder file for the tools), ``forward_networks`` (the teacher on GT),
    ``compute_losses`` (adds ``l_im``) and ``test``.

    Example::

        model_type: KDPISRTeacherModel
        network_g: {type: KDPISRTeacher, encoder: {type: KDPISREncoder, scale: 4},
                    decoder: {type: EDSR, num_feat: 256, num_block: 32, upscale: 4, res_scale: 0.1}}
        path:
          pretrain_network_decoder: experiments/pretrained_models/EDSR_Lx4_f256b32_DIV2K_official-76ee1c8f.pth
        train:
          pixel_opt: {type: L1Loss, loss_weight: 1.0}              # L_recon
          imitation_opt: {type: L1Loss, loss_weight: !!float 1e-4}  # lambda_T * L_im
    """

    option_keys = {'train': {'imitation_opt': PIXEL_LOSSES},
                   'path': {'pretrain_network_decoder': 'text', 'param_key_decoder': None, 'strict_load_decoder': None}}

    def __init__(self, opt):
        check_pisr_teacher(opt, 'network_g', opt.get('scale', 1))  # before SRModel builds it
        super().__init__(opt)

    def teacher_names(self):
        names = option_teacher_names(self.opt)
        if names:
            raise ValueError(f'KDPISRTeacherModel trains PISR\'s teacher itself (network_g) and reads no frozen '
                             f'teacher; remove {["network_" + name for name in names]}')
        return []

    def init_training_settings(self):
        if not self.opt['train'].get('pixel_opt') or not self.opt['train'].get('imitation_opt'):
            raise ValueError('KDPISRTeacherModel needs train.pixel_opt (L_recon, L1 to GT) and train.imitation_opt '
                             '(lambda_T * L_im, L1 of the encoded image to the LR image)')
        self.load_decoder()
        super().init_training_settings()
        self.cri_im = self.build_train_loss('imitation_opt')
        self.encoder_tap = FeatureTaps(self.get_bare_model(self.net_g), [ENCODER], 'network_g')

    def load_decoder(self):
        """The decoder's start from ``path.pretrain_network_decoder``, unless ``network_g`` itself was loaded."""
        path_opt = self.opt['path']
        load_path = path_opt.get('pretrain_network_decoder')
        if not load_path:
            return
        if path_opt.get('pretrain_network_g'):
            get_root_logger().info(f'path.pretrain_network_decoder = {load_path} not read: network_g was loaded from '
                                   f'path.pretrain_network_g = {path_opt["pretrain_network_g"]}')
            return
        state, param_key = self.read_weights(load_path, 'path.pretrain_network_decoder',
                                             path_opt.get('param_key_decoder', 'params_ema'), 'path.param_key_decoder')
        decoder = self.get_bare_model(self.net_g).decoder
        try:
            decoder.load_state_dict(state, strict=path_opt.get('strict_load_decoder', True))
        except RuntimeError as error:
            raise RuntimeError(f'path.pretrain_network_decoder = {load_path} does not fit network_g.decoder '
                               f'({self.opt["network_g"]["decoder"]}):\n{error}') from None
        get_root_logger().info(f'Loaded network_g.decoder from {load_path} [{param_key}]')

    @classmethod
    def write_random_frozen_files(cls, opt, folder, seed=0):
        """As KDBaseModel's, and a seeded random decoder file for ``path.pretrain_network_decoder`` when it is set."""
        super().write_random_frozen_files(opt, folder, seed)
        if opt['path'].get('pretrain_network_decoder'):
            torch.manual_seed(seed)
            path = os.path.join(folder, f'{opt["name"]}_decoder.pth')
            torch.save({'params': build_network(opt['network_g']['decoder']).state_dict()}, path)
            opt['path']['pretrain_network_decoder'] = path

    def forward_networks(self):
        """The teacher on the GT image (with gradient); Ẑ from the encoder's hook. No frozen forward."""
        self.output = self.net_g(self.gt)
        self.encoded = self.encoder_tap.outputs()[0]
        self.teacher_outputs = OrderedDict()

    def compute_losses(self, current_iter):
        losses = super().compute_losses(current_iter)
        losses['l_im'] = self.cri_im(self.encoded, self.lq)
        return losses

    def test(self):
        """The teacher (its EMA copy, if any) on the GT image: validation needs GT."""
        if not hasattr(self, 'gt'):
            raise ValueError('KDPISRTeacherModel runs on the GT image: validation needs paired data with GT')
        lq, self.lq = self.lq, self.gt
        try:
            super().test()
        finally:
            self.lq = lq


@MODEL_REGISTRY.register()
class KDPISRStudentModel(KDBaseModel):
    """PISR stage 2, the student: the frozen stage-1 teacher ``network_t`` (a ``KDPISRTeacher``, loaded from the
    ``net_g_<iter>.pth`` of a ``KDPISRTeacherModel`` run) sees the GT image, the student ``network_g`` (a plain SR
    network) the LR image, and the student is trained on

        L_S = L_recon(S, Y) + λ_S·L_distill

    ``train.pixel_opt`` is L_recon (L1 to GT, weight 1) and ``train.vid_opt`` (``KDVIDLoss``) is λ_S·L_distill, the
    VID negative log-likelihood of the teacher decoder's features at ``train.feature_taps.network_t`` (paths under
    ``decoder.``) given the student's at ``train.feature_taps.network_g``, through the trainable helper
    ``network_vid`` (``KDVIDRegressor``: the mean and the scale per tap; optimised with the student, saved as
    ``net_vid_<iter>.pth``, resumed, synchronised under DDP). The teacher runs under no_grad on GT, one forward per
    step (its encoder then its decoder); the student's checkpoint is a plain network that ``SRModel`` loads.

    Overrides ``check_teacher_inputs`` (the teacher takes GT, so its one view is GT; ``train.teacher_inputs`` is
    refused), ``check_scales``, ``probe_input`` (the teacher's probe has the GT size), ``init_training_settings``
    (adds ``vid_opt``), ``check_tapped_features`` and ``compute_losses`` (adds ``l_vid``).

    Example::

        model_type: KDPISRStudentModel
        network_g: {type: EDSR, num_feat: 64, num_block: 16, upscale: 4, res_scale: 1}
        network_t: {type: KDPISRTeacher, encoder: {type: KDPISREncoder, scale: 4},
                    decoder: {type: EDSR, num_feat: 256, num_block: 32, upscale: 4, res_scale: 0.1}}
        network_vid: {type: KDVIDRegressor, in_channels: [64], out_channels: [256], sharing: none}
        path:
          pretrain_network_t: experiments/pisr_stage1_edsr_x4/models/net_g_latest.pth
          param_key_t: params
          ignore_resume_networks: [network_t]
        train:
          feature_taps: {network_g: [conv_after_body], network_t: [decoder.conv_after_body]}
          pixel_opt: {type: L1Loss, loss_weight: 1.0}
          vid_opt: {type: KDVIDLoss, distribution: gaussian, loss_weight: !!float 1e-6}
    """

    single_teacher = True
    helper_networks = ('vid', )
    option_keys = {'train': {'vid_opt': ('KDVIDLoss', )}}

    def check_teacher_inputs(self):
        if self.opt['train'].get('teacher_inputs'):
            raise ValueError('train.teacher_inputs: KDPISRStudentModel always feeds its teacher the GT image (PISR\'s '
                             'privileged information); remove the key')
        return {'t': 'gt'}

    def check_scales(self):
        super().check_scales()
        check_pisr_teacher(self.opt, 'network_t', self.opt.get('scale', 1))

    def init_training_settings(self):
        train_opt = self.opt['train']
        if not train_opt.get('vid_opt') or 'network_vid' not in self.opt:
            raise ValueError('KDPISRStudentModel needs train.vid_opt (KDVIDLoss, lambda_S * L_distill) and network_vid '
                             '(KDVIDRegressor, its mean and scale per tap)')
        taps = train_opt.get('feature_taps') or {}
        if not taps.get('network_g') or not taps.get('network_t'):
            raise ValueError('KDPISRStudentModel needs train.feature_taps.network_g and .network_t: the student\'s '
                             'features and the teacher decoder\'s (paths under decoder.) that VID pairs')
        super().init_training_settings()  # its probe forward checks the taps (check_tapped_features)
        self.cri_vid = self.build_train_loss('vid_opt')

    def probe_input(self, name, image):
        """The teacher's probe image has the GT size (the LQ-size zero image scaled by ``scale``)."""
        return image if name == 'g' else F.interpolate(image, scale_factor=self.opt.get('scale', 1))

    def check_tapped_features(self, features):
        """Before the first step, on the probe forward: as many student as teacher taps, ``network_vid`` maps the
        student's tap channels to the teacher's, paired maps share their size."""
        if len(self.taps['g'].paths) != len(self.taps['t'].paths):
            raise ValueError(f'train.feature_taps.network_g = {self.taps["g"].paths} and .network_t = '
                             f'{self.taps["t"].paths} must pair the taps: one teacher tap per student tap')
        self.check_paired_taps(features, regressor=True, regressor_name='vid')

    def compute_losses(self, current_iter):
        losses = super().compute_losses(current_iter)
        means, scales = self.helpers['vid'](self.taps['g'].outputs())
        losses['l_vid'] = self.cri_vid(means, scales, self.taps['t'].outputs())
        return losses
