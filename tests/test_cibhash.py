"""CIBHash objective: NT-Xent against a loop oracle, KL properties, and that it trains."""

from __future__ import annotations

import math

import numpy as np
import torch

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


def test_bernoulli_kl_zero_for_identical_and_positive_otherwise():
    p = torch.rand(8, 32)
    assert float(bernoulli_kl(p, p)) < 1e-6
    q = torch.rand(8, 32)
    kl = float(bernoulli_kl(p, q))
    # hand formula for one element
    p0, q0 = float(p[0, 0]), float(q[0, 0])
    one = p0 * math.log(p0 / q0) + (1 - p0) * math.log((1 - p0) / (1 - q0))
    assert one >= 0 and kl > 0


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
