"""info_nce / turbo_loss against hand-written formulas, and their limits."""

import math

import pytest
import torch
import torch.nn.functional as F

from turbo_ray.config import LossConfig
from turbo_ray.losses import LossWeights, _scale_grad, info_nce, objective, turbo_loss
from turbo_ray.model.turbo import TurboOutput


def naive_info_nce(u, v, tau):
    """Row-by-row InfoNCE written out with explicit sums, both directions averaged."""

    def unit(rows):
        return [[c / math.sqrt(sum(x * x for x in row)) for c in row] for row in rows.tolist()]

    u, v = unit(u), unit(v)
    sim = [[sum(a * b for a, b in zip(ui, vj)) / tau for vj in v] for ui in u]
    n = len(u)
    row = (
        sum(-sim[i][i] + math.log(sum(math.exp(sim[i][j]) for j in range(n))) for i in range(n)) / n
    )
    col = (
        sum(-sim[i][i] + math.log(sum(math.exp(sim[j][i]) for j in range(n))) for i in range(n)) / n
    )
    return 0.5 * (row + col)


@pytest.mark.parametrize("tau", [0.05, 0.5, 1.0])
def test_info_nce_matches_formula(tau):
    g = torch.Generator().manual_seed(1)
    u, v = (
        torch.randn(7, 5, generator=g, dtype=torch.float64),
        torch.randn(7, 5, generator=g, dtype=torch.float64),
    )
    assert info_nce(u, v, tau).item() == pytest.approx(
        naive_info_nce(u, v, tau), rel=1e-12, abs=1e-12
    )


def test_info_nce_is_symmetric_and_scale_invariant():
    g = torch.Generator().manual_seed(2)
    u, v = (
        torch.randn(6, 4, generator=g, dtype=torch.float64),
        torch.randn(6, 4, generator=g, dtype=torch.float64),
    )
    assert torch.allclose(info_nce(u, v, 0.1), info_nce(v, u, 0.1))
    assert torch.allclose(info_nce(3.0 * u, 0.5 * v, 0.1), info_nce(u, v, 0.1))


@pytest.mark.parametrize("pairs", [("11", "22", "12", "21"), ("11",), ("12", "21")])
def test_turbo_loss_matches_formula(pairs):
    g = torch.Generator().manual_seed(3)
    a1, a2, t1, t2 = (torch.randn(5, 8, generator=g, dtype=torch.float64) for _ in range(4))
    tau, w_in, w_cross = 0.2, 0.7, 1.3
    out = turbo_loss(a1, a2, t1, t2, tau, w_in, w_cross, cross_pairs=pairs)
    audio, text = {"1": a1, "2": a2}, {"1": t1, "2": t2}
    l_in = 0.5 * (naive_info_nce(a1, a2, tau) + naive_info_nce(t1, t2, tau))
    l_cross = sum(naive_info_nce(audio[p[0]], text[p[1]], tau) for p in pairs) / len(pairs)
    assert out["in"].item() == pytest.approx(l_in, rel=1e-12)
    assert out["cross"].item() == pytest.approx(l_cross, rel=1e-12)
    assert out["total"].item() == pytest.approx(w_in * l_in + w_cross * l_cross, rel=1e-12)


def test_aligned_well_separated_embeddings_give_near_zero_loss():
    x = (
        torch.eye(8, dtype=torch.float64) * 4.0
    )  # orthogonal rows, views identical across modalities
    out = turbo_loss(x, x.clone(), x.clone(), x.clone(), temperature=0.02, w_in=1.0, w_cross=1.0)
    assert out["total"].item() < 1e-6
    shuffled = x[torch.randperm(8, generator=torch.Generator().manual_seed(0))]
    assert turbo_loss(x, shuffled, x, x, 0.02, 1.0, 1.0)["in"].item() > 1.0


def test_temperature_tensor_gets_gradient():
    g = torch.Generator().manual_seed(4)
    u, v = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    log_tau = torch.tensor(math.log(0.1), requires_grad=True)
    info_nce(u, v, log_tau.exp()).backward()
    assert log_tau.grad is not None and log_tau.grad.abs().item() > 0


def test_losses_are_float32_under_bf16_autocast():
    # τ = 0.02 puts the logits at ±50, where bf16's spacing is 0.25: the losses must not be computed
    # there
    g = torch.Generator().manual_seed(5)
    a1, a2, t1, t2 = (torch.randn(16, 32, generator=g) for _ in range(4))
    exact = turbo_loss(*(x.double() for x in (a1, a2, t1, t2)), 0.02, 0.7, 1.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = turbo_loss(a1, a2, t1, t2, 0.02, 0.7, 1.3)
    for key in ("in", "cross", "total"):
        assert mixed[key].dtype == torch.float32
        assert mixed[key].item() == pytest.approx(exact[key].item(), rel=1e-5, abs=1e-5)

    # the classifier's cross-entropy too, on logits the encoders produced in bf16
    logits = (torch.randn(32, 4, generator=g) * 30).bfloat16()
    labels = torch.arange(16) % 4
    embeddings = torch.randn(2, 16, 8, generator=g).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = TurboOutput(logits, embeddings, embeddings.flip(1), torch.tensor(0.02))
        parts = objective(out, labels, LossWeights())
    exact_ce = F.cross_entropy(logits.double(), labels.repeat(2))
    assert parts["ce"].dtype == torch.float32
    assert parts["ce"].item() == pytest.approx(exact_ce.item(), rel=1e-6)


def test_scale_grad_keeps_the_value_exactly_in_low_precision():
    x = (
        (torch.randn(1000, generator=torch.Generator().manual_seed(6)) * 7)
        .bfloat16()
        .requires_grad_()
    )
    y = _scale_grad(x, 3)  # x·3 rounds in bf16: any form that multiplies the value loses it
    assert torch.equal(y, x)
    y.float().sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 3))


@pytest.mark.parametrize(
    "mode, expected",
    [("baseline", (0.0, 0.0)), ("in", (0.7, 0.0)), ("cross", (0.0, 1.3)), ("turbo", (0.7, 1.3))],
)
def test_the_ablation_mode_switches_terms_off(mode, expected):
    cfg = LossConfig(mode=mode, w_in=0.7, w_cross=1.3, cross_pairs=["11", "22"], gather=False)
    weights = LossWeights.from_config(cfg)
    assert (weights.w_in, weights.w_cross) == expected
    assert weights.cross_pairs == ("11", "22") and weights.gather is False
