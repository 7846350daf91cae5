"""DCKD (dckd.txt, AAAI 2025): dynamic contrastive regularisation and the distribution mapping module; DCKD* adds
DUKD's label-consistency term (KDLogitsModel's ``label_consistency_opt``)."""
import torch
from basicsr.utils.registry import MODEL_REGISTRY

from .kd_degradations import KDDegradations
from .kd_iteration_schedule import IterationSchedule
from .kd_logits_model import KDLogitsModel

HISTORY_SOURCES = ('ema', 'student')
# Every key of train.history with its default; the comment says where the value comes from.
HISTORY_DEFAULTS = {
    'alpha': 0.1,  # α of Eq. 6 (paper App., "attenuation rate")
    'source': 'ema',  # θ_src of Eq. 6: the released code averages the EMA student into the history model
    'update_schedule': [[100000, 1000], [200000, 2000], [300000, 3000]],  # (until iteration, s): released code
}


class HistorySchedule(IterationSchedule):
    """The update step s of Eq. 6 as (until iteration, step) rows; past the last ``until`` the last step holds
    forever (the released list has no entry there and fails). The history model is updated after iteration t when
    t % s == 0.

    Each row must update the history model while it holds: its s may not exceed its ``until`` (a larger s looks like
    swapped columns, e.g. ``[[1000, 100000]]``), nor the iterations of the run it holds for (from the previous
    ``until`` to its own, the last row to ``total_iter``; any s consecutive iterations contain a multiple of s). Rows
    after the end of the run are not checked against it.

    Args:
        rows (list[list[int]]): ``[[until iteration, s], ...]``.
        total_iter (int): The iterations of the run (``train.total_iter``).
        option (str): The option key, for errors.
    """

    def __init__(self, rows, total_iter, option='train.history.update_schedule'):
        super().__init__(rows, option, names=('step',), example='[[100000, 1000], [200000, 2000], [300000, 3000]]')
        start = 1
        for index, (until, step) in enumerate(self.rows):
            end = total_iter if index == len(self.rows) - 1 else min(until, total_iter)
            if step > until:
                raise ValueError(f'{option} = {rows!r}: the row [{until}, {step}] has a step s = {step} larger than '
                                 f'its until iteration {until}; rows are [until iteration, s]: are the columns '
                                 'swapped?')
            if start <= total_iter and step > end - start + 1:
                when = 'never be updated in this run' if start == 1 else 'not be updated while the row holds'
                raise ValueError(f'{option} = {rows!r}: the row [{until}, {step}] holds for iterations {start}..{end} '
                                 f'of this run (train.total_iter = {total_iter}), fewer than its step s = {step}, so '
                                 f'the history model (Eq. 6) would {when}: use a smaller s')
            start = until + 1

    def step(self, iteration):
        """The update step s in force at ``iteration``."""
        return self.values(iteration)[0]

    def updates_at(self, iteration):
        return iteration % self.step(iteration) == 0


@MODEL_REGISTRY.register()
class KDDCKDModel(KDLogitsModel):
    """DCKD: L = L_rec + L_kd + λ_dcl·L_dcl + λ_ce·L_ce (dckd.txt Eq. 10), and DCKD* with label consistency.

    - L_rec, L_kd: ``train.pixel_opt`` and ``train.kd_opt`` (L1 to GT and to the teacher, Eq. 2-3).
    - L_dcl (Eq. 5, ``train.dcl_opt``, a ``KDDynamicContrastiveLoss``): the student output (anchor), the teacher
      output (positive) and N negatives, the history model F_his on N degraded copies of the LQ input (Eq. 4,
      ``train.negatives``, see ``KDDegradations``), compared on the taps of the frozen ``network_vqgan``
      (``KDVQGANEncoder.tap_names``).
    - L_ce (Eq. 8-9, ``train.ce_opt``, a ``KDCodebookCrossEntropyLoss``): the codebook distributions of the
      student's and the teacher's z = quant_conv(encoder(x)).
    - The history model (``frozen_copies``: ``his``, Eq. 6): a frozen copy of the student, initialised from its
      source, updated θ_his ← α·θ_his + (1 − α)·θ_src after every iteration t with t % s == 0 (``train.history``:
      ``alpha`` in (0, 1), ``source: ema | student``, ``update_schedule``, each row updating it at least once, see
      ``HistorySchedule``). Its weights and the iteration it was last updated after are in every training state;
      ``history_age``, logged with the losses (not optimised), is the current iteration minus that one: how old the
      history model that gave this step's negatives is (from 1 to the step s in force).
    - DCKD*: ``train.label_consistency_opt`` (KDLogitsModel).

    Either of ``dcl_opt`` and ``ce_opt`` may be left out (the ablations of Tab. 5); one of them is needed. Cost per
    step, besides the student step and the teacher forward: F_his on the N·B degraded inputs in one no_grad forward;
    the VQGAN encoder on the positive and the negatives in one no_grad forward ((N+1)·B images, negative-major) and on
    the student output once with gradient to it (its taps and its z serve both losses).

    Example::

        model_type: KDDCKDModel
        network_vqgan: {type: KDVQGANEncoder, input_range: '[-1,1]'}
        path: {pretrain_network_vqgan: experiments/pretrained_models/vqgan_imagenet_f16_1024.pth,
               ignore_resume_networks: [network_t, network_vqgan]}
        train:
          kd_opt: {type: L1Loss, loss_weight: 1.0}
          dcl_opt: {type: KDDynamicContrastiveLoss, loss_weight: 0.1}
          ce_opt: {type: KDCodebookCrossEntropyLoss, loss_weight: 0.001}
          negatives: {num_negatives: 5, kind: noise}
          history: {alpha: 0.1, source: ema, update_schedule: [[100000, 1000], [200000, 2000], [300000, 3000]]}
    """

    frozen_networks = ('vqgan', )
    frozen_copies = ('his', )
    option_keys = {'train': {'dcl_opt': ('KDDynamicContrastiveLoss', ), 'ce_opt': ('KDCodebookCrossEntropyLoss', ),
                             'negatives': None,  # KDDegradations checks its keys
                             'history': {'alpha': None, 'source': None, 'update_schedule': None}}}

    def init_training_settings(self):
        train_opt = self.opt['train']
        history = dict(train_opt.get('history') or {})  # checked first: a wrong history fails before any build
        unknown = sorted(set(history) - set(HISTORY_DEFAULTS))
        if unknown:
            raise ValueError(f'train.history.{unknown[0]}: unknown option; the known ones are {list(HISTORY_DEFAULTS)}')
        history = {**HISTORY_DEFAULTS, **history}
        if history['source'] not in HISTORY_SOURCES:
            raise ValueError(f'train.history.source = {history["source"]!r}: use one of {list(HISTORY_SOURCES)}')
        if history['source'] == 'ema' and not train_opt.get('ema_decay', 0) > 0:
            raise ValueError('train.history.source = ema averages the EMA student into the history model, but '
                             f'train.ema_decay = {train_opt.get("ema_decay", 0)}: set ema_decay > 0 (0.999 in DCKD) or '
                             'use train.history.source: student')
        alpha = history['alpha']
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise ValueError(f'train.history.alpha = {alpha!r}: must be in (0, 1) (Eq. 6 keeps α of the history '
                             'model: 0 makes it a copy of its source, 1 never changes it; DCKD: 0.1)')
        self.history_alpha, self.history_source = float(alpha), history['source']
        self.history_schedule = HistorySchedule(history['update_schedule'], int(train_opt['total_iter']))
        self.history_updated_at = 0  # the iteration after which Eq. 6 last ran; 0: the copy of iteration 0
        if not train_opt.get('dcl_opt') and not train_opt.get('ce_opt'):
            raise ValueError('KDDCKDModel needs train.dcl_opt (Eq. 5) or train.ce_opt (Eq. 9), or both; without '
                             'either it is Logits KD (model_type: KDLogitsModel)')
        if train_opt.get('negatives') and not train_opt.get('dcl_opt'):
            raise ValueError('train.negatives configures the negatives of train.dcl_opt, which is not set')
        super().init_training_settings()

        self.vqgan = self.frozen['vqgan']
        if not hasattr(self.vqgan, 'code_distances') or not hasattr(self.vqgan, 'tap_names'):
            raise ValueError(f'network_vqgan.type = {self.opt["network_vqgan"]["type"]}: DCKD needs a KDVQGANEncoder')
        if 'vqgan' in self.taps:
            raise ValueError('train.feature_taps.network_vqgan: DCKD uses the VQGAN\'s own taps (its tap_names); '
                             'remove this key')
        self.cri_dcl = self.build_train_loss('dcl_opt')
        self.cri_ce = self.build_train_loss('ce_opt')
        self.degradations = None
        if self.cri_dcl is not None:
            layers = len(getattr(self.cri_dcl, 'layer_weights', self.vqgan.tap_names))
            if layers != len(self.vqgan.tap_names):
                raise ValueError(f'train.dcl_opt.layer_weights has {layers} weights but network_vqgan has '
                                 f'{len(self.vqgan.tap_names)} feature taps {self.vqgan.tap_names}')
            self.degradations = KDDegradations(train_opt.get('negatives'), option_path='train.negatives')
        if self.history_source == 'ema':  # Eq. 6's source at iteration 0 (it differs from the student only when
            self.frozen['his'].load_state_dict(self.net_g_ema.state_dict())  # pretrain_network_g has params_ema)

    # ----------------------------------------------------------------------------------------------- step
    def encode(self, images, grad_to_input=False):
        """The VQGAN encoder on ``images``: (z, [the five tapped features]), float32, in the frozen networks'
        context (no_grad, or gradient to ``images`` only)."""
        with self.frozen_context(grad_to_input):
            z, taps = self.vqgan(images, return_taps=True)
        return z.float(), [feature.float() for feature in taps]

    def negative_images(self):
        """F_his(D_1(LQ)), ..., F_his(D_N(LQ)) (Eq. 4): one batched no_grad forward of the history model, as
        (N·B, C, H, W), negative-major."""
        degraded = self.degradations(self.lq)
        with self.frozen_context():
            return self.frozen['his'](degraded.flatten(0, 1)).float()

    def compute_losses(self, current_iter):
        losses = super().compute_losses(current_iter)
        positive = self.teacher_outputs['t']
        batch = positive.shape[0]
        if self.cri_dcl is not None:
            negatives = self.negative_images()
            z_pos, taps_pos = self.encode(torch.cat([positive, negatives]))  # positive first, then negative-major
            parts = [feature.unflatten(0, (-1, batch)) for feature in taps_pos]
            z_pos = z_pos[:batch]
        else:
            z_pos, _ = self.encode(positive)
        z_anc, taps_anc = self.encode(self.output, grad_to_input=True)  # the one encoder pass with gradient
        if self.cri_dcl is not None:
            losses['l_dcl'] = self.cri_dcl(taps_anc, [part[0] for part in parts], [part[1:] for part in parts])
            self.diagnostics['history_age'] = torch.tensor(float(current_iter - self.history_updated_at),
                                                           device=self.device)
        if self.cri_ce is not None:
            losses['l_ce'] = self.cri_ce(self.vqgan.code_distances(z_anc), self.vqgan.code_distances(z_pos))
        return losses

    def floor_forwards(self):
        """The teacher on its views, F_his on the N degraded copies, the VQGAN on the positive and the negatives
        and on the student output."""
        forwards = super().floor_forwards()
        count = 1
        if self.cri_dcl is not None:
            forwards.append(('his', self.degradations(self.lq).flatten(0, 1)))
            count += self.degradations.num_negatives
        output = self.output.detach()
        return forwards + [('vqgan', torch.cat([output] * count)), ('vqgan', output)]

    # ----------------------------------------------------------------------------------------------- history
    def history_source_network(self):
        return self.net_g_ema if self.history_source == 'ema' else self.get_bare_model(self.net_g)

    @torch.no_grad()
    def after_step(self, current_iter):
        """Eq. 6 after the iterations the schedule names: θ_his ← α·θ_his + (1 − α)·θ_src on the parameters; the
        buffers (constant in every student here: masks, indices, the mean) are copied."""
        if self.cri_dcl is None or not self.history_schedule.updates_at(current_iter):
            return
        history, source = self.frozen['his'], self.history_source_network()
        sources = dict(source.named_parameters())
        for name, param in history.named_parameters():
            param.mul_(self.history_alpha).add_(sources[name].detach(), alpha=1 - self.history_alpha)
        sources = dict(source.named_buffers())
        for name, buffer in history.named_buffers():
            buffer.copy_(sources[name])
        self.history_updated_at = current_iter

    def training_state(self):
        return {'history': {k: v.detach().cpu().clone() for k, v in self.frozen['his'].state_dict().items()},
                'history_updated_at': self.history_updated_at}

    def load_training_state(self, state):
        missing = [key for key in ('history', 'history_updated_at') if key not in state]
        if missing:
            raise ValueError(f'The training state has no DCKD {" or ".join(missing)}: it was not written by this '
                             'version of KDDCKDModel')
        self.frozen['his'].load_state_dict(state['history'])
        self.history_updated_at = state['history_updated_at']
