"""A misspelt option key stops the run before step 1 with its path and the closest known keys (basicsr_kd/
option_keys.py): every option file passes, a misspelling injected at any level fails, BasicSR's own option files pass
unchanged, and each model reads only keys it declares. A number YAML reads as text (``1e-6``) is refused too, naming
its path; text keys (module and file paths, names) are left alone."""
import copy
import glob
import os

import pytest
from basicsr.utils.registry import MODEL_REGISTRY

from basicsr_kd.option_keys import (MARKERS, UnknownOptionKey, check_number_strings, check_option_keys, matching,
                                    number_strings, option_spec, unknown_keys)
from basicsr_kd.parsed_options import parsed_options
from basicsr_kd.preflight import check_option_file
from conftest import OPTIONS, ROOT, load_option, random_batch, run_train, shrink_option

ALL_OPTIONS = sorted(glob.glob(os.path.join(OPTIONS, '**', '*.yml'), recursive=True))
BASICSR_OPTIONS = sorted(glob.glob(os.path.join(ROOT, 'tests', 'basicsr_options', '*.yml')))


def option_id(path):
    return os.path.relpath(path, ROOT)


def misspelt(key):
    """A typo of ``key``: its last letter doubled (``teacher_autocast`` -> ``teacher_autocastt``)."""
    return key + key[-1]


def dict_paths(node, where=()):
    """The path of every dict in a nested option dict (the top level is ())."""
    if isinstance(node, dict):
        yield where
        for key, value in node.items():
            yield from dict_paths(value, (*where, key))


@pytest.mark.parametrize('path', ALL_OPTIONS + BASICSR_OPTIONS, ids=option_id)
def test_option_file_has_only_known_keys(path):
    check_option_keys(load_option(path), path)


@pytest.mark.parametrize('path', ALL_OPTIONS, ids=option_id)
def test_a_misspelt_key_at_any_level_is_named_with_a_suggestion(path):
    opt = load_option(path)
    checked = 0
    for where in dict_paths(opt):
        node = opt
        for key in where:
            node = node[key]
        candidates = [k for k in node if isinstance(k, str) and k != 'type' and len(k) > 3]
        if not candidates:
            continue
        broken = copy.deepcopy(opt)
        target = broken
        for key in where:
            target = target[key]
        key = candidates[0]
        target[misspelt(key)] = target.pop(key)
        found = dict(unknown_keys(broken, option_spec(broken)))
        full = '.'.join((*map(str, where), misspelt(key)))
        if full not in found:  # a dict whose keys nobody constrains (e.g. the taps per network, a metric's args)
            assert not any(f.startswith('.'.join(map(str, where))) for f in found)
            continue
        assert key in found[full], f'{full}: suggestions {found[full]}'
        checked += 1
    assert checked >= 4, 'the top level, path, train and a network are always checked'


def test_the_error_names_the_path_and_the_closest_key_and_strict_options_false_warns(logits_opt):
    opt = copy.deepcopy(logits_opt)
    opt['train']['teacher_autocst'] = 'bf16'
    opt['path']['strict_load_tt'] = False
    with pytest.raises(UnknownOptionKey) as error:
        check_option_keys(opt, 'my.yml')
    message = error.value.args[0]
    assert message.startswith('my.yml: unknown option keys')
    assert 'train.teacher_autocst (did you mean teacher_autocast' in message
    assert 'path.strict_load_tt (did you mean strict_load_t' in message
    opt['strict_options'] = False
    with pytest.warns(UserWarning, match='train.teacher_autocst'):
        check_option_keys(opt, 'my.yml')


def test_network_and_loss_keys_come_from_their_signatures(logits_opt):
    opt = copy.deepcopy(logits_opt)
    opt['network_t']['num_blocks'] = 3  # EDSR's argument is num_block
    opt['train']['kd_opt']['reductio'] = 'mean'
    opt['train']['optim_g']['beta'] = [0.9, 0.99]
    found = dict(unknown_keys(opt, option_spec(opt)))
    assert 'num_block' in found['network_t.num_blocks']
    assert found['train.kd_opt.reductio'] == ['reduction'] and 'betas' in found['train.optim_g.beta']


def test_train_py_stops_before_building_anything(logits_opt, tmp_path):
    opt = copy.deepcopy(logits_opt)
    opt['train']['feature_tapz'] = {'network_g': ['body.0']}
    result = run_train(opt, str(tmp_path), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and 'train.feature_tapz (did you mean feature_taps?)' in output
    assert 'Model [' not in output  # nothing was built


# ------------------------------------------------------------------------------------------ numbers written as text
@pytest.mark.parametrize('path', ALL_OPTIONS + BASICSR_OPTIONS, ids=option_id)
def test_option_file_writes_its_numbers_as_numbers(path):
    check_number_strings(load_option(path), path)


NUMBER_TEXTS = [  # (option file, line as shipped, the line with a number YAML reads as text, words of the error)
    ('skd_restormer_derain.yml', 'temperature: 0.1', 'temperature: 1e-6',
     "train.contrastive_opt.temperature = '1e-6' is a string: YAML reads 1e-6 without a dot as text; write 1.0e-6 "
     'or !!float 1e-6'),
    ('logits_edsr_x2.yml', 'lr: !!float 1e-4', 'lr: 1e-4', "train.optim_g.lr = '1e-4' is a string"),
    ('logits_edsr_x2.yml', 'milestones: [100000, 200000]', 'milestones: [1e5, 200000]',
     "train.scheduler.milestones[0] = '1e5' is a string: YAML reads 1e5 without a dot and a sign in the exponent as "
     'text; write 1.0e+5 or !!float 1e5'),
    ('logits_edsr_x2.yml', 'kd_opt: {type: L1Loss, loss_weight: 1.0', 'kd_opt: {type: L1Loss, loss_weight: 5e-1',
     "train.kd_opt.loss_weight = '5e-1' is a string"),
    ('logits_edsr_x2.yml', 'res_scale: 0.1', 'res_scale: 1E-1', "network_t.res_scale = '1E-1' is a string"),
    ('logits_edsr_x2.yml', 'total_iter: 250000', 'total_iter: 2.5e5',
     "train.total_iter = '2.5e5' is a string: YAML reads 2.5e5 without a sign in the exponent as text; write "
     '2.5e+5'),
    ('logits_edsr_x2.yml', 'ema_decay: 0.999', "ema_decay: '0.999'",
     "train.ema_decay = '0.999' is a string: write it without quotes"),
    ('logits_edsr_x2.yml', 'val_freq: !!float 5e3', 'val_freq: 5e3', "val.val_freq = '5e3' is a string"),
    ('logits_edsr_x2.yml', 'save_checkpoint_freq: !!float 5e3', 'save_checkpoint_freq: +5E3',
     "logger.save_checkpoint_freq = '+5E3' is a string"),
]


@pytest.mark.parametrize('name, shipped, written, words', NUMBER_TEXTS, ids=[case[2] for case in NUMBER_TEXTS])
def test_preflight_refuses_a_number_yaml_reads_as_text_naming_its_path(tmp_path, name, shipped, written, words):
    with open(os.path.join(OPTIONS, name)) as f:
        text = f.read()
    assert text.count(shipped) == 1
    path = tmp_path / name
    path.write_text(text.replace(shipped, written))
    with pytest.raises(ValueError) as error:
        check_option_file(str(path), data=False)  # what train.py runs before BasicSR starts
    assert error.value.args[0].startswith(f'{path}: ') and words in error.value.args[0]


def test_text_that_looks_like_a_number_is_left_alone():
    """Names, file paths and module paths (a Sequential student's taps are '0', '1.2') may read as numbers."""
    opt = load_option(os.path.join(OPTIONS, 'logits_edsr_x2.yml'))
    opt['name'], opt['datasets']['train']['name'], opt['datasets']['train']['filename_tmpl'] = '1e5', '001', '2'
    opt['path']['experiments_root'], opt['val']['suffix'] = '1.5', '1'
    opt['logger']['wandb'] = {'project': '2', 'resume_id': '3e5'}
    opt['train'].update(feature_taps={'network_g': ['0', '1.2'], 'network_t': ['0', '1.2']}, teacher_cache='2024')
    assert number_strings(opt, option_spec(opt)) == []
    opt['train']['feature_tapz'] = {'network_g': ['0']}  # an unknown key is not known to hold text
    assert number_strings(opt, option_spec(opt)) == [('train.feature_tapz.network_g[0]', '0')]


# ------------------------------------------------------------------------------------------ what models read
class Recording(dict):
    """An option dict that records the path of every key read from it (``[]``, ``get``, ``in``)."""

    def __init__(self, data, reads, where=()):
        super().__init__()
        self.reads, self.where = reads, where
        for key, value in data.items():
            dict.__setitem__(self, key, Recording(value, reads, (*where, key)) if isinstance(value, dict) else value)

    def _read(self, key):
        self.reads.add((*self.where, key))

    def __getitem__(self, key):
        self._read(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._read(key)
        return super().get(key, default)

    def __contains__(self, key):
        self._read(key)
        return super().__contains__(key)

    def __deepcopy__(self, memo):  # BasicSR's builders copy their dicts: the copies are plain
        return {copy.deepcopy(k, memo): copy.deepcopy(v, memo) for k, v in dict.items(self)}


def undeclared_reads(reads, opt):
    """Read keys that neither BasicSR nor the model declares; reads inside a network, loss, optimiser, scheduler,
    dataset or metric dict are checked against that class's signature by option_keys instead, so not here."""
    spec, undeclared = option_spec(opt), []
    for path in sorted(reads):
        node = spec
        for depth, key in enumerate(path):
            entry, known = matching(node, str(key))
            if not known:
                undeclared.append('.'.join(map(str, path[:depth + 1])))
                break
            if entry is None or entry in MARKERS or not isinstance(entry, dict):
                break
            node = entry
    return sorted(set(undeclared))


MODEL_OPTIONS = {}  # the first training option file of every model type
for option_path in ALL_OPTIONS:
    model_type = load_option(option_path)['model_type']
    if model_type in MODEL_REGISTRY and model_type != 'KDEvalModel':
        MODEL_OPTIONS.setdefault(model_type, option_path)


@pytest.mark.parametrize('path', sorted(MODEL_OPTIONS.values()), ids=option_id)
def test_a_model_reads_only_keys_it_declares(path, request, tmp_path):
    opt = load_option(path)
    data_root = request.getfixturevalue('restoration_root' if opt['scale'] == 1 else 'demo_root')
    opt = shrink_option(opt, data_root, str(tmp_path), 'reads')
    parsed = parsed_options(opt, str(tmp_path / 'exp'))
    reads = set()
    model = MODEL_REGISTRY.get(opt['model_type'])(Recording(parsed, reads))  # build_model would copy the dict
    patch = opt['datasets']['train']['gt_size'] // opt['scale']
    model.feed_data(random_batch(scale=opt['scale'], batch=2, size=patch))
    model.optimize_parameters(1)
    model.save(0, 1)
    model.feed_data(random_batch(scale=opt['scale'], batch=1, size=patch))
    model.test()
    assert reads, 'nothing was recorded'
    assert not undeclared_reads(reads, parsed), f'{opt["model_type"]} reads keys it does not declare'
