"""The distillation terms of every method (MTKD: stage 2) carry gradient to the student: for each term alone, the
autograd gradient of a few student parameters is non-zero and equals a central finite difference of the same term
(the step's forwards and the term evaluated again, seeded, every frozen output identical), and the parameters that
receive gradient from it are the student's (those upstream of the taps, for a feature term), the helpers the paper
trains with it, and never a frozen network. A ``.detach()`` of the student's output or features before a term fails
here, whatever the value of the loss it logs."""
import pytest
import torch
from torch import nn

import test_csd
import test_dfkd
import test_dukd
import test_mipkd
import test_mtkd_model
import test_pisr
import test_skd_model
import test_wavekd_model
from conftest import build_model_from, random_batch, shrink_option
from test_dckd_model import dckd_opt  # noqa: F401  (a fixture)
from test_feature_model import shrunk_feature_opt
from test_slkd_model import restormer_opt

# the finite differences: step and tolerance (times the gradient's norm) in float64, and in float32 where a method
# casts to float32 on the distillation path (DCKD: the float32 rounding of its loss makes up to 4e-2 at this step)
FLOAT64 = {'eps': 1e-6, 'tolerance': 1e-3}
FLOAT32 = {'eps': 3e-5, 'tolerance': 5e-2}
RESTORMER_OUTPUT = ('refinement.', 'output.')  # after decoder_level1, the last tapped level


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these networks are too small to gain from more, and on a loaded machine (a training run
    beside the tests) several threads per tiny operation cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def built(opt, tmp_path, float64=True, float32_frozen=()):
    """The model of ``opt`` and a fed random batch; in float64 (every network and loss module but the frozen networks
    ``float32_frozen``, which take float32 inputs) unless ``float64`` is False."""
    model = build_model_from(opt, str(tmp_path / 'exp'))
    scale = opt.get('scale', 1)
    batch = random_batch(seed=1, scale=scale)
    if float64:
        modules = [*model.teachers.values(), *model.helpers.values()]
        modules += [net for name, net in model.frozen.items() if name not in float32_frozen]
        modules += [value for value in vars(model).values() if isinstance(value, nn.Module)]  # student, EMA, losses
        for module in modules:
            module.double()
        batch = {key: value.double() for key, value in batch.items()}
    model.feed_data(batch)
    return model


def networks(model):
    """({name: network} of the student ``g`` and the helpers, {name: network} of the teachers, the frozen networks
    and the student's EMA copy ``g_ema``, which no gradient may reach)."""
    frozen = {**model.teachers, **model.frozen}
    if hasattr(model, 'net_g_ema'):
        frozen['g_ema'] = model.net_g_ema
    return {'g': model.net_g, **model.helpers}, frozen


def terms(model, names, seed=0):
    """The forwards of one step and the sum of the loss terms ``names`` of ``compute_losses``; seeded, so that random
    parts of the step (DCKD's degradations) repeat at every evaluation."""
    torch.manual_seed(seed)
    model.forward_networks()
    losses = model.compute_losses(1)
    assert set(names) <= set(losses), f'{names} not among the logged terms {list(losses)}'
    return sum(losses[name] for name in names)


def check_gradient_path(model, names, probes, eps, tolerance, teacher_is_student=False):
    """Backpropagate the terms ``names`` alone. For each probed student parameter (a name in ``net_g``) the gradient
    g must be non-zero, and its derivative along a seeded random direction v, <g, v>, must equal the central
    difference (f(θ + εv) − f(θ − εv)) / 2ε of the same terms within ``tolerance`` · ‖g‖ (every teacher output
    identical at each evaluation, unless ``teacher_is_student``: CSD's teacher is the student's super-network).
    Frozen networks must take no gradient. Returns {trained network: names of its parameters with a non-zero
    gradient}."""
    trained, frozen = networks(model)
    for net in (*trained.values(), *frozen.values()):
        net.zero_grad(set_to_none=True)
    value = terms(model, names)
    assert value.requires_grad, f'{names} carry no gradient: the student is detached before them'
    value.backward()
    targets = {name: output.clone() for name, output in model.teacher_outputs.items()}
    params = dict(model.net_g.named_parameters())
    generator = torch.Generator().manual_seed(0)
    for probe in probes:
        param, grad = params[probe], params[probe].grad
        assert grad is not None and grad.abs().max() > 0, f'{names}: no gradient reaches net_g.{probe}'
        direction = torch.randn(param.shape, generator=generator, dtype=param.dtype)
        evaluated = []
        for step in (eps, -eps):
            with torch.no_grad():
                param.add_(step * direction)
                evaluated.append(terms(model, names).item())
                param.sub_(step * direction)
            for name, output in model.teacher_outputs.items():
                assert teacher_is_student or torch.equal(output, targets[name]), f'the output of network_{name} changed'
        difference, derivative = (evaluated[0] - evaluated[1]) / (2 * eps), (grad * direction).sum().item()
        assert abs(difference - derivative) <= tolerance * grad.norm().item(), (
            f'{names}: the derivative along a direction of net_g.{probe} is {derivative:.6g} by autograd but '
            f'{difference:.6g} by finite differences (|g| = {grad.norm().item():.3g})')
    receivers = {
        name: {key for key, param in net.named_parameters() if param.grad is not None and param.grad.abs().max() > 0}
        for name, net in trained.items()
    }
    for name, net in frozen.items():
        assert all(p.grad is None for p in net.parameters()), f'{name} took gradient'
        assert name == 'g_ema' or not any(p.requires_grad for p in net.parameters()), f'network_{name} is not frozen'
    return receivers


def names_of(net, *prefixes):
    """The parameter names of ``net`` (all of them, or those under the module path prefixes)."""
    return {key for key, _ in net.named_parameters() if not prefixes or key.startswith(prefixes)}


# --------------------------------------------------------------------------------------------------------- DCKD
@pytest.mark.parametrize('term', ['l_dcl', 'l_ce'])
def test_dckd_terms_reach_every_student_parameter(dckd_opt, tmp_path, term):  # noqa: F811
    # float32: DCKD's encode() casts the VQGAN's features and z to float32 (its autocast contract)
    model = built(dckd_opt, tmp_path, float64=False)
    receivers = check_gradient_path(model, [term], ['conv_first.weight', 'body.0.conv1.weight', 'conv_last.weight'],
                                    **FLOAT32)
    assert receivers == {'g': names_of(model.net_g)}


# --------------------------------------------------------------------------------------------------------- FACD
def test_facd_term_reaches_the_student_up_to_its_last_tap_and_the_whole_regressor(demo_root, tmp_path):
    opt = shrunk_feature_opt('facd', demo_root, tmp_path)
    # finite differences move the student negatives with the anchor: they can check Eq. 4 differentiated as printed
    # (the option files treat those negatives as constants)
    opt['train']['feature_opt']['detach_student_negatives'] = False
    model = built(opt, tmp_path)
    receivers = check_gradient_path(model, ['l_facd'], ['conv_first.weight', 'body.4.conv2.weight',
                                                        'conv_after_body.bias'], **FLOAT64)
    student = model.net_g
    assert receivers == {'g': names_of(student) - names_of(student, 'upsample.', 'conv_last.'),
                         'reg': names_of(model.helpers['reg'])}


# --------------------------------------------------------------------------------------------------------- LSFD
def test_lsfd_term_reaches_the_student_up_to_its_last_tap_and_the_whole_regressor(demo_root, tmp_path):
    opt = shrunk_feature_opt('lsfd', demo_root, tmp_path)
    # finite differences move the attention with the features: they check the attention differentiated (the option
    # files keep it a constant weight, detach_attention: true)
    opt['train']['feature_opt']['detach_attention'] = False
    model = built(opt, tmp_path)
    # a step of 1e-8: at 1e-6 the random five-layer regressor's many hidden values near zero cross PReLU's kink
    # (0.4 % off on conv_first, whose step the 255 input range amplifies; 1e-8 and 1e-9 agree with autograd)
    receivers = check_gradient_path(model, ['l_feat'], ['conv_first.weight', 'body.4.conv2.weight',
                                                        'conv_after_body.bias'], **{**FLOAT64, 'eps': 1e-8})
    student = model.net_g
    assert receivers == {'g': names_of(student) - names_of(student, 'upsample.', 'conv_last.'),
                         'reg': names_of(model.helpers['reg'])}


# -------------------------------------------------------------------------------------------------------- MiPKD
def test_mipkd_feature_mixer_term_reaches_the_student_up_to_its_last_position_and_the_mixer(tmp_path):
    model = built(test_mipkd.mipkd_opt(tmp_path), tmp_path)
    receivers = check_gradient_path(model, ['l_fpm'], ['conv_first.weight', 'body.1.conv.weight', 'body.2.conv.bias'],
                                    **FLOAT64)
    mixer = model.helpers['mixer']
    assert receivers == {'g': names_of(model.net_g) - names_of(model.net_g, 'conv_after_body.', 'upsample.',
                                                               'conv_last.'),
                         'mixer': names_of(mixer) - names_of(mixer, 'decoders_s.')}  # D_S serves the block mixer only


@pytest.mark.parametrize('student_prob', [1.0, 0.0], ids=['on in the student', 'on in the teacher'])
def test_mipkd_block_mixer_term_reaches_the_student_and_the_mixer_of_its_position(tmp_path, student_prob):
    model = built(test_mipkd.mipkd_opt(tmp_path, student_prob=student_prob), tmp_path)
    receivers = check_gradient_path(model, ['l_bpm'], ['conv_first.weight', 'body.0.conv.weight'], **FLOAT64)
    k, student, mixer = model.block_position, model.net_g, model.helpers['mixer']
    parts = ('encoders_s', 'encoders_t', 'decoders_s' if student_prob else 'decoders_t')
    if student_prob:  # the student's layers after position k run on the mixed feature: every parameter
        expected = names_of(student)
    else:  # the teacher runs on after position k: the student's layers up to it, through the mixer
        last = int(model.taps['g'].paths[k].split('.')[1])
        expected = names_of(student, 'conv_first.', *(f'body.{i}.' for i in range(last + 1)))
    assert receivers == {'g': expected, 'mixer': names_of(mixer, *(f'{part}.{k}.' for part in parts))}


# --------------------------------------------------------------------------------------------------------- MTKD
def test_mtkd_wavelet_term_reaches_every_student_parameter(demo_root, tmp_path):
    opt = shrink_option(test_mtkd_model.tiny('mtkd_edsr_x2.yml'), demo_root, str(tmp_path), 'stage2')
    model = built(opt, tmp_path, float32_frozen=('agg', ))  # it takes the teachers' outputs, cast to float32
    receivers = check_gradient_path(model, ['l_dis'], ['conv_first.weight', 'body.1.conv2.weight', 'conv_last.weight'],
                                    **FLOAT64)
    assert receivers == {'g': names_of(model.net_g)}


# ---------------------------------------------------------------------------------------------------------- SKD
def test_skd_kernel_term_reaches_the_student_up_to_its_last_tap_and_the_student_projections(tmp_path):
    model = built(test_skd_model.skd_opt(tmp_path, '/nonexistent'), tmp_path)
    receivers = check_gradient_path(model, ['l_gk'], ['patch_embed.proj.weight', 'decoder_level1.0.ffn.project_out'
                                                      '.weight'], **FLOAT64)
    proj = model.helpers['proj']
    assert receivers == {'g': names_of(model.net_g) - names_of(model.net_g, *RESTORMER_OUTPUT),
                         'proj': names_of(proj, 'student_proj.')}
    assert not any(p.requires_grad for p in proj.teacher_proj.parameters())  # frozen by default, against collapse


def test_skd_contrastive_term_reaches_every_student_parameter_and_no_projection(tmp_path):
    model = built(test_skd_model.skd_opt(tmp_path, '/nonexistent'), tmp_path)
    receivers = check_gradient_path(model, ['l_cl'], ['patch_embed.proj.weight', 'output.weight'], **FLOAT64)
    assert receivers == {'g': names_of(model.net_g), 'proj': set()}


# --------------------------------------------------------------------------------------------------------- SLKD
SLKD_CASES = {  # term: (student parameters without gradient from it, SCMs with gradient, probes)
    'l_nc': (('down3_4.', 'latent.', 'up', 'reduce_chan', 'decoder_', *RESTORMER_OUTPUT), {'scm_e'},
             ['patch_embed.proj.weight', 'encoder_level3.0.attn.qkv.weight']),
    'l_et': (RESTORMER_OUTPUT, {'scm_d'}, ['patch_embed.proj.weight', 'decoder_level1.0.ffn.project_out.weight']),
    'l_kl': ((), set(), ['patch_embed.proj.weight', 'output.weight']),
}


@pytest.mark.parametrize('term', list(SLKD_CASES))
def test_slkd_terms_reach_the_student_and_their_own_scale_conversion_module(tmp_path, term):
    model = built(restormer_opt('/nonexistent', str(tmp_path)), tmp_path)
    downstream, scms, probes = SLKD_CASES[term]
    receivers = check_gradient_path(model, [term], probes, **FLOAT64)
    student = model.net_g
    expected_student = names_of(student) - (names_of(student, *downstream) if downstream else set())
    assert receivers == {'g': expected_student,
                         **{scm: names_of(model.helpers[scm]) if scm in scms else set() for scm in ('scm_e', 'scm_d')}}


# ------------------------------------------------------------------------------------------------------- WaveKD
def test_wavekd_term_reaches_every_student_parameter(tmp_path):
    model = built(test_wavekd_model.wavekd_opt(tmp_path, '/nonexistent'), tmp_path)
    receivers = check_gradient_path(model, ['l_wave'], ['patch_embed.proj.weight', 'output.weight'], **FLOAT64)
    assert receivers == {'g': names_of(model.net_g)}


# ------------------------------------------------------------------------------------------------------- DUKD
@pytest.mark.parametrize('term', ['l_up_in', 'l_up_out', 'l_up_out_pix'])
def test_dukd_upcycled_terms_reach_every_student_parameter(tmp_path, term):
    model = built(test_dukd.dukd_opt(tmp_path, prob=0.5), tmp_path)  # tiles transformed and undone, zoom-out on
    receivers = check_gradient_path(model, [term], ['conv_first.weight', 'conv_last.weight'], **FLOAT64)
    assert receivers == {'g': names_of(model.net_g)}


# ---------------------------------------------------------------------------------------------------------- CSD
def test_csd_contrastive_term_reaches_the_whole_super_network_and_no_vgg_weight(tmp_path):
    opt = test_csd.csd_opt(tmp_path, '/nonexistent')
    # finite differences move the positive (the full width) with the slice: they check L_CL differentiated through
    # both (detach_positive: false); the option files' constant positive is test_csd's gradient-mask test
    opt['train']['detach_positive'] = False
    model = built(opt, tmp_path)
    receivers = check_gradient_path(model, ['l_csd'], ['conv_first.weight', 'body.1.conv2.weight', 'conv_last.weight'],
                                    teacher_is_student=True, **FLOAT64)
    assert receivers == {'g': names_of(model.net_g)}


# ------------------------------------------------------------------------------------------------------- DFKD
def test_dfkd_student_term_reaches_every_student_parameter_and_not_the_generator(tmp_path):
    model = built(test_dfkd.dfkd_opt(tmp_path), tmp_path)  # the student's input is G(z), made under no_grad
    receivers = check_gradient_path(model, ['l_kd'], ['patch_embed.proj.weight', 'output.weight'], **FLOAT64)
    assert receivers == {'g': names_of(model.net_g), 'gen': set()}


# ------------------------------------------------------------------------------------------------------- PISR
def test_pisr_vid_term_reaches_the_student_up_to_its_tap_and_the_whole_vid_regressor(demo_root, tmp_path):
    model = built(test_pisr.pisr_opt(demo_root, tmp_path), tmp_path)
    receivers = check_gradient_path(model, ['l_vid'], ['conv_first.weight', 'body.1.conv2.weight',
                                                       'conv_after_body.bias'], **FLOAT64)
    student = model.net_g
    assert receivers == {'g': names_of(student) - names_of(student, 'upsample.', 'conv_last.'),
                         'vid': names_of(model.helpers['vid'])}


def test_pisr_imitation_term_reaches_the_teachers_encoder_only(demo_root, tmp_path):
    model = built(test_pisr.stage1_opt(demo_root, tmp_path), tmp_path)
    receivers = check_gradient_path(model, ['l_im'], ['encoder.body.0.weight', 'encoder.body.6.bias'], **FLOAT64)
    assert receivers == {'g': names_of(model.net_g, 'encoder.')}
