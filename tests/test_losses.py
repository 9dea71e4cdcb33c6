"""The loss registry and the baseline distillation losses, against their invariants."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hashkd.losses import (
    DistillBatch,
    DistillLoss,
    build_loss,
    get_loss_class,
    list_losses,
    register_loss,
    resolve_weights,
    weight_table,
)
from hashkd.losses.rkd import angle_loss
from hashkd.losses.sp import batch_gram

EXPECTED = {
    "align",
    "brcd",
    "sp",
    "relative_teacher",
    "absolute_teacher",
    "rkd",
    "compress",
    "lsh",
    "crd",
}


def orthogonal(d: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q


def batch_of(s: torch.Tensor, t: torch.Tensor, **kw) -> DistillBatch:
    return DistillBatch(s1=s, t1=t, **kw)


def build_ready(
    name: str, student_dim: int, teacher_dim: int, n_data: int, teacher_codes: torch.Tensor
) -> DistillLoss:
    """Build a registered loss with the options it cannot do without, and fit it."""
    kwargs: dict = {"student_dim": student_dim, "teacher_dim": teacher_dim}
    if name == "brcd":
        kwargs.update(k=3, margin=0.1)
    if name == "compress":
        kwargs.update(memory_size=32)
    if name == "lsh":
        kwargs.update(num_hashes=64)
    loss = build_loss(name, **kwargs)
    loss.fit(teacher_codes)
    return loss


# -- registry ---------------------------------------------------------------------------------


def test_registry_lists_every_loss():
    assert set(list_losses()) == EXPECTED
    assert list_losses() == sorted(list_losses())


def test_build_loss_rejects_unknown_name_and_option():
    with pytest.raises(ValueError, match="not registered"):
        build_loss("nope")
    with pytest.raises(ValueError, match="no option 'temperature'"):
        build_loss("sp", temperature=3)


def test_register_loss_refuses_a_second_class_under_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):

        @register_loss("sp")
        class Other(DistillLoss):
            pass


def test_distill_batch_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="t1 has 3 rows"):
        DistillBatch(s1=torch.zeros(4, 8), t1=torch.zeros(3, 8))
    with pytest.raises(ValueError, match="index"):
        DistillBatch(s1=torch.zeros(4, 8), t1=torch.zeros(4, 8), index=torch.zeros(4))


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("student_dim", [16, 8])
def test_every_loss_runs_forward_backward(name: str, student_dim: int):
    torch.manual_seed(0)
    bsz, teacher_dim, n_data = 12, 16, 40
    teacher_codes = torch.randn(n_data, teacher_dim).sign()
    loss = build_ready(name, student_dim, teacher_dim, n_data, teacher_codes)
    index = torch.randperm(n_data)[:bsz]
    for _ in range(2):  # the second step runs with filled memories
        s1 = torch.randn(bsz, student_dim, requires_grad=True)
        s2 = torch.randn(bsz, student_dim, requires_grad=True)
        t1 = teacher_codes[index]
        t2 = torch.where(torch.rand(bsz, teacher_dim) < 0.1, -t1, t1)
        value = loss(DistillBatch(s1=s1, s2=s2, t1=t1, t2=t2, index=index))
        assert value.ndim == 0 and torch.isfinite(value)
        value.backward()
        assert s1.grad is not None and torch.isfinite(s1.grad).all()
    assert s1.grad.abs().sum() > 0  # (compress has no anchors, hence no gradient, on step one)
    for p in loss.parameters():  # learned projections / heads are trainable by the trainer
        assert p.requires_grad and p.grad is not None and torch.isfinite(p.grad).all()
    if student_dim != teacher_dim and loss.needs_same_dim:
        assert any(True for _ in loss.parameters())


def test_width_mismatch_without_dims_is_a_clear_error():
    loss = build_loss("align")
    with pytest.raises(ValueError, match="student width 8 and teacher width 16"):
        loss(batch_of(torch.randn(4, 8), torch.randn(4, 16)))


def test_features_input_needs_features():
    loss = build_loss("absolute_teacher", inputs="features")
    with pytest.raises(ValueError, match="s_feat"):
        loss(batch_of(torch.randn(4, 8), torch.randn(4, 8)))
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    value = loss(DistillBatch(s1=torch.randn(4, 8), t1=torch.randn(4, 8), s_feat=s, t_feat=t))
    assert torch.isclose(value, (F.normalize(s) - F.normalize(t)).norm(dim=1).mean(), atol=1e-6)


# -- align ------------------------------------------------------------------------------------


def test_align_zero_when_equal_and_two_when_opposite():
    t = torch.randn(6, 16).sign()
    loss = build_loss("align")
    assert float(loss(batch_of(t.clone(), t))) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(batch_of(3.0 * t, t))) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(batch_of(-t, t))) == pytest.approx(2.0, abs=1e-6)
    # one view equal, the other opposite: the mean over views
    value = loss(DistillBatch(s1=t, t1=t, s2=-t, t2=t))
    assert float(value) == pytest.approx(1.0, abs=1e-6)


# -- sp ---------------------------------------------------------------------------------------


def test_sp_hand_example_uses_the_batch_gram():
    # teacher f_t (B=3, d=2), student f_s (B=3, d=1):
    # G_t = [[1,0,1],[0,1,1],[1,1,2]] -> rows / [sqrt2, sqrt2, sqrt6]
    # G_s = [[1,1,0],[1,1,0],[0,0,0]] -> rows / [sqrt2, sqrt2, 1 (zero row stays 0)]
    # squared row differences: 1/2+1/2, 1/2+1/2, (1+1+4)/6 -> total 3, / B^2 = 1/3
    f_t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    f_s = torch.tensor([[1.0], [1.0], [0.0]])
    assert batch_gram(f_t).shape == (3, 3)
    r2, r6 = 1 / math.sqrt(2), 1 / math.sqrt(6)
    expected_gt = torch.tensor([[r2, 0, r2], [0, r2, r2], [r6, r6, 2 * r6]])
    assert torch.allclose(batch_gram(f_t), expected_gt, atol=1e-6)
    assert float(build_loss("sp")(batch_of(f_s, f_t))) == pytest.approx(1 / 3, abs=1e-6)


def test_sp_zero_under_scale_and_rotation_and_positive_otherwise():
    g = torch.Generator().manual_seed(1)
    f_t = torch.randn(10, 16, generator=g, dtype=torch.float64)
    loss = build_loss("sp")
    rotated = 2.5 * f_t @ orthogonal(16)
    assert float(loss(batch_of(rotated, f_t))) == pytest.approx(0.0, abs=1e-12)
    wider = f_t @ orthogonal(24)[:16]  # 16 -> 24 dims with orthonormal rows: same Gram
    assert float(loss(batch_of(wider, f_t))) == pytest.approx(0.0, abs=1e-12)
    assert float(loss(batch_of(torch.randn(10, 16, generator=g, dtype=torch.float64), f_t))) > 1e-3


# -- relative / absolute teacher ----------------------------------------------------------------


def test_relative_teacher_rotation_invariant_and_zero_when_equal():
    g = torch.Generator().manual_seed(2)
    f_t = torch.randn(8, 12, generator=g, dtype=torch.float64)
    f_s = torch.randn(8, 12, generator=g, dtype=torch.float64)
    loss = build_loss("relative_teacher")
    base = float(loss(batch_of(f_s, f_t)))
    assert base > 0.1
    assert float(loss(batch_of(f_s @ orthogonal(12, 3), f_t))) == pytest.approx(base, rel=1e-9)
    assert float(loss(batch_of(f_t.clone(), f_t))) == pytest.approx(0.0, abs=1e-9)
    # the authors' code form: Frobenius norm of the distance difference, brute force
    s, t = F.normalize(f_s).numpy(), F.normalize(f_t).numpy()
    ds = np.array([[np.linalg.norm(a - b) for b in s] for a in s])
    dt = np.array([[np.linalg.norm(a - b) for b in t] for a in t])
    assert base == pytest.approx(np.sqrt(((ds - dt) ** 2).sum()), rel=1e-6)


def test_absolute_teacher_zero_when_equal_and_hand_value():
    t = torch.randn(5, 8)
    loss = build_loss("absolute_teacher")
    assert float(loss(batch_of(t.clone(), t))) == pytest.approx(0.0, abs=1e-5)
    # orthogonal unit vectors are sqrt(2) apart
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t2 = torch.tensor([[0.0, 1.0], [0.0, 5.0]])
    assert float(loss(batch_of(s, t2))) == pytest.approx((math.sqrt(2) + 0.0) / 2, abs=1e-5)


def test_absolute_teacher_projection_is_learned():
    loss = build_loss("absolute_teacher", student_dim=4, teacher_dim=8)
    params = list(loss.parameters())
    assert params and all(p.requires_grad for p in params)
    value = loss(batch_of(torch.randn(6, 4), torch.randn(6, 8)))
    value.backward()
    assert loss.proj.weight.grad is not None and loss.proj.weight.grad.abs().sum() > 0


# -- rkd --------------------------------------------------------------------------------------


def test_rkd_zero_for_a_similarity_transform_of_the_teacher():
    g = torch.Generator().manual_seed(4)
    f_t = torch.randn(9, 10, generator=g, dtype=torch.float64)
    loss = build_loss("rkd")
    transformed = 0.3 * f_t @ orthogonal(10, 5) + 7.0
    assert float(loss(batch_of(transformed, f_t))) == pytest.approx(0.0, abs=1e-10)
    wider = 4.0 * f_t @ orthogonal(14, 6)[:10]
    assert float(loss(batch_of(wider, f_t))) == pytest.approx(0.0, abs=1e-10)
    other = torch.randn(9, 10, generator=g, dtype=torch.float64)
    assert float(loss(batch_of(other, f_t))) > 1e-3


def test_rkd_distance_term_matches_brute_force():
    g = torch.Generator().manual_seed(7)
    s, t = (
        torch.randn(5, 3, generator=g, dtype=torch.float64),
        torch.randn(5, 3, generator=g, dtype=torch.float64),
    )
    loss = build_loss("rkd", w_dist=1.0, w_angle=0.0)

    def psi(x):
        x = x.numpy()
        d = np.array([[np.linalg.norm(a - b) for b in x] for a in x])
        return d / d[d > 0].mean()

    diff = np.abs(psi(s) - psi(t))
    smooth_l1 = np.where(diff < 1, 0.5 * diff**2, diff - 0.5).mean()
    assert float(loss(batch_of(s, t))) == pytest.approx(smooth_l1, rel=1e-6)


def rkd_angle_oracle(s: np.ndarray, t: np.ndarray) -> float:
    """Loop over the B^3 triplets; a triplet is skipped when x_j - x_i or x_k - x_i is zero
    for either network; the sum is divided by B^3 (the authors' mean over all entries)."""
    n = s.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            for k in range(n):
                legs = [x[m] - x[i] for x in (s, t) for m in (j, k)]
                if any(np.linalg.norm(v) == 0 for v in legs):
                    continue
                a_s = legs[0] @ legs[1] / (np.linalg.norm(legs[0]) * np.linalg.norm(legs[1]))
                a_t = legs[2] @ legs[3] / (np.linalg.norm(legs[2]) * np.linalg.norm(legs[3]))
                d = abs(a_s - a_t)
                total += 0.5 * d * d if d < 1 else d - 0.5
    return total / n**3


def test_rkd_angle_term_matches_brute_force_without_and_with_duplicates():
    g = torch.Generator().manual_seed(8)
    s = torch.randn(6, 5, generator=g, dtype=torch.float64)
    t = torch.randn(6, 5, generator=g, dtype=torch.float64)
    # without duplicates: the paper's psi_A with F.normalize over all B^3 entries
    e_s = F.normalize(s[None] - s[:, None], dim=2)
    e_t = F.normalize(t[None] - t[:, None], dim=2)
    paper = F.smooth_l1_loss(e_s @ e_s.transpose(1, 2), e_t @ e_t.transpose(1, 2))
    assert float(angle_loss(s, t)) == pytest.approx(float(paper), rel=1e-10)
    assert float(angle_loss(s, t)) == pytest.approx(rkd_angle_oracle(s.numpy(), t.numpy()))
    s[3], t[4] = s[1], t[0]  # a duplicate student row and another duplicate teacher row
    assert float(angle_loss(s, t)) == pytest.approx(rkd_angle_oracle(s.numpy(), t.numpy()))


def test_rkd_duplicate_codes_give_a_bounded_gradient():
    """Two images with the same straight-through code: x_j - x_i is 0 up to rounding."""
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(8, 16, generator=g) * 2
    logits[5] = logits[2].sign() * torch.rand(16, generator=g)  # same signs, other values
    p = torch.sigmoid(logits).requires_grad_(True)
    codes = ste_codes(p)
    assert torch.equal(codes[5].detach().sign(), codes[2].detach().sign())
    teacher = torch.randn(8, 16, generator=g).sign()
    value = build_loss("rkd")(batch_of(codes, teacher))
    value.backward()
    assert torch.isfinite(value) and float(p.grad.norm()) < 1.0
    # the duplicate pair's distance is exactly 0 and the other distances are untouched
    from hashkd.losses.rkd import normalized_distances

    d = normalized_distances(codes.detach())
    assert float(d[2, 5]) == 0.0 and bool((d[~torch.eye(8, dtype=torch.bool)] > 0).sum() == 54)


# -- compress ---------------------------------------------------------------------------------


def test_compress_kl_nonnegative_and_zero_for_identical_rows():
    g = torch.Generator().manual_seed(8)
    loss = build_loss("compress", memory_size=64)
    first = torch.randn(16, 8, generator=g)
    assert float(loss(batch_of(first, first))) == 0.0  # empty memory: nothing to compare yet
    x = torch.randn(16, 8, generator=g)
    # student == teacher and both banks hold the same vectors: identical similarity rows
    assert float(loss(batch_of(x, x))) == pytest.approx(0.0, abs=1e-6)
    for _ in range(5):
        value = loss(batch_of(torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)))
        assert float(value) >= 0.0
    assert float(value) > 1e-3


def test_compress_enqueues_after_the_loss_fifo():
    g = torch.Generator().manual_seed(9)
    tau = 0.5
    loss = build_loss("compress", memory_size=5, tau_s=tau, tau_t=tau)
    a_s, a_t = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    loss(batch_of(a_s, a_t))
    b_s, b_t = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    value = loss(batch_of(b_s, b_t))
    # oracle: anchors are only batch a (b was enqueued after its own loss)
    q, k = F.normalize(b_s).numpy(), F.normalize(b_t).numpy()
    ms, mt = F.normalize(a_s).numpy(), F.normalize(a_t).numpy()

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    pt, ps = softmax(k @ mt.T / tau), softmax(q @ ms.T / tau)
    assert float(value) == pytest.approx(float((pt * np.log(pt / ps)).sum(axis=1).mean()), rel=1e-5)
    # FIFO: 6 rows written into 5 slots; the oldest (a[0]) was overwritten by b[2]
    assert int(loss.filled) == 5 and int(loss.ptr) == 1
    expected = torch.cat([F.normalize(b_t)[2:3], F.normalize(a_t)[1:], F.normalize(b_t)[:2]])
    assert torch.allclose(loss.bank_t, expected, atol=1e-6)


def test_compress_does_not_enqueue_in_eval_mode():
    loss = build_loss("compress", memory_size=8).eval()
    loss(batch_of(torch.randn(4, 4), torch.randn(4, 4)))
    assert int(loss.filled) == 0


# -- lsh --------------------------------------------------------------------------------------


def test_lsh_fit_sets_median_bias():
    g = torch.Generator().manual_seed(10)
    feats = torch.randn(101, 12, generator=g)
    loss = build_loss("lsh", inputs="features", num_hashes=32, teacher_dim=12)
    loss.fit(torch.zeros(101, 8), teacher_features=feats)
    fires = (loss.hash_values(feats) > 0).sum(dim=0)
    assert torch.equal(fires, torch.full((32,), 50))  # median of 101 values: 50 strictly above


def test_lsh_gradient_moves_student_to_teacher_side():
    g = torch.Generator().manual_seed(11)
    loss = build_loss("lsh", num_hashes=256, mse_weight=0.0, teacher_dim=16)
    t = torch.randn(8, 16, generator=g)
    loss.fit(torch.randn(200, 16, generator=g))
    s = torch.randn(8, 16, generator=g, requires_grad=True)
    y = (loss.hash_values(t) > 0).float() * 2 - 1

    def agreement(x):
        h = loss.hash_values(x)
        return float(((h > 0).float() * 2 - 1 == y).float().mean()), float((y * h).sum())

    before, margin_before = agreement(s.detach())
    loss(batch_of(s, t)).backward()
    with torch.no_grad():
        stepped = s - 0.5 * s.grad
    after, margin_after = agreement(stepped)
    assert after > before and margin_after > margin_before


def test_lsh_is_not_zero_at_equality_but_its_mse_part_is():
    t = torch.randn(6, 8)
    loss = build_loss("lsh", num_hashes=64)
    value = float(loss(batch_of(t.clone(), t)))
    h = loss.hash_values(t)
    assert value == pytest.approx(
        6.0 * float(F.binary_cross_entropy_with_logits(h, (h > 0).float())), rel=1e-5
    )


# -- crd --------------------------------------------------------------------------------------


def test_crd_memory_rows_stay_unit_norm_and_only_batch_rows_move():
    g = torch.Generator().manual_seed(12)
    loss = build_loss("crd", student_dim=8, teacher_dim=16, n_data=30, num_negatives=10)
    before = loss.mem_s.clone()
    index = torch.tensor([3, 7, 11, 12])
    for _ in range(3):
        value = loss(
            DistillBatch(
                s1=torch.randn(4, 8, generator=g), t1=torch.randn(4, 16, generator=g), index=index
            )
        )
        assert torch.isfinite(value)
    for memory in (loss.mem_s, loss.mem_t):
        assert torch.allclose(memory.norm(dim=1), torch.ones(30), atol=1e-5)
    untouched = torch.ones(30, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(loss.mem_s[untouched], before[untouched])
    assert not torch.allclose(loss.mem_s[index], before[index])


def test_crd_momentum_update_rule():
    loss = build_loss("crd", student_dim=4, teacher_dim=4, n_data=10, num_negatives=3, momentum=0.5)
    index = torch.tensor([2, 5])
    s, t = torch.randn(2, 4), torch.randn(2, 4)
    old = loss.mem_s[index].clone()
    with torch.no_grad():
        e = loss.embed_s(s)
    loss(DistillBatch(s1=s, t1=t, index=index))
    assert torch.allclose(loss.mem_s[index], F.normalize(0.5 * old + 0.5 * e, dim=1), atol=1e-6)


def test_crd_needs_indices_and_dims():
    with pytest.raises(ValueError, match="student_dim and teacher_dim"):
        build_loss("crd")
    loss = build_loss("crd", student_dim=4, teacher_dim=4, n_data=10)
    with pytest.raises(ValueError, match="DistillBatch.index"):
        loss(batch_of(torch.randn(2, 4), torch.randn(2, 4)))
    with pytest.raises(ValueError, match="outside"):
        loss(batch_of(torch.randn(2, 4), torch.randn(2, 4), index=torch.tensor([0, 10])))


# -- every registered loss on the codes training really produces --------------------------------


def ste_codes(p: torch.Tensor) -> torch.Tensor:
    """Straight-through ±1 codes of probabilities p, as ``CIBHashLoss.binarize`` (eval)."""
    return p + (torch.where(p > 0.5, 1.0, -1.0) - p).detach()


def duplicate_logits(bsz: int, bits: int, distinct: int, g: torch.Generator) -> torch.Tensor:
    """Logits whose signs repeat every ``distinct`` rows while their values all differ."""
    signs = torch.randn(distinct, bits, generator=g).sign()[torch.arange(bsz) % distinct]
    return signs * (0.05 + 3.0 * torch.rand(bsz, bits, generator=g))


def teacher_codes_for(case: str, bsz: int, bits: int, g: torch.Generator) -> torch.Tensor:
    if case in ("teacher_all_equal", "both_all_equal"):
        return torch.ones(bsz, bits)
    if case == "duplicates_both":
        return torch.randn(3, bits, generator=g).sign()[torch.arange(bsz) % 3]
    return torch.randn(bsz, bits, generator=g).sign()


STUDENT_DISTINCT = {
    "student_duplicates": 4,
    "duplicates_both": 4,
    "student_all_equal": 1,
    "teacher_all_equal": None,
    "both_all_equal": 1,
}


@pytest.mark.parametrize("case", sorted(STUDENT_DISTINCT))
@pytest.mark.parametrize("name", list_losses())  # a newly registered loss is covered too
@pytest.mark.parametrize("student_dim", [32, 16])
def test_every_loss_is_finite_on_duplicate_and_equal_codes(name, case, student_dim):
    bsz, teacher_dim, n_data = 24, 32, 64
    g = torch.Generator().manual_seed(11)
    t1 = teacher_codes_for(case, bsz, teacher_dim, g)
    t2 = t1.clone()
    train_codes = torch.randn(n_data, teacher_dim, generator=g).sign()
    train_codes[:bsz] = t1
    loss = build_ready(name, student_dim, teacher_dim, n_data, train_codes)
    index = torch.arange(bsz)
    distinct = STUDENT_DISTINCT[case]
    for _ in range(2):  # the second step runs with filled memories (compress, crd)
        views = [
            torch.randn(bsz, student_dim, generator=g)
            if distinct is None
            else duplicate_logits(bsz, student_dim, distinct, g)
            for _ in range(2)
        ]
        logits = [v.requires_grad_(True) for v in views]
        p1, p2 = (torch.sigmoid(u) for u in logits)
        p1.retain_grad()
        s1, s2 = ste_codes(p1), ste_codes(p2)
        value = loss(DistillBatch(s1=s1, s2=s2, t1=t1, t2=t2, index=index))
        assert value.ndim == 0 and torch.isfinite(value), f"{name} on {case}: loss {value}"
        value.backward()
        assert p1.grad is not None and logits[0].grad is not None
        # view 2 is unread by brcd and crd: no gradient there is right
        grads = [p1.grad, logits[0].grad] + [gr for gr in [logits[1].grad] if gr is not None]
        for grad in grads:
            assert torch.isfinite(grad).all()
            assert float(grad.norm()) < 1e3, f"{name} on {case}: gradient norm {grad.norm()}"


# -- default weights ----------------------------------------------------------------------------


def test_paper_default_weights():
    assert get_loss_class("sp").default_weight == 3000.0  # Tung & Mori 2019
    rkd = build_loss("rkd")
    weight = get_loss_class("rkd").default_weight
    assert (weight * rkd.w_dist, weight * rkd.w_angle) == (25.0, 50.0)  # Park et al. 2019
    assert get_loss_class("crd").default_weight == 0.8  # Tian et al. 2020
    for name in list_losses():
        cls = get_loss_class(name)
        assert cls.default_weight > 0 and cls.default_weight_note


def test_default_weights_table_in_docs_matches_the_registry():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "losses.md").read_text()
    section = text.split("### Default weights", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0] in list_losses():
            rows[cells[0]] = float(cells[1])
    assert rows == {n: get_loss_class(n).default_weight for n in list_losses()}


def test_resolve_weights_and_weight_table():
    assert resolve_weights(["sp", "crd"]) == [3000.0, 0.8]
    assert resolve_weights(["sp", "crd"], [1, 2]) == [1.0, 2.0]
    with pytest.raises(ValueError, match="2 losses"):
        resolve_weights(["sp", "crd"], [1.0])
    table = weight_table(["sp", "align"])
    assert [r["weight"] for r in table] == [3000.0, 1.0]
    assert "Tung & Mori" in table[0]["source"] and "sweep" in table[1]["source"]
    assert weight_table(["sp"], [2.0])[0] == {
        "loss": "sp",
        "weight": 2.0,
        "source": "--loss-weights",
    }


def test_distill_help_lists_every_registered_loss_and_its_weight():
    from hashkd.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["distill"].format_help().split())
    for name in list_losses():
        assert f"{name} ({get_loss_class(name).default_weight:g})" in text
