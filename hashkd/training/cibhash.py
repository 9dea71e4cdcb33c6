"""CIBHash: the unsupervised hashing objective of the teacher (and of the student's own term).

Qiu, Su, Chen, Yin. "Unsupervised Hashing with Contrastive Information Bottleneck", IJCAI 2021.

    L_cib = NTXent(b1, b2; tau)
            + beta * 0.5 * [KL(Bern(p1) || Bern(sg p2)) + KL(Bern(p2) || Bern(sg p1))]

``b1, b2`` are the straight-through ±1 codes of two augmented views of the same images,
``p = sigmoid(u)`` the bit probabilities and ``sg`` the stop-gradient. NT-Xent (SimCLR,
Chen et al. ICML 2020) runs over the 2B codes with cosine similarity / tau: the positive of a
code is the other view of the same image, its negatives the other 2B - 2 codes.
KL(Bern(p) || Bern(q)) = sum_j p_j log(p_j/q_j) + (1-p_j) log((1-p_j)/(1-q_j)), batch mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-7


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Normalised-temperature cross entropy over the 2B rows of ``[z1; z2]``."""
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / tau
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


def bernoulli_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(Bern(p) || Bern(q)) summed over bits, averaged over the batch."""
    p = p.clamp(_EPS, 1 - _EPS)
    q = q.clamp(_EPS, 1 - _EPS)
    kl = p * (p.log() - q.log()) + (1 - p) * ((1 - p).log() - (1 - q).log())
    return kl.sum(dim=1).mean()


class CIBHashLoss(nn.Module):
    """The CIBHash objective on the logits ``u1, u2`` of two views (see module docstring)."""

    def __init__(self, tau: float = 0.3, beta: float = 0.001, stochastic: bool = False):
        super().__init__()
        self.tau = tau
        self.beta = beta
        # CIBHash's code samples b = sign(p - U), U ~ Uniform(0, 1); the deterministic
        # threshold 0.5 of docs/losses.md is the default.
        self.stochastic = stochastic

    def binarize(self, p: torch.Tensor) -> torch.Tensor:
        threshold = torch.rand_like(p) if (self.stochastic and self.training) else 0.5
        hard = torch.where(p > threshold, 1.0, -1.0).to(p.dtype)
        return p + (hard - p).detach()

    def forward(self, u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
        p1, p2 = torch.sigmoid(u1), torch.sigmoid(u2)
        b1, b2 = self.binarize(p1), self.binarize(p2)
        kl = 0.5 * (bernoulli_kl(p1, p2.detach()) + bernoulli_kl(p2, p1.detach()))
        return nt_xent(b1, b2, self.tau) + self.beta * kl
