"""DFKD (Zhang et al., Data-Free Knowledge Distillation for Image Super-Resolution, CVPR 2021), as SLKD's Tab. II
applies it to restoration: the student learns from the teacher on a generator's synthetic inputs, no training image."""
from collections import OrderedDict

import torch
from basicsr.utils.registry import MODEL_REGISTRY

from .kd_base_model import PIXEL_LOSSES, KDBaseModel

# Every key of train.dfkd with its default; the comment says where the value comes from.
DFKD_DEFAULTS = {
    'student_steps': 50,  # k_S of Alg. 1: student steps per generator step (the authors' demo: --stu_step=50)
}
# Options of KDBaseModel that need training images or GT, which the data-free step never reads.
DATA_OPTIONS = ('pixel_opt', 'perceptual_opt', 'progressive_patches', 'teacher_cache')


@MODEL_REGISTRY.register()
class KDDFKDModel(KDBaseModel):
    """DFKD for same-size restoration: a generator G (``network_gen``) makes the inputs, no training image is used.

    Each iteration is one student step of Alg. 1 (G fixed): x = G(z) for a batch of z ~ N(0, I) (its size: the
    training batch's, ``datasets.train.batch_size_per_gpu``; its images are never read: the training set only drives
    the iterations), the teacher on x under no_grad, and the student minimises ``train.kd_opt`` = L_KD(S(x), T(x))
    (any pixel-style loss; the paper: L1, mean). After every ``train.dfkd.student_steps`` (k_S) iterations, the
    generator step (S and T fixed) on a fresh batch x = G(z): G minimises
    L_G = L_GEN + L_R, ``train.adversarial_opt`` (``KDDFKDAdversarialLoss``, −w_G·log(1 + D(S(x), T(x)))) plus
    ``train.reconstruction_opt`` (``KDDFKDReconstructionLoss``, w_R·D(A_k(T(x)), A_k(x)), optional: L_GEN alone is the
    paper's ablation without L_R), with its own optimiser ``train.optim_gen`` (``own_optimizer_helpers``), stepped by
    the scheduler of ``train.scheduler`` like the student's. Gradient reaches G's weights only: through the frozen
    teacher (``run_frozen(grad_to_input=True)``) and through the bare student (its weights take no gradient and its DDP
    hooks do not fire; ``backward(inputs=G's parameters)``). G is DDP-synchronised, saved as ``net_gen_<iter>.pth`` and
    resumed with its optimiser. Logged: ``l_kd`` every iteration, ``l_gen`` and ``l_rec`` at the generator steps.

    The paper's progressive distillation (students S_1 ⊂ ... ⊂ S_n growing by blocks, each inheriting the previous
    one's weights) is not built: the authors' released demo runs one stage (``--inc_num=1``), and the restoration
    students here have no block ladder whose checkpoints load into the final student.

    Refused before the first step, naming the key: ``scale`` ≠ 1 (the SR form of L_R is not built); a missing
    ``network_gen``, ``train.optim_gen``, ``train.kd_opt`` or ``train.adversarial_opt``; the options that read
    training images or GT (``DATA_OPTIONS``, ``train.teacher_inputs: gt``); an unknown key of ``train.dfkd``; a
    generator image the student cannot take or whose side ``reconstruction_opt.downscale`` does not divide.
    Overrides ``init_training_settings``, ``forward_networks`` (the student's input is G(z)), ``compute_losses``
    (``l_kd``) and ``after_step`` (the generator step); the rest is KDBaseModel's.

    Example::

        model_type: KDDFKDModel
        network_gen: {type: KDDFKDGenerator, img_size: 128, latent_dim: 256, out_channels: 3, num_feat: 128}
        train:
          optim_gen: {type: Adam, lr: 1.0e-5}
          kd_opt: {type: L1Loss, loss_weight: 1.0}
          adversarial_opt: {type: KDDFKDAdversarialLoss, loss_weight: 1.0}
          reconstruction_opt: {type: KDDFKDReconstructionLoss, downscale: 4, loss_weight: 1.0}
          dfkd: {student_steps: 50}
    """

    helper_networks = ('gen', )
    own_optimizer_helpers = ('gen', )
    single_teacher = True
    option_keys = {'train': {'kd_opt': PIXEL_LOSSES, 'adversarial_opt': ('KDDFKDAdversarialLoss', ),
                             'reconstruction_opt': ('KDDFKDReconstructionLoss', ),
                             'dfkd': {key: None for key in DFKD_DEFAULTS}}}

    def init_training_settings(self):
        self.check_dfkd_options()
        super().init_training_settings()
        self.cri_kd = self.build_train_loss('kd_opt')
        self.cri_adv = self.build_train_loss('adversarial_opt')
        self.cri_rec = self.build_train_loss('reconstruction_opt')
        self.check_generated_images()

    def check_dfkd_options(self):
        """The options DFKD needs and those it cannot honour, before any network is built."""
        train_opt = self.opt['train']
        if self.opt.get('scale', 1) != 1:
            raise ValueError(f'scale = {self.opt["scale"]}: KDDFKDModel builds DFKD\'s same-size restoration form '
                             '(L_R compares the teacher\'s output and the generated input at one size); the SR form '
                             '(L_R through bicubic downsampling by the scale) is not built')
        if 'network_gen' not in self.opt:
            raise ValueError('KDDFKDModel needs network_gen, the generator of the synthetic inputs (e.g. {type: '
                             'KDDFKDGenerator, img_size: 128})')
        for key in ('optim_gen', 'kd_opt', 'adversarial_opt'):
            if not train_opt.get(key):
                raise ValueError(f'KDDFKDModel needs train.{key} (README, "DFKD")')
        for key in DATA_OPTIONS:
            if train_opt.get(key):
                raise ValueError(f'train.{key}: DFKD is data-free, its training step reads no training image and no '
                                 'GT; remove this key')
        if 'gt' in (train_opt.get('teacher_inputs') or {}).values():
            raise ValueError('train.teacher_inputs: DFKD\'s teacher sees the generated input only (no GT in the '
                             'data-free step); remove this key')
        dfkd = dict(train_opt.get('dfkd') or {})
        unknown = sorted(set(dfkd) - set(DFKD_DEFAULTS))
        if unknown:
            raise ValueError(f'train.dfkd.{unknown[0]}: unknown option; the known ones are {list(DFKD_DEFAULTS)}')
        steps = {**DFKD_DEFAULTS, **dfkd}['student_steps']
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f'train.dfkd.student_steps = {steps!r}: the student steps per generator step (k_S of '
                             'Alg. 1) must be a positive integer')
        self.student_steps = steps

    def check_generated_images(self):
        """One generated image through the student (eval, no_grad) before the first step: the generator must make
        images the student takes, and L_R's blocks must tile them."""
        generator = self.get_bare_model(self.helpers['gen'])
        student = self.get_bare_model(self.net_g)
        training = student.training
        student.eval()
        try:
            with torch.no_grad():
                image = generator(self.latents(1))
                output = student(image)
        except RuntimeError as error:
            raise ValueError(f'network_gen = {self.opt["network_gen"]} makes images network_g cannot take '
                             f'({str(error).splitlines()[0]}): check network_gen.out_channels and img_size') from None
        finally:
            student.train(training)
        if output.shape != image.shape:
            raise ValueError(f'network_g maps the generated {tuple(image.shape)} to {tuple(output.shape)}: DFKD here '
                             'distils a same-size restoration network')
        if self.cri_rec is not None and image.shape[-1] % self.cri_rec.downscale:
            raise ValueError(f'train.reconstruction_opt.downscale = {self.cri_rec.downscale} does not divide '
                             f'network_gen.img_size = {image.shape[-1]}')

    # ----------------------------------------------------------------------------------------------- steps
    def latents(self, batch):
        """z ~ N(0, I): (batch, latent_dim) from torch's RNG (BasicSR seeds each rank differently), in the
        generator's dtype."""
        generator = self.get_bare_model(self.helpers['gen'])
        dtype = next(generator.parameters()).dtype
        return torch.randn(batch, generator.latent_dim, device=self.device, dtype=dtype)

    def forward_networks(self):
        """The student step's inputs: x = G(z) under no_grad, one per sample of the fed batch (whose images are not
        read), then the student on x and the teacher on x (KDBaseModel)."""
        with torch.no_grad():
            self.lq = self.get_bare_model(self.helpers['gen'])(self.latents(self.lq.shape[0]))
        super().forward_networks()

    def compute_losses(self, current_iter):
        losses = super().compute_losses(current_iter)  # nothing: pixel_opt and perceptual_opt are refused
        losses['l_kd'] = self.cri_kd(self.output, self.teacher_outputs['t'])
        return losses

    def after_step(self, current_iter):
        """The generator step of Alg. 1 after every k_S student steps; its losses join the logged ones."""
        if current_iter % self.student_steps:
            return
        self.log_dict.update(self.reduce_loss_dict(self.generator_step()))

    def generator_step(self):
        """One step of G on L_GEN (+ L_R) with S and T fixed, on a fresh batch of z. Returns the loss terms."""
        optimizer = self.helper_optimizers['gen']
        optimizer.zero_grad()
        generated = self.helpers['gen'](self.latents(self.lq.shape[0]))  # through DDP: G's gradients are averaged
        restored, _ = self.run_frozen('t', generated, grad_to_input=True)
        student = self.get_bare_model(self.net_g)(generated)  # bare: the student's DDP hooks must not fire
        losses = OrderedDict(l_gen=self.cri_adv(student, restored))
        if self.cri_rec is not None:
            losses['l_rec'] = self.cri_rec(restored, generated)
        parameters = [p for p in self.helpers['gen'].parameters() if p.requires_grad]
        sum(losses.values()).backward(inputs=parameters)
        optimizer.step()
        return losses
