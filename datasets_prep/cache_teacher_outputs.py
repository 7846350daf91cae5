"""Compute a training option file's frozen target (its teacher's output; MTKD stage 2: the aggregated output of its
teachers) once for every training image, so that training reads it from disk and skips the frozen forwards.

Each whole image (not a patch) goes through ``model.frozen_target`` in overlapping tiles (``--tile``/``--overlap``
LQ pixels, so memory stays bounded; a CNN's tiles equal its whole-image output when ``overlap // 2`` covers its
receptive field, e.g. EDSR-L's 66 convolutions reach 66 LQ pixels), under no_grad, on the GPU when there is one
(``--amp bf16|fp16`` optional). Targets are 16-bit PNGs (``<GT name>.png``, HR size; 8-bit rounding adds a mean
absolute error of 9.5e-4, 59 dB, measured on a photograph; 16 bits 3.7e-6), written atomically; a run writes
only what is missing, so an interrupted build resumes. ``manifest.json`` records what the targets depend on (model
type, scale, each frozen network's options, key and weight digest, the LQ folder); a training run with
``train.teacher_cache`` refuses a cache whose manifest differs from its options. Several GPUs: run it under
``torchrun --nproc_per_node=N``; rank r takes every N-th image.

Usage::

    python -m datasets_prep.cache_teacher_outputs -opt options/logits_edsr_x4.yml \\
        --out datasets/DIV2K/targets_logits_edsr_x4 [--tile 512 --overlap 160 --amp bf16]

Then train with the cache: in the option file, ``datasets.train.type: KDCachedTargetDataset``,
``datasets.train.dataroot_target`` and ``train.teacher_cache`` both set to that folder.
"""
import argparse
import json
import os
import tempfile
from contextlib import nullcontext

import numpy as np
import torch
import yaml
from tqdm import tqdm

import basicsr_kd  # noqa: F401  (makes BasicSR 1.4.2 importable)
from basicsr.data.data_util import paired_paths_from_folder, paired_paths_from_meta_info_file
from basicsr.utils import img2tensor
from basicsr_kd.compat import patch_basicsr
from basicsr_kd.parsed_options import parsed_options
from basicsr_kd.preflight import on_disk
from basicsr_kd.registration import register_plugin
from datasets_prep.common import read_image, write_image, write_text
from kd_models.kd_cached_target_dataset import CACHE_MANIFEST, cached_target_path
from kd_models.kd_eval_model import forward_tiled

AMP = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def build_model(opt, device, workdir):
    """The option file's distillation model as train.py builds it (its frozen networks loaded), on ``device``, its
    experiment folders in ``workdir``."""
    from basicsr.models import build_model as basicsr_build_model
    opt = parsed_options(opt, workdir, num_gpu=1 if device.type == 'cuda' else 0)
    opt['train'].pop('teacher_cache', None)  # the cache is what is being built
    return basicsr_build_model(opt)


def training_pairs(opt):
    """[(LQ path, GT path)] of the option file's training set (disk; meta_info_file and filename_tmpl honoured)."""
    train_set = opt['datasets']['train']
    if not on_disk(train_set):
        raise ValueError('datasets.train.io_backend: the cache is built from images on disk (convert the LMDB back '
                         'or point a copy of the option file at the image folders)')
    folders, tmpl = [train_set['dataroot_lq'], train_set['dataroot_gt']], train_set.get('filename_tmpl', '{}')
    if train_set.get('meta_info_file'):
        paths = paired_paths_from_meta_info_file(folders, ['lq', 'gt'], train_set['meta_info_file'], tmpl)
    else:
        paths = paired_paths_from_folder(folders, ['lq', 'gt'], tmpl)
    return [(p['lq_path'], p['gt_path']) for p in paths]


def write_manifest(folder, manifest, overwrite):
    """Write ``manifest.json``; an existing one must be the same (else the folder holds another cache)."""
    path = os.path.join(folder, CACHE_MANIFEST)
    manifest = json.loads(json.dumps(manifest))
    if os.path.isfile(path) and not overwrite:
        with open(path) as f:
            existing = json.load(f)
        differing = sorted(key for key in set(existing) | set(manifest) if existing.get(key) != manifest.get(key))
        if differing:
            raise ValueError(f'{folder} holds targets of other options (they differ in {differing}); use another '
                             '--out, or --overwrite to rebuild it')
        return
    write_text(path, json.dumps(manifest, indent=2))


def to_uint16(target):
    """(1, 3, H, W) RGB in [0, 1] -> (H, W, 3) BGR uint16."""
    image = target[0].clamp(0, 1).permute(1, 2, 0).flip(-1).float().cpu().numpy()
    return np.round(image * 65535).astype(np.uint16)


def cache_targets(opt, out, tile=512, overlap=160, amp=None, device=None, overwrite=False, rank=0, world_size=1):
    """Build (or complete) the cache of ``opt`` in ``out``; returns the number of targets written now."""
    device = device or torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    register_plugin()
    patch_basicsr()
    with tempfile.TemporaryDirectory(prefix='cache_teacher_outputs_') as workdir:
        model = build_model(opt, device, workdir)
    if rank == 0:
        write_manifest(out, model.cache_manifest(), overwrite)
    autocast = torch.autocast(device.type, dtype=AMP[amp]) if amp else nullcontext()
    scale, written = opt.get('scale', 1), 0
    pairs = training_pairs(opt)[rank::world_size]
    for lq_path, gt_path in tqdm(pairs, desc=f'targets (rank {rank})', disable=rank != 0):
        path = cached_target_path(out, gt_path)
        if os.path.isfile(path) and not overwrite:
            continue
        lq = img2tensor(read_image(lq_path).astype(np.float32) / 255., bgr2rgb=True)
        with torch.no_grad(), autocast:
            target = forward_tiled(model.frozen_target, lq[None].to(device), tile, overlap, scale)
        write_image(path, to_uint16(target))
        written += 1
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-opt', required=True, help='the training option file')
    parser.add_argument('--out', required=True, help='the cache folder (train.teacher_cache)')
    parser.add_argument('--tile', type=int, default=512, help='tile side in LQ pixels (default 512: DIV2K '
                        'sub-images go through whole)')
    parser.add_argument('--overlap', type=int, default=160, help='tile overlap in LQ pixels (default 160: tiles '
                        'equal the whole image for CNNs whose receptive field reaches up to 80 LQ pixels)')
    parser.add_argument('--amp', choices=sorted(AMP), default=None, help='frozen forwards under autocast')
    parser.add_argument('--device', default=None, help='cuda or cpu (default: cuda when available)')
    parser.add_argument('--overwrite', action='store_true', help='rebuild every target and the manifest')
    args = parser.parse_args(argv)
    with open(args.opt) as f:
        opt = yaml.safe_load(f)
    rank, world_size = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
    device = torch.device(args.device) if args.device else None
    if device is None and torch.cuda.is_available():
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
    written = cache_targets(opt, args.out, args.tile, args.overlap, args.amp, device, args.overwrite, rank,
                            world_size)
    print(f'rank {rank}: {written} targets written to {args.out}')


if __name__ == '__main__':
    main()
