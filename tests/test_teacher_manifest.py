"""The teacher manifest (basicsr_kd/teachers.yml): it covers every teacher file of the option files, with the network
the option builds; a missing teacher file's error names where it is published, also without the manifest."""
import copy
import glob
import os
import sys

import pytest

from conftest import OPTIONS, build_model_from, load_option, shrink_option
from datasets_prep.convert_checkpoint import SOURCES
from kd_archs.presets import load_presets
from basicsr_kd import teacher_manifest

MANIFEST = teacher_manifest.load_manifest()
PRESETS = load_presets()


def option_teachers(trained_here=False):
    """(option file, option key, teacher path, teacher network) of every pretrained teacher in options/*.yml; with
    ``trained_here``, instead those another option file trains (PISR's stage-1 teacher:
    ``experiments/<its name>/models/...``)."""
    found = []
    for path in sorted(glob.glob(os.path.join(OPTIONS, '*.yml'))):
        opt = load_option(path)
        for key, value in opt['path'].items():
            published = str(value).startswith('experiments/pretrained_models/')
            if key.startswith('pretrain_network_t') and value and published != trained_here:
                found.append((os.path.basename(path), key, value, opt[key[len('pretrain_'):]]))
    return found


def test_a_teacher_trained_by_another_option_file_is_that_files_network_g():
    teachers = option_teachers(trained_here=True)
    assert teachers  # PISR's students
    for option, key, path, network in teachers:
        folders = path.split('/')
        assert folders[0] == 'experiments' and folders[2] == 'models', f'{option}: {key} = {path}'
        assert load_option(os.path.join(OPTIONS, f'{folders[1]}.yml'))['network_g'] == network, f'{option}: {key}'


def test_every_teacher_of_the_option_files_is_listed_with_the_network_the_option_builds():
    teachers = option_teachers()
    assert len(teachers) >= 21  # logits x 9, FitNet/AT/FAKD x 12 (EDSR and RCAN, x2 and x4)
    for option, key, path, network in teachers:
        assert path in MANIFEST, f'{option}: {key} = {path} is not in basicsr_kd/teachers.yml'
        assert PRESETS[MANIFEST[path]['preset']]['network_g'] == network, f'{option}: {key}'


def test_entries_name_a_file_a_page_a_preset_and_a_known_converter():
    for path, entry in MANIFEST.items():
        assert path.startswith('experiments/pretrained_models/'), path
        assert entry['published_name'] and entry['published_at'].startswith('https://'), path
        assert entry['preset'] in PRESETS, path
        assert entry['converter'] is None or entry['converter'] in SOURCES, path
        if entry['converter']:  # the converter's target type is the preset's
            assert PRESETS[entry['preset']]['network_g']['type'] in SOURCES[entry['converter']].archs, path


def test_description_of_a_listed_path_by_path_or_by_file_name():
    rcan = 'experiments/pretrained_models/RCAN_BIX4.pth'
    for load_path in (rcan, './experiments/pretrained_models/RCAN_BIX4.pth', '/data/teachers/RCAN_BIX4.pth'):
        text = teacher_manifest.describe(load_path)
        assert 'RCAN_BIX4.pt (in models_ECCV2018RCAN.zip)' in text and 'https://github.com/yulunzhang/RCAN' in text
        assert text.endswith(f'python -m datasets_prep.convert_checkpoint rcan RCAN_BIX4.pt {load_path} '
                             '--preset rcan_teacher_x4')
    swinir = teacher_manifest.describe('experiments/pretrained_models/001_classicalSR_DIV2K_s48w8_SwinIR-M_x2.pth')
    assert 'https://github.com/JingyunLiang/SwinIR/releases/tag/v0.0' in swinir and 'convert' not in swinir
    assert teacher_manifest.describe('experiments/pretrained_models/my_teacher.pth') is None


@pytest.fixture
def rcan_opt(tmp_path):
    """options/logits_rcan_x2.yml shrunk, its teacher path set to the manifest's (a file that is not there)."""
    opt = shrink_option(load_option(os.path.join(OPTIONS, 'logits_rcan_x2.yml')), str(tmp_path), str(tmp_path), 'rcan')
    opt['path']['pretrain_network_t'] = str(tmp_path / 'experiments' / 'pretrained_models' / 'RCAN_BIX2.pth')
    return opt


def test_missing_teacher_error_names_the_published_file_its_page_and_the_converter(rcan_opt, tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        build_model_from(copy.deepcopy(rcan_opt), str(tmp_path / 'exp'))
    message = str(error.value)
    for words in ('path.pretrain_network_t', 'RCAN_BIX2.pth: no such file', 'published as RCAN_BIX2.pt',
                  'https://github.com/yulunzhang/RCAN', 'convert_checkpoint rcan RCAN_BIX2.pt', 'rcan_teacher_x2'):
        assert words in message, message


FALLBACK = (r'no such file\. Put the pretrained weights there\. Where each is published: README, '
            r'"Pretrained teachers"\.$')


def test_missing_teacher_error_without_the_manifest_module_or_file(rcan_opt, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:  # a fork that copied only the *_model.py files: no teacher_manifest module
        patch.setitem(sys.modules, 'basicsr_kd.teacher_manifest', None)  # makes importing it fail
        with pytest.raises(FileNotFoundError, match=FALLBACK):
            build_model_from(copy.deepcopy(rcan_opt), str(tmp_path / 'exp'))
    monkeypatch.setattr(teacher_manifest, 'MANIFEST_FILE', str(tmp_path / 'absent.yml'))
    with pytest.raises(FileNotFoundError, match=FALLBACK):
        build_model_from(copy.deepcopy(rcan_opt), str(tmp_path / 'exp2'))
