"""A misspelt option key stops the run before step 1 with its path and the closest known keys (basicsr_kd/
option_keys.py): every option file passes, a misspelling injected at any level fails, BasicSR's own option files pass
unchanged, and each model reads only keys it declares."""
import copy
import glob
import os

import pytest
from basicsr.utils.registry import MODEL_REGISTRY

from basicsr_kd.option_keys import MARKERS, UnknownOptionKey, check_option_keys, matching, option_spec, unknown_keys
from basicsr_kd.parsed_options import parsed_options
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
