"""CIBHash objective: NT-Xent against a loop oracle, KL properties, and that it trains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, kl_divergence

from hashkd.training.cibhash import CIBHashLoss, bernoulli_kl, nt_xent


def _nt_xent_oracle(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n, b = len(z), len(z1)
    total = 0.0
    for a in range(n):
        pos = (a + b) % n
        logits = [float(z[a] @ z[c]) / tau for c in range(n) if c != a]
        m = max(logits)
        lse = m + math.log(sum(math.exp(v - m) for v in logits))
        total += lse - float(z[a] @ z[pos]) / tau
    return total / n


def test_nt_xent_matches_loop_oracle():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    got = float(nt_xent(z1, z2, 0.3))
    assert math.isclose(got, _nt_xent_oracle(z1.numpy(), z2.numpy(), 0.3), rel_tol=1e-5)


def test_bernoulli_kl_equals_hand_values_and_torch_distributions():
    # one row worked by hand: sum over bits of p ln(p/q) + (1-p) ln((1-p)/(1-q))
    p = torch.tensor([[0.5, 0.9]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.5]], dtype=torch.float64)
    hand = (
        0.5 * math.log(0.5 / 0.25)
        + 0.5 * math.log(0.5 / 0.75)
        + 0.9 * math.log(0.9 / 0.5)
        + 0.1 * math.log(0.1 / 0.5)
    )
    assert hand == pytest.approx(0.511905, abs=1e-6)  # 0.143841 + 0.368064
    assert float(bernoulli_kl(p, q)) == pytest.approx(hand, abs=1e-12)
    # a batch: summed over bits, averaged over rows; oracle torch.distributions
    g = torch.Generator().manual_seed(2)
    p = torch.rand(5, 7, generator=g, dtype=torch.float64) * 0.98 + 0.01
    q = torch.rand(5, 7, generator=g, dtype=torch.float64) * 0.98 + 0.01
    oracle = kl_divergence(Bernoulli(probs=p), Bernoulli(probs=q)).sum(1).mean()
    assert float(bernoulli_kl(p, q)) == pytest.approx(float(oracle), abs=1e-10)
    assert float(bernoulli_kl(p, p)) == pytest.approx(0.0, abs=1e-12)
    assert float(bernoulli_kl(p, q)) != pytest.approx(float(bernoulli_kl(q, p)), abs=1e-6)


def test_kl_stop_gradient_is_on_the_target_side():
    """d/du1 of beta * 0.5 [KL(p1 || sg p2) + KL(p2 || sg p1)] is 0.5 beta p1 (1 - p1) (u1 - u2) / B:
    only KL(p1 || sg p2) reaches u1, and its derivative through p1 = sigmoid(u1) is
    (logit p1 - logit p2) p1 (1 - p1). With the stop-gradient on the other side it would be
    0.5 beta (p1 - p2) / B; without one, the sum of both."""
    g = torch.Generator().manual_seed(3)
    b, k = 4, 6
    u1 = torch.randn(b, k, generator=g, dtype=torch.float64)
    u2 = torch.randn(b, k, generator=g, dtype=torch.float64)

    def grads(beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        a, c = u1.clone().requires_grad_(True), u2.clone().requires_grad_(True)
        CIBHashLoss(beta=beta)(a, c).backward()
        return a.grad, c.grad

    (g1, g2), (n1, n2) = grads(2.0), grads(0.0)  # the difference is the KL term's gradient
    p1, p2 = torch.sigmoid(u1), torch.sigmoid(u2)
    want1 = 0.5 * 2.0 * p1 * (1 - p1) * (u1 - u2) / b
    want2 = 0.5 * 2.0 * p2 * (1 - p2) * (u2 - u1) / b
    np.testing.assert_allclose((g1 - n1).numpy(), want1.numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose((g2 - n2).numpy(), want2.numpy(), rtol=1e-6, atol=1e-9)
    swapped = 0.5 * 2.0 * (p1 - p2) / b  # what the gradient would be with sg on p1's side
    assert float((g1 - n1 - swapped).abs().max()) > 1e-3


def test_kl_term_vanishes_for_identical_views():
    u = torch.randn(6, 32)
    with_kl = CIBHashLoss(beta=1.0)(u, u.clone())
    without = CIBHashLoss(beta=0.0)(u, u.clone())
    assert torch.isclose(with_kl, without, atol=1e-6)


def test_loss_finite_and_decreases_on_fixed_batch():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
    x = torch.randn(32, 20)
    x1, x2 = x + 0.05 * torch.randn_like(x), x + 0.05 * torch.randn_like(x)
    loss_fn = CIBHashLoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = loss_fn(net(x1), net(x2))
        assert torch.isfinite(loss)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < first - 0.3
