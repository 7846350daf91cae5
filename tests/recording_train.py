"""``train.py`` with test model types that also record what every rank holds, for the DDP and resume tests.

``KDRecording<Model>`` saves, besides the usual checkpoints, each rank's bare student and helpers to
``<experiments_root>/rank<r>_iter<i>.pth``, and after resuming the optimiser, scheduler and helper states it loaded to
``<experiments_root>/resumed_rank<r>.pth``.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kd_models import cli  # noqa: E402  (registers the plugin)
from basicsr.utils.registry import MODEL_REGISTRY  # noqa: E402
from kd_models.kd_feature_model import KDFeatureModel  # noqa: E402
from kd_models.kd_logits_model import KDLogitsModel  # noqa: E402


class Recording():

    def record(self, name, content):
        torch.save(content, os.path.join(self.opt['path']['experiments_root'], f'{name}.pth'))

    def save(self, epoch, current_iter):
        super().save(epoch, current_iter)
        nets = {'g': self.net_g, **self.helpers}
        self.record(f'rank{self.opt["rank"]}_iter{current_iter}',
                    {name: self.get_bare_model(net).state_dict() for name, net in nets.items()})

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        self.record(f'resumed_rank{self.opt["rank"]}', {
            'optimizers': [o.state_dict() for o in self.optimizers],
            'schedulers': [s.state_dict() for s in self.schedulers],
            'helpers': {name: self.get_bare_model(net).state_dict() for name, net in self.helpers.items()}
        })


for base in (KDLogitsModel, KDFeatureModel):
    MODEL_REGISTRY.register(type(base.__name__.replace('KD', 'KDRecording'), (Recording, base), {}))

if __name__ == '__main__':
    cli.train()
