"""MTKD (Jiang et al., MTKD: Multi-Teacher Knowledge Distillation for Image Super-Resolution, ECCV 2024): stage 1
trains the knowledge aggregator on the outputs of N frozen teachers, stage 2 distils its output into a student."""
import inspect
from collections import OrderedDict

import torch
from basicsr.metrics import calculate_metric
from basicsr.utils import get_root_logger, tensor2img
from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY

from .kd_base_model import PIXEL_LOSSES, KDBaseModel, option_teacher_names, weights_digest
from .kd_eval_model import forward_padded

TEACHER_LIST_KEY = 'teachers'  # the entry of the stage-1 checkpoint that holds the teacher list
NETWORK_KEY = 'network'  # the entry that holds the aggregator's network options (stage 1's network_g)


def teacher_list(names, sources):
    """The teacher list of an aggregator: for each teacher, in the order its output enters the aggregator, its
    name, network options (type and constructor options), weight file, parameter key and weights digest.

    Args:
        names (list[str]): Teacher names (``t1`` .. ``tN``) in the configured order.
        sources (dict): ``KDBaseModel.frozen_sources``: {name: {network, file, param_key, digest}}.
    """
    return [{'name': name, **{key: sources[name][key] for key in ('network', 'file', 'param_key', 'digest')}}
            for name in names]


def teacher_identity(teachers):
    """What must agree between two teacher lists: position, network options and weights (not the file paths,
    which change when the weights are copied elsewhere)."""
    return [(teacher['network'], teacher['digest']) for teacher in teachers]


def describe_teachers(teachers):
    """One line per teacher of a teacher list, for error messages and logs."""
    return '\n'.join(f'    {i}. network_{t["name"]} = {t["network"]}, weights {t["digest"][:12]} ({t["file"]})'
                     for i, t in enumerate(teachers, 1))


def network_arguments(network_opt):
    """A network's options with the defaults of its constructor filled in: ``{type: X}`` and ``{type: X, arg:
    default}`` build the same network."""
    parameters = inspect.signature(ARCH_REGISTRY.get(network_opt['type'])).parameters.values()
    return {**{p.name: p.default for p in parameters if p.default is not p.empty}, **network_opt}


def padded_teacher_outputs(model, lq):
    """Each teacher of ``model`` on the whole LQ image ``lq`` (padded to its window size, if it has one), float32,
    in order, in the frozen networks' context."""
    with model.frozen_context():
        return [forward_padded(teacher, lq, model.opt[f'network_{name}'].get('window_size') or 1,
                               model.opt['scale']).float() for name, teacher in model.teachers.items()]


def check_num_teachers(aggregator, option, teachers):
    """The aggregator's input channels must be the outputs of the configured teachers."""
    expected = aggregator.in_channels // 3
    if expected != len(teachers):
        raise ValueError(f'{option}.num_teachers = {expected} but the options define {len(teachers)} teachers '
                         f'({["network_" + name for name in teachers]}): the aggregator takes their outputs, '
                         'concatenated in order')


@MODEL_REGISTRY.register()
class KDMTKDAggregationModel(KDBaseModel):
    """MTKD stage 1, knowledge aggregation (mtkd.txt Sec. 3.1, Eq. 1): the N frozen teachers ``network_t1`` ..
    ``network_tN`` super-resolve the LQ batch (under no_grad); their outputs, concatenated in that order, are the
    input of the trained aggregator ``network_g`` (``KDMTKDAggregator``), whose output I_MT is trained with
    ``train.pixel_opt`` (L1) to GT: L_KA = ||I_GT - I_MT||_1.

    The aggregator is ``network_g``, so BasicSR trains, saves, validates and resumes it like a student. Its
    checkpoint ``net_g_<iter>.pth`` also carries the teacher list (``teachers``: name, network options, weight
    file, parameter key and weights digest of each teacher, in order) and the aggregator's own network options
    (``network``: its ``network_g``), which stage 2 (:class:`KDMTKDModel`) compares with its teachers and its
    ``network_agg``. Validation reports the aggregator's metrics (as BasicSR does, with best-so-far)
    and, on the same images, each teacher's (``self.teacher_metric_results``; TensorBoard
    ``metrics/<set>/<metric>_<teacher>``).

    Example::

        model_type: KDMTKDAggregationModel
        network_g: {type: KDMTKDAggregator, num_teachers: 3, scale: 4, embed_dim: 24, num_blocks: 4, num_layers: 2}
        network_t1: {type: EDSR, num_feat: 256, num_block: 32, upscale: 4, res_scale: 0.1}
        network_t2: {type: RCAN, num_group: 10, num_block: 20, upscale: 4}
        network_t3: {type: SwinIR, upscale: 4, embed_dim: 180, depths: [6, 6, 6, 6, 6, 6], ...}
        path:
          pretrain_network_t1: experiments/pretrained_models/EDSR_Lx4_f256b32_DIV2K_official-76ee1c8f.pth
          ...
          ignore_resume_networks: [network_t1, network_t2, network_t3]
        train:
          pixel_opt: {type: L1Loss, loss_weight: 1.0}   # Eq. 1
    """

    not_for_testing = ('the aggregator runs on its teachers\' outputs, and the teachers are built for training '
                       'only; its validation during training (val:) reports its metrics beside each teacher\'s. '
                       'Evaluate a stage-2 student with model_type: KDEvalModel (options/test/test_mtkd_*.yml)')

    def init_training_settings(self):
        super().init_training_settings()
        check_num_teachers(self.get_bare_model(self.net_g), 'network_g', self.teachers)

    def forward_networks(self):
        """The teachers (one no_grad block), then the aggregator on their outputs, with gradient."""
        self.teacher_outputs = self.forward_teachers()
        self.output = self.net_g(torch.cat(list(self.teacher_outputs.values()), dim=1))

    def checkpoint_extras(self, net_label):
        if net_label != 'net_g':
            return {}
        return {TEACHER_LIST_KEY: teacher_list(list(self.teachers), self.frozen_sources),
                NETWORK_KEY: dict(self.opt['network_g'])}

    def test(self):
        """The teachers on the LQ image (each padded to its window size, if it has one), then the aggregator (its
        EMA copy, if any) on their outputs; keeps the teachers' outputs for the teachers' metrics."""
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g
        was_training = net.training
        net.eval()
        outputs = OrderedDict(zip(self.teachers, padded_teacher_outputs(self, self.lq)))
        with torch.no_grad():
            self.output = net(torch.cat(list(outputs.values()), dim=1))
        net.train(was_training)
        if getattr(self, '_teacher_metric_sums', None) is not None and hasattr(self, 'gt'):
            self.score_teachers(outputs)

    def score_teachers(self, outputs):
        """Add each teacher's metrics on the current validation image to the running sums."""
        gt_img = tensor2img([self.gt.detach().cpu()])
        for name, output in outputs.items():
            img = tensor2img([output.detach().cpu()])
            for metric, metric_opt in self.opt['val']['metrics'].items():
                self._teacher_metric_sums[name][metric] += calculate_metric({'img': img, 'img2': gt_img}, metric_opt)
        self._teacher_images += 1

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """BasicSR's validation of the aggregator, and each teacher's metrics on the same images beside it."""
        metrics = self.opt['val'].get('metrics')
        if not metrics:
            return super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
        self._teacher_metric_sums = {name: dict.fromkeys(metrics, 0.) for name in self.teachers}
        self._teacher_images = 0
        try:
            super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
            sums, count = self._teacher_metric_sums, max(self._teacher_images, 1)
        finally:
            self._teacher_metric_sums = None
        self.teacher_metric_results = {name: {m: value / count for m, value in sums[name].items()} for name in sums}
        dataset_name = dataloader.dataset.opt['name']
        lines = [f'Validation {dataset_name}: the aggregator and each teacher on the same {count} images']
        for metric in metrics:
            parts = [f'aggregator {self.metric_results[metric]:.4f}'] + [
                f'{name} ({self.opt[f"network_{name}"]["type"]}) {self.teacher_metric_results[name][metric]:.4f}'
                for name in self.teachers
            ]
            lines.append(f'\t # {metric}: ' + ', '.join(parts))
            if tb_logger:
                for name in self.teachers:
                    tb_logger.add_scalar(f'metrics/{dataset_name}/{metric}_{name}',
                                         self.teacher_metric_results[name][metric], current_iter)
        get_root_logger().info('\n'.join(lines))


@MODEL_REGISTRY.register()
class KDMTKDModel(KDBaseModel):
    """MTKD stage 2, model distillation (mtkd.txt Sec. 3.2, Eq. 2-4)::

        L_total = alpha * L1(I_stu, I_GT) + L_dis(I_stu, I_MT)

    The teachers ``network_t1`` .. ``network_tN`` and the stage-1 aggregator ``network_agg`` are frozen (loaded
    strictly from ``path.pretrain_network_agg``, the ``net_g_<iter>.pth`` of a stage-1 run) and run in one no_grad
    block; the aggregator's output I_MT (``self.aggregated``) is the distillation target. ``train.pixel_opt`` is
    alpha * L1 to GT (alpha = its ``loss_weight``, 0.1) and ``train.distill_opt`` is L_dis: ``KDWaveletLoss``
    (Eq. 3), or any pixel-style loss (``L1Loss`` for the authors' released objective and ablation v5, Tab. 5).

    Before the first step the teacher list stored with the aggregator must equal the configured one, position by
    position: same network options and same weights (digest). Anything else (another order, another teacher, other
    options or weights) is refused, naming both lists: the aggregator learned which input channels come from which
    teacher. ``network_agg`` must build the network stage 1 trained (its stored ``network_g``, constructor defaults
    filled in on both sides): a differing argument is refused, naming it with both values (``dct_norm``,
    ``use_dct`` or ``shifted_windows`` change no weight shape, so strict loading would not see them).

    An aggregator file without a teacher list (trained elsewhere, e.g. the authors' weights in BasicSR's layout)
    is refused unless ``path.agg_teacher_types`` names the types of the teachers it was trained on, in the order of
    its input channels (e.g. ``[EDSR, SwinIR, RCAN]``), which must then be the types of ``network_t1`` ..
    ``network_tN``. Such a file carries no network options either: that ``network_agg`` cannot be compared is logged.

    Example::

        model_type: KDMTKDModel
        network_g: {type: EDSR, num_feat: 64, num_block: 16, upscale: 4, res_scale: 1}
        network_t1: ...; network_t2: ...; network_t3: ...   # as in the stage-1 options, same order
        network_agg: {type: KDMTKDAggregator, num_teachers: 3, scale: 4}
        path:
          pretrain_network_agg: experiments/mtkd_stage1_x4/models/net_g_latest.pth
          ignore_resume_networks: [network_t1, network_t2, network_t3, network_agg]
        train:
          pixel_opt: {type: L1Loss, loss_weight: 0.1}                   # alpha (Eq. 4)
          distill_opt: {type: KDWaveletLoss, levels: 1, loss_weight: 1}  # L_dis (Eq. 3)
    """

    frozen_networks = ('agg', )
    option_keys = {'train': {'distill_opt': ('KDWaveletLoss', *PIXEL_LOSSES)}, 'path': {'agg_teacher_types': None}}

    def init_training_settings(self):
        agg_scale = self.opt.get('network_agg', {}).get('scale')
        if agg_scale is not None and agg_scale != self.opt.get('scale', 1):
            raise ValueError(f'network_agg.scale = {agg_scale} but scale = {self.opt.get("scale", 1)}: the aggregator '
                             'must be the one trained for this scale')
        if not self.opt['train'].get('distill_opt'):
            raise ValueError('KDMTKDModel needs train.distill_opt, the distillation loss to the aggregator\'s output '
                             '(KDWaveletLoss, Eq. 3; L1Loss for the authors\' objective)')
        super().init_training_settings()
        self.cri_dis = self.build_train_loss('distill_opt')

    def build_frozen_network(self, name):
        """The aggregator, checked against what its file records (read once): its network options before it is
        built and loaded (a differing ``embed_dim`` is then named as such, not as a shape mismatch), then its number
        of teachers and its teacher list against the teachers (built and loaded before it)."""
        path = self.opt['path'].get('pretrain_network_agg')
        if name != 'agg' or not path:  # unset: the base class refuses it
            return super().build_frozen_network(name)
        records = self.read_weight_file(path, 'path.pretrain_network_agg')
        self.check_aggregator_options(path, records.get(NETWORK_KEY))
        aggregator = super().build_frozen_network(name)
        check_num_teachers(aggregator, 'network_agg', self.teachers)
        self.check_teacher_list(path, records.get(TEACHER_LIST_KEY))
        return aggregator

    def check_aggregator_options(self, path, stored):
        """Refuse ``network_agg`` options that build another network than the stage-1 ``network_g`` stored with the
        aggregator (``stored``; constructor defaults filled in on both sides)."""
        if stored is None:
            get_root_logger().warning(
                f'path.pretrain_network_agg = {path} carries no network options ("{NETWORK_KEY}": not written by '
                'KDMTKDAggregationModel, or before it stored them): network_agg cannot be compared with the options '
                'the aggregator was trained with, and strict loading checks only weight shapes (not dct_norm, '
                'use_dct, shifted_windows...). Make sure network_agg is the network it was trained as.')
            return
        trained, configured = network_arguments(stored), network_arguments(self.opt['network_agg'])
        differing = [key for key in sorted({*trained, *configured}) if trained.get(key) != configured.get(key)]
        if differing:
            raise ValueError(
                f'network_agg differs from the network the aggregator path.pretrain_network_agg = {path} was trained '
                'as (the network_g of its stage-1 run): ' +
                '; '.join(f'network_agg.{key} = {configured.get(key)!r}, stage 1: {trained.get(key)!r}'
                          for key in differing) +
                '. Set network_agg as in stage 1 (strict loading does not see options that change no weight shape, '
                'such as dct_norm, use_dct or shifted_windows).')

    def check_teacher_list(self, path, stored):
        """Refuse an aggregator trained (``stored``: the teacher list of its file) on other teachers than the
        configured ones, or in another order."""
        declared = self.opt['path'].get('agg_teacher_types')
        if stored is None:
            self.check_declared_teacher_types(path, declared)
            return
        if declared is not None:
            raise ValueError(f'path.agg_teacher_types = {declared}, but path.pretrain_network_agg = {path} carries its '
                             'teacher list, which is checked instead: remove path.agg_teacher_types (it is for a '
                             'file without a teacher list)')
        current = teacher_list(list(self.teachers), self.frozen_sources)
        if teacher_identity(stored) != teacher_identity(current):
            raise ValueError(
                f'path.pretrain_network_agg = {path} was trained on the teachers\n{describe_teachers(stored)}\n'
                f'but this configuration (network_t1 .. network_t{len(current)}) has\n{describe_teachers(current)}\n'
                'The aggregator learned which input channels come from which teacher: configure the same teachers '
                '(network options and weights) in the same order as its stage-1 run.')

    def check_declared_teacher_types(self, path, declared):
        """An aggregator file without a teacher list: ``path.agg_teacher_types`` must name the types of the teachers
        it was trained on, in order, and they must be those of the configured teachers."""
        if declared is None:
            raise ValueError(
                f'path.pretrain_network_agg = {path} carries no teacher list ("{TEACHER_LIST_KEY}"): train the '
                'aggregator with KDMTKDAggregationModel (options/mtkd_stage1_x*.yml), whose checkpoint records the '
                'teachers it was trained on, in order; for an aggregator trained elsewhere, set '
                'path.agg_teacher_types to the types of the teachers it was trained on, in the order of its input '
                'channels (e.g. [EDSR, SwinIR, RCAN])')
        configured = [self.opt[f'network_{name}']['type'] for name in self.teachers]
        if declared != configured:
            raise ValueError(
                f'path.agg_teacher_types = {declared}: path.pretrain_network_agg = {path} was trained on teachers of '
                f'these types, in this order, but network_t1 .. network_t{len(configured)} are {configured}. The '
                'aggregator learned which input channels come from which teacher: configure the teachers in its '
                'order.')
        get_root_logger().warning(
            f'path.pretrain_network_agg = {path} carries no teacher list: the teachers are checked against '
            f'path.agg_teacher_types = {declared} only (their types, in order; not their options or weights).')

    def frozen_target(self, lq):
        """I_MT, the aggregator's output on the teachers' outputs for ``lq`` (each teacher's input padded to its
        window, as in validation): what ``train.teacher_cache`` stores."""
        outputs = padded_teacher_outputs(self, lq)
        with self.frozen_context():
            return self.frozen['agg'](torch.cat(outputs, dim=1)).float()

    def forward_teachers(self):
        """The teachers and the aggregator in one no_grad block; the aggregator's output is ``self.aggregated``
        (with ``train.teacher_cache``: the cached I_MT, and no forward)."""
        if self.teacher_cache:
            self.aggregated = self.cached_target
            return OrderedDict()
        with self.frozen_context():
            outputs = super().forward_teachers()
            self.aggregated = self.frozen['agg'](torch.cat(list(outputs.values()), dim=1)).float()
        return outputs

    def compute_losses(self, current_iter):
        losses = super().compute_losses(current_iter)  # l_pix: alpha * L1(I_stu, I_GT) (Eq. 2, 4)
        losses['l_dis'] = self.cri_dis(self.output, self.aggregated)  # Eq. 3
        return losses

    def floor_forwards(self):
        """The teachers on the LQ batch, then the aggregator on their outputs (none with a cache)."""
        if self.teacher_cache:
            return []
        teacher_outputs = self.forward_teachers()
        return super().floor_forwards() + [('agg', torch.cat(list(teacher_outputs.values()), dim=1))]

    @classmethod
    def write_random_frozen_files(cls, opt, folder, seed=0):
        """The random frozen files of ``KDBaseModel``, and the aggregator's file given the teacher list of
        ``opt``'s teachers and ``network_agg`` as its network options (each file is ``{'params': state_dict}`` of
        the network its options build, whose digest is that of the loaded network)."""
        super().write_random_frozen_files(opt, folder, seed)
        path_opt = opt['path']
        names = option_teacher_names(opt)
        sources = {}
        for name in names:
            file = path_opt[f'pretrain_network_{name}']
            state = torch.load(file, map_location='cpu', weights_only=True)['params']
            sources[name] = {'network': dict(opt[f'network_{name}']), 'file': file, 'param_key': 'params',
                             'digest': weights_digest(state)}
        agg_file = path_opt['pretrain_network_agg']
        checkpoint = torch.load(agg_file, map_location='cpu', weights_only=True)
        checkpoint.update({TEACHER_LIST_KEY: teacher_list(names, sources), NETWORK_KEY: dict(opt['network_agg'])})
        torch.save(checkpoint, agg_file)
