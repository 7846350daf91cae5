"""``train.py`` with test-only model types that also record what every rank holds, for the DDP and resume tests.

``KDRecording<Model>`` (one per distillation model of ``kd_models``, e.g. ``KDRecordingLogitsModel``) behaves like
``<Model>`` and writes to ``<experiments_root>``:

- ``rank<r>_init.pth``: the bare student and helpers of rank ``r`` when training starts (after the DDP broadcast);
- ``rank<r>_iter<i>.pth``: the same at every ``save`` (BasicSR saves on rank 0 only), plus ``seen_lq``, the sum of
  every LQ batch this rank trained on;
- ``resumed_rank<r>.pth``: right after ``resume_training``, the optimiser, scheduler, student, EMA student, helper
  and teacher states.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from basicsr_kd import cli  # noqa: E402
from basicsr_kd.registration import register_plugin  # noqa: E402
from basicsr.utils.registry import MODEL_REGISTRY  # noqa: E402
from kd_models.kd_base_model import KDBaseModel  # noqa: E402

register_plugin()


class Recording():
    """Mixin: record each rank's networks and resumed states next to the experiment's checkpoints."""

    def record(self, name, content):
        torch.save(content, os.path.join(self.opt['path']['experiments_root'], f'{name}_rank{self.opt["rank"]}.pth'))

    def networks(self):
        nets = {'g': self.net_g, **self.helpers}
        return {name: self.get_bare_model(net).state_dict() for name, net in nets.items()}

    def init_training_settings(self):
        super().init_training_settings()
        self.seen_lq = []
        self.record('init', self.networks())

    def optimize_parameters(self, current_iter):
        self.seen_lq.append(self.lq.sum().item())
        super().optimize_parameters(current_iter)

    def save(self, epoch, current_iter):
        super().save(epoch, current_iter)
        self.record(f'iter{current_iter}', {**self.networks(), 'seen_lq': list(self.seen_lq)})

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        self.record('resumed', {
            'optimizers': [o.state_dict() for o in self.optimizers],
            'schedulers': [s.state_dict() for s in self.schedulers],
            'networks': self.networks(),
            'ema': self.net_g_ema.state_dict() if hasattr(self, 'net_g_ema') else None,
            'teachers': {name: net.state_dict() for name, net in self.teachers.items()}
        })


for name, base in list(MODEL_REGISTRY):  # every distillation model of the plugin
    if isinstance(base, type) and issubclass(base, KDBaseModel) and base.__module__.startswith('kd_models.'):
        MODEL_REGISTRY.register(type(name.replace('KD', 'KDRecording', 1), (Recording, base), {}))

if __name__ == '__main__':
    cli.train()
