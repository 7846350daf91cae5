"""Pack image folders into LMDB databases in BasicSR's layout (io_backend type lmdb), with BasicSR's own writer.

For each folder given, writes ``<folder>.lmdb``:

    <folder>.lmdb/data.mdb, lock.mdb    the images PNG-encoded, keyed by file name without extension
    <folder>.lmdb/meta_info.txt         '<key>.png (h,w,c) <compress level>' per image, sorted by key

A paired set needs one database per folder with the same keys, e.g. DIV2K_train_HR_sub.lmdb and X4_sub.lmdb; point
dataroot_gt / dataroot_lq of the option file at them and set io_backend: {type: lmdb}. The database is written under
a temporary name and renamed when complete. A database that already holds exactly the folder's images (same keys and
compress level) is left alone; one that differs is an error unless --force rebuilds it.

Example: python -m datasets_prep.make_lmdb datasets/DIV2K/DIV2K_train_HR_sub \\
             datasets/DIV2K/DIV2K_train_LR_bicubic/X4_sub
"""
import os
import shutil

import basicsr_kd  # noqa: F401  (makes BasicSR 1.4.2 importable)
from basicsr.utils.lmdb_util import make_lmdb_from_imgs
from datasets_prep.common import image_size, list_images, make_parser, run

PAGE = 4096


def lmdb_keys(lmdb_path):
    """{key: compress level} listed in an LMDB's meta_info.txt."""
    with open(os.path.join(lmdb_path, 'meta_info.txt')) as f:
        entries = [line.split() for line in f if line.strip()]
    return {entry[0].rsplit('.', 1)[0]: entry[-1] for entry in entries}


def make_lmdb(folder, compress_level=1, force=False):
    """Write ``<folder>.lmdb``; returns its path."""
    names = list_images(folder)
    keys = [os.path.splitext(name)[0] for name in names]
    bad = [key for key in keys if not key.isascii() or '.' in key or ' ' in key]
    if bad or len(set(keys)) != len(keys):
        raise ValueError(f'{folder}: LMDB keys must be unique ASCII file names without dots or spaces: '
                         f'{bad[:3] or "two images share a name"}')
    lmdb_path = os.path.normpath(folder) + '.lmdb'
    if os.path.exists(lmdb_path) and not force:
        expected = {key: str(compress_level) for key in keys}
        if os.path.isfile(os.path.join(lmdb_path, 'meta_info.txt')) and lmdb_keys(lmdb_path) == expected:
            print(f'{lmdb_path} already holds the {len(keys)} images of {folder}; --force rebuilds it.')
            return lmdb_path
        raise ValueError(f'{lmdb_path} exists but does not hold exactly the {len(keys)} images of {folder} '
                         f'(compress level {compress_level}); --force rebuilds it')
    partial = lmdb_path[:-len('.lmdb')] + '.partial.lmdb'
    shutil.rmtree(partial, ignore_errors=True)
    # lmdb reserves the map as sparse virtual memory: a generous bound (8 bytes per pixel, pages) costs nothing
    paths = [os.path.join(folder, name) for name in names]
    map_size = sum(8 * height * width + 2 * PAGE for height, width in map(image_size, paths)) + 2**26
    make_lmdb_from_imgs(folder, partial, names, keys, compress_level=compress_level, map_size=map_size)
    shutil.rmtree(lmdb_path, ignore_errors=True)
    os.replace(partial, lmdb_path)
    return lmdb_path


def prepare(args):
    for folder in args.folders:
        print(f'{make_lmdb(folder, args.compress_level, args.force)}: done')


def main(argv=None):
    parser = make_parser(__doc__, workers=False, counts=False)
    parser.add_argument('folders', nargs='+', help='image folders; each becomes <folder>.lmdb')
    parser.add_argument('--compress-level', type=int, default=1, help='PNG compression in the LMDB (default: 1)')
    parser.add_argument('--force', action='store_true', help='rebuild databases that already exist')
    run(parser, prepare, argv)


if __name__ == '__main__':
    main()
