"""Logits KD: the output-distillation baseline every paper of basicsr-kd compares against."""
import torch
from basicsr.utils.registry import MODEL_REGISTRY

from .kd_base_model import PIXEL_LOSSES, KDBaseModel
from .kd_data_upcycling import (UPCYCLING_KEYS, DataUpcycling, draw_zoom_in_tiles, zoom_in_tiles, zoom_out,
                                zoom_out_source)
from .kd_label_consistency import apply_label_consistency_ops, draw_label_consistency_ops, undo_label_consistency_ops


@MODEL_REGISTRY.register()
class KDLogitsModel(KDBaseModel):
    """Logits KD for restoration: L = w_pix·L1(S, GT) + w_kd·L1(S, T), the Logits KD rows of the
    papers' tables.

    The two weights are the ``loss_weight`` of ``train.pixel_opt`` and ``train.kd_opt`` (both 1 by default); both
    take any pixel-style loss (L1Loss, MSELoss, CharbonnierLoss), and so does ``label_consistency_opt``.
    Overrides ``init_training_settings`` (adds ``kd_opt``), ``compute_losses`` (adds ``l_kd``), and for the two terms
    below ``teacher_views``, ``forward_networks`` and ``floor_forwards``; the rest is KDBaseModel's.

    Label consistency (DUKD's term, used by DCKD*; every subclass with one teacher has it): with
    ``train.label_consistency_opt`` set, the teacher also sees a copy of its input transformed per sample (colour
    inversion, vertical and horizontal flip, transpose, each with probability ``prob``, 0.5 by default), in the
    same batched forward as its clean input (``teacher_views``); its output for that copy, transformed back in
    reverse order, is the target of the loss ``l_lc`` = the configured loss (L1, weight 1 in DUKD) to the
    student's output. ``prob`` is read from the dict; the rest builds the loss::

        label_consistency_opt: {type: L1Loss, loss_weight: 1.0, prob: 0.5}

    Data upcycling (DUKD's term, ``KDDUKDModel``; also in DCKD*): with ``train.upcycling_opt`` set (SR, scale s > 1),
    student and teacher also see ``zoom_in_tiles`` aligned LR-size tiles of each GT patch (zoom-in) and, with
    ``zoom_out``, the LR patch downscaled by 1/s (MATLAB bicubic); the teacher's outputs on them are the targets of
    the configured loss (``l_up_in``, ``l_up_out``), and the zoomed-out student output also takes ``pixel_opt`` to the
    LR patch (``l_up_out_pix``). With ``prob`` > 0 the student's zoom-in inputs are transformed by the
    label-consistency operations (each with probability ``prob``), its outputs transformed back before the loss
    (DUKD's label consistency: F⁻¹(S(F(x))) against T(x)). Student on LQ and zoom-in in one forward, the teacher on
    its views and the zoom-in tiles in one no_grad forward; the zoom-out (another size) takes one more of each. Not
    with student or teacher feature taps, nor with ``train.teacher_cache``::

        upcycling_opt: {type: L1Loss, loss_weight: 1.0, zoom_in_tiles: 1, zoom_out: false, prob: 0.3}

    Example::

        model_type: KDLogitsModel
        network_g: {type: EDSR, num_feat: 64, num_block: 16, upscale: 4, res_scale: 1}
        network_t: {type: EDSR, num_feat: 256, num_block: 32, upscale: 4, res_scale: 0.1}
        path:
          pretrain_network_t: experiments/pretrained_models/EDSR_Lx4_f256b32_DIV2K_official-76ee1c8f.pth
          ignore_resume_networks: [network_t]
        train:
          pixel_opt: {type: L1Loss, loss_weight: 1.0}
          kd_opt: {type: L1Loss, loss_weight: 1.0}
    """

    requires_kd_opt = True
    single_teacher = True
    # label_consistency_opt: a loss dict + prob; upcycling_opt: a loss dict + UPCYCLING_KEYS
    option_keys = {'train': {'kd_opt': PIXEL_LOSSES, 'label_consistency_opt': None, 'upcycling_opt': None}}

    @classmethod
    def loss_kinds(cls):
        """The declared kinds, and those of ``label_consistency_opt`` and ``upcycling_opt`` (loss dicts with keys of
        their own)."""
        return {**super().loss_kinds(), 'label_consistency_opt': PIXEL_LOSSES, 'upcycling_opt': PIXEL_LOSSES}

    def init_training_settings(self):
        super().init_training_settings()
        kd_opt = self.opt['train'].get('kd_opt')
        if self.requires_kd_opt and not kd_opt:
            raise ValueError(f'{type(self).__name__} needs train.kd_opt, the loss between student and teacher outputs')
        self.cri_kd = self.build_train_loss('kd_opt')
        self.cri_lc, self.lc_prob, self.lc_ops = None, 0.5, None
        lc_opt = dict(self.opt['train'].get('label_consistency_opt') or {})
        if lc_opt:
            prob = lc_opt.pop('prob', 0.5)
            if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
                raise ValueError(f'train.label_consistency_opt.prob = {prob!r}: must be a probability in [0, 1]')
            try:
                self.cri_lc = self.build_train_loss('label_consistency_opt', lc_opt)
                self.lc_prob = float(prob)
            except TypeError as error:  # an unknown key: the loss class refuses it
                raise ValueError(f'train.label_consistency_opt: {error} (prob is its only own key)') from None
        self.upcycling, self.cri_up = None, None
        if self.opt['train'].get('upcycling_opt'):
            self.upcycling = self.check_upcycling()
            try:
                self.cri_up = self.build_train_loss('upcycling_opt', self.upcycling.loss_opt)
            except TypeError as error:  # an unknown key: the loss class refuses it
                raise ValueError(f'train.upcycling_opt: {error} (its own keys: {", ".join(UPCYCLING_KEYS)})') from None

    def check_upcycling(self):
        """``train.upcycling_opt``'s settings, refused where the upcycled forwards cannot run."""
        upcycling = DataUpcycling(self.opt['train']['upcycling_opt'], self.opt.get('scale', 1))
        tapped = [f'network_{name}' for name in ('g', *self.teachers) if name in self.taps]
        if tapped:
            raise ValueError(f'train.upcycling_opt cannot be combined with train.feature_taps of {tapped}: the taps '
                             'would hold the upcycled inputs\' features too')
        if self.teacher_cache:
            raise ValueError('train.teacher_cache cannot serve train.upcycling_opt: it needs teacher forwards on the '
                             'upcycled inputs at every step')
        return upcycling

    def forward_networks(self):
        """With ``upcycling_opt``: the upcycled inputs of the step, the student on LQ and the (transformed) zoom-in
        tiles in one forward, on the zoom-out in another, then the teacher (``forward_teachers``, the zoom-in tiles
        among its views) and, on the zoom-out, once more under no_grad."""
        if self.upcycling is None:
            return super().forward_networks()
        up, batch = self.upcycling, self.lq.shape[0]
        self.zoom_in_input = zoom_in_tiles(self.gt, draw_zoom_in_tiles(up.scale, up.zoom_in_tiles), up.scale)
        self.up_ops = draw_label_consistency_ops(self.zoom_in_input, up.prob)
        outputs = self.net_g(torch.cat([self.lq, apply_label_consistency_ops(self.zoom_in_input, self.up_ops)]))
        self.output = outputs[:batch]
        self.zoom_in_output = undo_label_consistency_ops(outputs[batch:], self.up_ops)
        if up.zoom_out:
            self.zoom_out_input = zoom_out(self.lq, up.scale)
            self.zoom_out_output = self.net_g(self.zoom_out_input)
        self.teacher_outputs = self.forward_teachers()
        if up.zoom_out:
            self.zoom_out_target = self.run_frozen('t', self.zoom_out_input)[0]

    def teacher_views(self, name):
        """The teacher's input and, with label consistency, a randomly transformed copy of it (one forward)."""
        views = super().teacher_views(name)
        if self.cri_lc is not None:
            self.lc_ops = draw_label_consistency_ops(views[0], self.lc_prob)
            views = [views[0], apply_label_consistency_ops(views[0], self.lc_ops)]
        if self.upcycling is not None and self.upcycling.zoom_in_tiles:
            views = [*views, self.zoom_in_input]  # the zoom-in tiles have the LQ input's size
        return views

    def frozen_target(self, lq):
        """The teacher's output: what ``train.teacher_cache`` stores."""
        return self.run_frozen('t', lq)[0]

    def compute_losses(self, current_iter):
        losses = super().compute_losses(current_iter)
        if self.cri_kd is not None:
            losses['l_kd'] = self.cri_kd(self.output, self.teacher_outputs['t'])
        if self.cri_lc is not None:
            target = undo_label_consistency_ops(self.teacher_view_outputs['t'][1], self.lc_ops)
            losses['l_lc'] = self.cri_lc(self.output, target)
        if self.upcycling is not None:
            if self.upcycling.zoom_in_tiles:
                losses['l_up_in'] = self.cri_up(self.zoom_in_output, self.teacher_view_outputs['t'][-1])
            if self.upcycling.zoom_out:
                losses['l_up_out'] = self.cri_up(self.zoom_out_output, self.zoom_out_target)
                if self.cri_pix is not None:
                    losses['l_up_out_pix'] = self.cri_pix(self.zoom_out_output,
                                                          zoom_out_source(self.lq, self.upcycling.scale))
        return losses

    def floor_forwards(self):
        """The teacher on its views (the zoom-in tiles among them) and on the zoom-out."""
        forwards = super().floor_forwards()
        if self.upcycling is not None and self.upcycling.zoom_out:
            forwards.append(('t', self.zoom_out_input))
        return forwards
