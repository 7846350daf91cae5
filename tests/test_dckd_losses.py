"""DCKD's dynamic contrastive loss (Eq. 5) and codebook cross-entropy (Eq. 8-9) against explicit loops."""
import math

import pytest
import torch

import kd_archs  # noqa: F401
import kd_losses  # noqa: F401
from basicsr.utils.registry import ARCH_REGISTRY
from conftest import fixed, loss, mae_by_loop


def dynamic_contrastive_by_loops(anchor, positive, negatives, layer_weights, eps, loss_weight):
    """Eq. 5: Σ_i λ_i · ‖f_anc − f_pos‖₁ / (Σ_j ‖f_anc − f_neg,j‖₁ + eps), ‖·‖₁ the mean over the layer tensor."""
    total = 0.0
    for weight, anc, pos, negs in zip(layer_weights, anchor, positive, negatives):
        denominator = sum(mae_by_loop(anc, negs[j]) for j in range(negs.shape[0]))
        total += weight * mae_by_loop(anc, pos) / (denominator + eps)
    return loss_weight * total


LAYER_SHAPES = [(2, 3, 4, 4), (2, 5, 2, 2), (2, 4, 1, 3), (2, 2, 3, 1), (2, 6, 1, 1)]


def pyramid(num_negatives, seed):
    anchor = [fixed(*shape, seed=seed + i) for i, shape in enumerate(LAYER_SHAPES)]
    positive = [fixed(*shape, seed=seed + 10 + i) for i, shape in enumerate(LAYER_SHAPES)]
    negatives = [fixed(num_negatives, *shape, seed=seed + 20 + i) for i, shape in enumerate(LAYER_SHAPES)]
    return anchor, positive, negatives


# ----------------------------------------------------------------------------------------------------------- Eq. 5
@pytest.mark.parametrize('num_negatives', [1, 4])
@pytest.mark.parametrize(
    'layer_weights, eps, loss_weight',
    [
        (None, 1e-7, 1.0),  # the defaults: [1/32, 1/16, 1/8, 1/4, 1]
        ([1.0, 0.5, 2.0, 0.0, 0.25], 0.3, 0.1),
    ])
def test_dynamic_contrastive_loss_matches_the_loop_over_layers_and_negatives(num_negatives, layer_weights, eps,
                                                                             loss_weight):
    anchor, positive, negatives = pyramid(num_negatives, seed=num_negatives)
    kwargs = {'eps': eps, 'loss_weight': loss_weight}
    if layer_weights is not None:
        kwargs['layer_weights'] = layer_weights
    value = loss('KDDynamicContrastiveLoss', **kwargs)(anchor, positive, negatives)
    weights = layer_weights or [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1]
    expected = dynamic_contrastive_by_loops(anchor, positive, negatives, weights, eps, loss_weight)
    assert value.ndim == 0
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_dynamic_contrastive_loss_is_one_ratio_per_layer_not_per_sample():
    """Sample 1 far from its positive and far from its negatives: a per-sample ratio would differ from the batch one."""
    anchor = [torch.tensor([[[[0.]]], [[[0.]]]], dtype=torch.float64)]
    positive = [torch.tensor([[[[1.]]], [[[10.]]]], dtype=torch.float64)]
    negatives = [torch.tensor([[[[[2.]]], [[[100.]]]]], dtype=torch.float64)]
    value = loss('KDDynamicContrastiveLoss', layer_weights=[1.0], eps=0)(anchor, positive, negatives)
    assert value.item() == pytest.approx((1 + 10) / 2 / ((2 + 100) / 2), rel=1e-12)  # not (1/2 + 10/100) / 2


def test_dynamic_contrastive_loss_gradient_reaches_the_anchor_only():
    anchor, positive, negatives = pyramid(3, seed=5)
    anchor = [a.requires_grad_() for a in anchor]
    positive = [p.requires_grad_() for p in positive]
    negatives = [n.requires_grad_() for n in negatives]
    loss('KDDynamicContrastiveLoss')(anchor, positive, negatives).backward()
    for a in anchor:
        assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in positive) and all(n.grad is None for n in negatives)


def test_dynamic_contrastive_loss_refuses_bad_layouts():
    anchor, positive, negatives = pyramid(2, seed=1)
    dcl = loss('KDDynamicContrastiveLoss')
    with pytest.raises(ValueError, match='layer_weights has 5 layers'):
        dcl(anchor[:4], positive[:4], negatives[:4])
    with pytest.raises(ValueError, match=r'layer 2 has anchor \(2, 4, 1, 3\), positive .* negatives \(2, 4, 1, 3\)'):
        dcl(anchor, positive, negatives[:2] + [negatives[2][0]] + negatives[3:])  # a negative without its N axis
    with pytest.raises(ValueError, match=r'layer 0 .*negatives \(0, 2, 3, 4, 4\)'):
        dcl(anchor, positive, [negatives[0][:0]] + negatives[1:])


# -------------------------------------------------------------------------------------------------------- Eq. 8-9
def tiny_vqgan():
    """KDVQGANEncoder with a 4-code, 3-dimensional codebook (and a one-level encoder we do not use)."""
    ddconfig = {'ch': 32, 'ch_mult': [1], 'num_res_blocks': 1, 'attn_resolutions': [], 'z_channels': 32}
    vqgan = ARCH_REGISTRY.get('KDVQGANEncoder')(embed_dim=3, n_embed=4, ddconfig=ddconfig).double()
    with torch.no_grad():
        vqgan.quantize.embedding.weight.copy_(fixed(4, 3, seed=40))
    return vqgan


def distances_by_loop(z, codes):
    """[b][p][k] = Σ_d (z[b, d, p // W, p % W] − e[k, d])², positions in row-major order."""
    batch, dims, height, width = z.shape
    return [[[
        sum((z[b, d, p // width, p % width].item() - codes[k, d].item())**2 for d in range(dims))
        for k in range(codes.shape[0])
    ] for p in range(height * width)] for b in range(batch)]


def softmax_by_loop(logits):
    exps = [math.exp(v - max(logits)) for v in logits]
    return [e / sum(exps) for e in exps]


def codebook_ce_by_loops(d_student, d_teacher, temperature, double_softmax, loss_weight):
    """Eq. 8-9: C = softmax(−d/τ) per position; −Σ_k C_T,k log C_S,k averaged over positions and batch. The
    authors' double softmax: −Σ_k C_T,k log softmax(C_S)_k."""
    terms = []
    for rows_s, rows_t in zip(d_student, d_teacher):
        for ds, dt in zip(rows_s, rows_t):
            c_s = softmax_by_loop([-v / temperature for v in ds])
            c_t = softmax_by_loop([-v / temperature for v in dt])
            log_c_s = [math.log(p) for p in (softmax_by_loop(c_s) if double_softmax else c_s)]
            terms.append(-sum(t * ls for t, ls in zip(c_t, log_c_s)))
    return loss_weight * sum(terms) / len(terms)


@pytest.mark.parametrize('temperature', [1.0, 0.5])
@pytest.mark.parametrize('double_softmax', [False, True])
def test_codebook_cross_entropy_matches_the_loop_over_positions_and_codes(temperature, double_softmax):
    vqgan = tiny_vqgan()
    codes = vqgan.quantize.embedding.weight.detach()
    z_student, z_teacher = fixed(2, 3, 2, 3, seed=41), fixed(2, 3, 2, 3, seed=42)
    d_student, d_teacher = vqgan.code_distances(z_student), vqgan.code_distances(z_teacher)
    loops_s, loops_t = distances_by_loop(z_student, codes), distances_by_loop(z_teacher, codes)
    assert d_student.shape == (2, 6, 4)
    assert torch.allclose(d_student, torch.tensor(loops_s, dtype=torch.float64), atol=1e-12)
    ce = loss('KDCodebookCrossEntropyLoss', temperature=temperature, double_softmax=double_softmax, loss_weight=0.5)
    expected = codebook_ce_by_loops(loops_s, loops_t, temperature, double_softmax, 0.5)
    assert ce(d_student, d_teacher).item() == pytest.approx(expected, rel=1e-10)


def test_codebook_cross_entropy_gradient_reaches_the_student_distances_only():
    d_student = (fixed(2, 5, 4, seed=43).abs() * 3).requires_grad_()
    d_teacher = (fixed(2, 5, 4, seed=44).abs() * 3).requires_grad_()
    for double_softmax in (False, True):
        d_student.grad = None
        loss('KDCodebookCrossEntropyLoss', double_softmax=double_softmax)(d_student, d_teacher).backward()
        assert torch.isfinite(d_student.grad).all() and d_student.grad.abs().sum() > 0
        assert d_teacher.grad is None


def test_codebook_cross_entropy_refuses_mismatched_distances_and_bad_temperature():
    with pytest.raises(ValueError, match=r'student distances \(2, 5, 4\) and teacher distances \(2, 5, 3\)'):
        loss('KDCodebookCrossEntropyLoss')(fixed(2, 5, 4), fixed(2, 5, 3))
    with pytest.raises(ValueError, match='temperature must be positive'):
        loss('KDCodebookCrossEntropyLoss', temperature=0)
