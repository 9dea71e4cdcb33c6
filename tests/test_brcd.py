"""BRCD against a loop-by-loop numpy oracle of the BRCD objective (docs/losses.md) and against its invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hashkd.clustering import ClusterResult, cluster_means, cluster_teacher_codes
from hashkd.losses import DistillBatch, build_loss

TAU = 0.3
OFF = {"use_cluster_filter": False, "use_offset_positive": False, "use_bit_mask": False}


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def oracle_rows(
    s1,
    t1,
    t2,
    alpha,
    tau=TAU,
    clusters=None,
    masks=None,
    centres=None,
    use_filter=False,
    mask_mode="anchor",
    offset_codes=None,
):
    """The BRCD objective written out with explicit loops (float64 numpy). ``offset_codes``:
    the teacher codes of view 2 for the offset test (default ``t2``)."""
    s1, t1, t2 = (np.asarray(x, dtype=np.float64) for x in (s1, t1, t2))
    offset_codes = t2 if offset_codes is None else np.asarray(offset_codes, dtype=np.float64)
    bsz = s1.shape[0]
    z = np.concatenate([s1, t2])
    cz = None if clusters is None else np.concatenate([clusters, clusters])

    def sim(a, b):
        if masks is None:
            return cos(z[a], z[b]) / tau
        if mask_mode == "own":  # each vector with its own image's cluster mask
            return cos(masks[cz[a]] * z[a], masks[cz[b]] * z[b]) / tau
        m = masks[cz[a]]  # the anchor row's mask on both vectors
        return cos(m * z[a], m * z[b]) / tau

    alphas = np.full(bsz, float(alpha))
    if centres is not None:
        for k in range(bsz):
            nearest = int(np.argmin(((centres - offset_codes[k]) ** 2).sum(axis=1)))
            if nearest != clusters[k]:
                alphas[k] = 1.0
    rows = []
    for a in range(2 * bsz):
        k = a % bsz
        pos = alphas[k] * cos(s1[k], t1[k]) / tau + (1 - alphas[k]) * sim(k, bsz + k)
        total = np.exp(pos)
        for b in range(2 * bsz):
            if b == a or b == (a + bsz) % (2 * bsz):
                continue
            if use_filter and cz[a] == cz[b]:
                continue
            total += np.exp(sim(a, b))
        rows.append(-np.log(np.exp(pos) / total))
    return np.array(rows)


def nt_xent_oracle(u, v, tau=TAU):
    """SimCLR's NT-Xent between u and v: cross-entropy over the 2B-1 other rows."""
    z = np.concatenate([u, v]).astype(np.float64)
    n = z.shape[0]
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    logits = zn @ zn.T / tau
    out = []
    for a in range(n):
        others = [b for b in range(n) if b != a]
        positive = (a + n // 2) % n
        out.append(-logits[a, positive] + np.log(np.exp(logits[a, others]).sum()))
    return np.array(out)


def random_batch(bsz=6, bits=16, seed=0, flip=0.2):
    g = torch.Generator().manual_seed(seed)
    t1 = torch.randn(bsz, bits, generator=g).sign()
    t2 = torch.where(torch.rand(bsz, bits, generator=g) < flip, -t1, t1)
    s1 = torch.randn(bsz, bits, generator=g, dtype=torch.float64).requires_grad_(True)
    return s1, t1.double(), t2.double()


def hand_clusters():
    """Two clusters of 8-bit codes with known means.

    cluster 0: mean [1, 1, 1, 1, 0, 0, 0, 0]      -> margin 0.5 keeps bits 0-3
    cluster 1: mean [-1, -1, 0, 0, -1, -1, -1, -1] -> margin 0.5 keeps bits 0, 1, 4-7
    """
    c0 = np.array([[1, 1, 1, 1, 1, -1, 1, -1], [1, 1, 1, 1, -1, 1, -1, 1]], dtype=np.float32)
    c1 = np.array(
        [[-1, -1, -1, -1, -1, -1, -1, -1], [-1, -1, 1, 1, -1, -1, -1, -1]], dtype=np.float32
    )
    codes = np.concatenate([c0, c1])
    labels = np.array([0, 0, 1, 1])
    means = cluster_means(codes, labels, 2)
    np.testing.assert_allclose(
        means, [[1, 1, 1, 1, 0, 0, 0, 0], [-1, -1, 0, 0, -1, -1, -1, -1]], atol=1e-12
    )
    return ClusterResult(labels=labels, centres=means, means=means, teacher="hand", seed=0)


def test_all_switches_off_equals_nt_xent_at_alpha_zero():
    s1, t1, t2 = random_batch()
    loss = build_loss("brcd", alpha=0.0, tau=TAU, **OFF)
    rows = loss.row_losses(DistillBatch(s1=s1, t1=t1, t2=t2))
    np.testing.assert_allclose(
        rows.detach().numpy(),
        nt_xent_oracle(s1.detach().numpy(), t2.numpy()),
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.8, 1.0])
def test_all_switches_off_matches_loop_oracle(alpha):
    s1, t1, t2 = random_batch(seed=1)
    loss = build_loss("brcd", alpha=alpha, tau=TAU, **OFF)
    value = loss(DistillBatch(s1=s1, t1=t1, t2=t2))
    expected = oracle_rows(s1.detach().numpy(), t1.numpy(), t2.numpy(), alpha)
    assert float(value.detach()) == pytest.approx(expected.mean(), rel=1e-10)


def assert_full_brcd_matches_oracle(result, s1, t1, t2, c, mask_mode, offset_codes=None):
    """Full BRCD (alpha 0.4, margin 0.5, every switch on) row by row against the loop oracle;
    returns the loss."""
    loss = build_loss("brcd", alpha=0.4, margin=0.5, clusters=result, mask_mode=mask_mode)
    rows = loss.row_losses(DistillBatch(s1=s1, t1=t1, t2=t2, cluster=c))
    expected = oracle_rows(
        s1.detach().numpy(),
        t1.numpy(),
        t2.numpy(),
        0.4,
        clusters=c.numpy(),
        masks=result.bit_mask(0.5).astype(np.float64),
        centres=result.centres,
        use_filter=True,
        mask_mode=mask_mode,
        offset_codes=offset_codes,
    )
    np.testing.assert_allclose(rows.detach().numpy(), expected, rtol=1e-9, atol=1e-12)
    return loss


@pytest.mark.parametrize("mask_mode", ["anchor", "own"])
def test_full_brcd_matches_loop_oracle(mask_mode):
    result = hand_clusters()
    g = torch.Generator().manual_seed(3)
    c = torch.tensor([0, 1, 0, 1, 1, 0])
    proto = torch.where(torch.as_tensor(result.means) >= 0, 1.0, -1.0)  # ±1 teacher codes
    t1 = torch.where(torch.rand(6, 8, generator=g) < 0.15, -proto[c], proto[c]).double()
    t2 = t1.clone()
    t2[2] = -1.0  # image 2 (cluster 0) is nearest the centre of cluster 1 after augmentation
    s1 = torch.randn(6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    loss = assert_full_brcd_matches_oracle(result, s1, t1, t2, c, mask_mode)
    offset = loss.offset_mask(t2, c)
    assert bool(offset[2]) and not bool(offset.all())


@pytest.mark.parametrize("mask_mode", ["anchor", "own"])
def test_on_logits_similarities_are_cosines_of_logits_and_the_offset_test_uses_their_signs(
    mask_mode,
):
    """``kd_inputs="logits"``: the oracle on the raw logits, with the offset test on their signs.
    Image 0 (cluster 0) is the hand case where the two differ: its view-2 logits
    [0.1 x 4, -3 x 4] have signs nearest cluster 0's centre, the raw values nearest cluster 1's."""
    result = hand_clusters()
    g = torch.Generator().manual_seed(5)
    c = torch.tensor([0, 1, 0, 1, 1, 0])
    proto = torch.where(torch.as_tensor(result.means) >= 0, 1.0, -1.0).double()
    t1 = proto[c] * (0.2 + 2 * torch.rand(6, 8, generator=g, dtype=torch.float64))
    t2 = t1 + 0.8 * torch.randn(6, 8, generator=g, dtype=torch.float64)
    t2[0] = torch.tensor([0.1] * 4 + [-3.0] * 4, dtype=torch.float64)
    s1 = torch.randn(6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    centres = np.asarray(result.centres, dtype=np.float64)
    raw_nearest = np.argmin(((centres - t2[0].numpy()) ** 2).sum(axis=1))
    assert raw_nearest == 1  # the raw logits would call image 0 an offset view
    t2_codes = np.where(t2.numpy() > 0, 1.0, -1.0)
    loss = assert_full_brcd_matches_oracle(result, s1, t1, t2, c, mask_mode, offset_codes=t2_codes)
    codes_offset = loss.offset_mask(torch.from_numpy(t2_codes), c)
    assert torch.equal(loss.offset_mask(t2, c), codes_offset) and not bool(codes_offset[0])


def test_fit_on_logits_clusters_their_signs():
    """The offline stage given the teacher's logits equals the one given its ±1 codes."""
    rng = np.random.default_rng(11)
    protos = np.sign(rng.standard_normal((4, 16)))
    labels = rng.integers(0, 4, size=80)
    logits = protos[labels] * rng.uniform(0.05, 3.0, size=(80, 16))
    logits[rng.random((80, 16)) < 0.1] *= -1
    on_logits = build_loss("brcd", k=4, seed=2, margin=0.3)
    on_codes = build_loss("brcd", k=4, seed=2, margin=0.3)
    on_logits.fit(torch.from_numpy(logits.astype(np.float32)))
    on_codes.fit(torch.from_numpy(np.where(logits > 0, 1.0, -1.0).astype(np.float32)))
    assert torch.equal(on_logits.cluster_labels, on_codes.cluster_labels)
    assert torch.equal(on_logits.masks, on_codes.masks)
    np.testing.assert_allclose(on_logits.centres.numpy(), on_codes.centres.numpy(), atol=1e-6)
    assert float(np.abs(on_logits.centres.numpy()).max()) <= 1.0 + 1e-6  # means of ±1 codes


def test_same_cluster_negatives_leave_the_row_unchanged():
    s1, t1, t2 = random_batch(seed=4)
    c = torch.tensor([0, 1, 0, 2, 1, 2])
    loss = build_loss(
        "brcd", alpha=0.5, use_cluster_filter=True, use_offset_positive=False, use_bit_mask=False
    )
    base = loss.row_losses(DistillBatch(s1=s1, t1=t1, t2=t2, cluster=c)).detach()
    moved = s1.detach().clone()
    moved[2] = torch.randn(16, dtype=torch.float64)  # sample 2 shares cluster 0 with sample 0
    t2_moved = t2.clone()
    t2_moved[2] = -t2_moved[2]
    after = loss.row_losses(DistillBatch(s1=moved, t1=t1, t2=t2_moved, cluster=c)).detach()
    assert after[0] == pytest.approx(float(base[0]), rel=1e-12)  # row 0: anchored on s1_0
    assert after[6] == pytest.approx(float(base[6]), rel=1e-12)  # row B+0: anchored on t2_0
    assert abs(float(after[1] - base[1])) > 1e-6  # row 1 (cluster 1) does see sample 2
    # without the filter, row 0 does change
    plain = build_loss("brcd", alpha=0.5, **OFF)
    a = plain.row_losses(DistillBatch(s1=s1.detach(), t1=t1, t2=t2))[0]
    b = plain.row_losses(DistillBatch(s1=moved, t1=t1, t2=t2_moved))[0]
    assert abs(float(a - b)) > 1e-6


def test_one_cluster_keeps_the_positive_and_gives_zero():
    s1, t1, t2 = random_batch(seed=5)
    loss = build_loss(
        "brcd", use_cluster_filter=True, use_offset_positive=False, use_bit_mask=False
    )
    rows = loss.row_losses(
        DistillBatch(s1=s1, t1=t1, t2=t2, cluster=torch.zeros(6, dtype=torch.long))
    )
    assert torch.all(torch.isfinite(rows)) and torch.allclose(rows, torch.zeros_like(rows))


def test_bit_mask_on_hand_made_cluster():
    codes = np.array([[1, 1, 1, 1], [1, 1, -1, 1], [1, -1, 1, -1], [1, 1, 1, -1]], dtype=np.float32)
    # bit means: 1, 0.5, 0.5, 0
    means = cluster_means(codes, np.zeros(4, dtype=np.int64), 1)
    np.testing.assert_allclose(means[0], [1.0, 0.5, 0.5, 0.0], atol=1e-12)
    result = ClusterResult(labels=np.zeros(4), centres=means, means=means, teacher="hand", seed=0)
    assert result.bit_mask(0.4).tolist() == [[True, True, True, False]]
    assert result.bit_mask(0.5).tolist() == [[True, False, False, False]]  # strict: |mu| > margin
    assert result.bit_mask(0.0).tolist() == [[True, True, True, False]]
    loss = build_loss("brcd", margin=0.4, clusters=result)
    assert loss.masks.tolist() == [[1.0, 1.0, 1.0, 0.0]]


def test_cluster_agreeing_on_no_bit_keeps_all_bits():
    codes = np.array([[1, -1], [-1, 1]], dtype=np.float32)
    means = cluster_means(codes, np.zeros(2, dtype=np.int64), 1)
    result = ClusterResult(labels=np.zeros(2), centres=means, means=means, teacher="t", seed=0)
    assert not result.bit_mask(0.5).any()
    assert build_loss("brcd", margin=0.5, clusters=result).masks.tolist() == [[1.0, 1.0]]


def test_masked_bit_does_not_change_masked_similarities():
    result = hand_clusters()  # at margin 0.5 cluster 0 keeps bits 0-3, cluster 1 bits 0, 1, 4-7
    s1, t1, t2 = random_batch(bsz=4, bits=8, seed=6)
    c = torch.tensor([0, 1, 0, 1])
    loss = build_loss(
        "brcd", margin=0.5, clusters=result, use_cluster_filter=False, use_offset_positive=False
    )
    sim = loss.similarity_matrix(DistillBatch(s1=s1, t1=t1, t2=t2, cluster=c)).detach()
    s1b, t2b = s1.detach().clone(), t2.clone()
    s1b[:, 5] = -s1b[:, 5] * 3.0  # bits 5 and 6 are masked for cluster 0 only
    t2b[:, 6] = -t2b[:, 6]
    sim_b = loss.similarity_matrix(DistillBatch(s1=s1b, t1=t1, t2=t2b, cluster=c)).detach()
    rows0 = torch.tensor([0, 2, 4, 6])  # rows anchored on cluster-0 images (s1 and t2 halves)
    rows1 = torch.tensor([1, 3, 5, 7])
    assert torch.allclose(sim[rows0], sim_b[rows0], atol=1e-12)
    assert not torch.allclose(sim[rows1], sim_b[rows1])
    # and a masked similarity is the cosine of the masked vectors
    z = torch.cat([s1.detach(), t2]).numpy()
    m = result.bit_mask(0.5)[0].astype(np.float64)
    assert float(sim[0, 5]) == pytest.approx(cos(m * z[0], m * z[5]) / TAU, rel=1e-10, abs=1e-12)


def test_bit_mask_leaves_the_same_view_term_alone():
    result = hand_clusters()
    s1, t1, t2 = random_batch(bsz=4, bits=8, seed=7)
    c = torch.tensor([0, 1, 0, 1])
    # alpha = 1: only the same-view term in the positive
    masked = build_loss(
        "brcd",
        alpha=1.0,
        margin=0.5,
        clusters=result,
        use_cluster_filter=False,
        use_offset_positive=False,
    )
    rows = masked.row_losses(DistillBatch(s1=s1, t1=t1, t2=t2, cluster=c)).detach().numpy()
    expected = oracle_rows(
        s1.detach().numpy(),
        t1.numpy(),
        t2.numpy(),
        1.0,
        clusters=c.numpy(),
        masks=result.bit_mask(0.5).astype(np.float64),
    )
    np.testing.assert_allclose(rows, expected, rtol=1e-10, atol=1e-12)
    s1b = s1.detach().clone()
    s1b[0, 6] = -s1b[0, 6]  # masked for cluster 0, yet the same-view term cos(s1_0, t1_0) sees it
    rows_b = masked.row_losses(DistillBatch(s1=s1b, t1=t1, t2=t2, cluster=c)).detach().numpy()
    assert abs(rows_b[0] - rows[0]) > 1e-6


def test_offset_view_drops_the_cross_view_positive():
    result = hand_clusters()
    proto = torch.where(torch.as_tensor(result.means) >= 0, 1.0, -1.0).double()
    c = torch.tensor([0, 1, 0, 1])
    t1 = proto[c].clone()
    t2 = t1.clone()
    t2[1] = proto[0]  # image 1 (cluster 1): its augmented view is nearest the centre of cluster 0
    g = torch.Generator().manual_seed(8)
    s1 = torch.randn(4, 8, generator=g, dtype=torch.float64)
    batch = DistillBatch(s1=s1, t1=t1, t2=t2, cluster=c)
    offset = build_loss(
        "brcd", alpha=0.3, clusters=result, use_cluster_filter=False, use_bit_mask=False
    )
    rows = offset.row_losses(batch)
    rows_alpha1 = build_loss("brcd", alpha=1.0, **OFF).row_losses(batch)
    rows_alpha = build_loss("brcd", alpha=0.3, **OFF).row_losses(batch)
    for r in range(8):
        expected = rows_alpha1[r] if r in (1, 5) else rows_alpha[r]
        assert float(rows[r]) == pytest.approx(float(expected), rel=1e-12)
    assert abs(float(rows_alpha1[1] - rows_alpha[1])) > 1e-6


def test_gradients_reach_the_student_only():
    s1, t1, t2 = random_batch(seed=9)
    t1.requires_grad_(True)
    t2.requires_grad_(True)
    c = torch.tensor([0, 1, 0, 1, 2, 2])
    result = cluster_teacher_codes(
        np.sign(np.random.default_rng(0).standard_normal((30, 16))), teacher="t", k=3
    )
    loss = build_loss("brcd", clusters=result, margin=0.1)
    loss(DistillBatch(s1=s1, t1=t1, t2=t2, cluster=c)).backward()
    assert s1.grad is not None and s1.grad.abs().sum() > 0
    assert t1.grad is None and t2.grad is None


def test_fit_then_lookup_by_index_equals_explicit_clusters():
    rng = np.random.default_rng(10)
    protos = np.sign(rng.standard_normal((3, 16)))
    labels = rng.integers(0, 3, size=60)
    train = np.where(rng.random((60, 16)) < 0.05, -protos[labels], protos[labels]).astype(
        np.float32
    )
    loss = build_loss("brcd", k=3, seed=1, teacher="teacher-A", margin=0.2)
    loss.fit(torch.from_numpy(train))
    assert loss.clusters.teacher == "teacher-A" and loss.clusters.k == 3
    index = torch.tensor([0, 5, 17, 33, 41, 59])
    t1 = torch.from_numpy(train)[index].double()
    s1 = torch.randn(6, 16, dtype=torch.float64)
    by_index = loss(DistillBatch(s1=s1, t1=t1, t2=t1, index=index))
    explicit = loss(DistillBatch(s1=s1, t1=t1, t2=t1, cluster=loss.cluster_labels[index]))
    assert float(by_index) == pytest.approx(float(explicit), rel=1e-12)
    with pytest.raises(ValueError, match="outside"):
        loss(DistillBatch(s1=s1, t1=t1, t2=t1, index=index + 100))


def test_clusters_of_another_teacher_are_refused(tmp_path):
    result = hand_clusters()
    result.save(tmp_path / "clusters")
    assert build_loss("brcd", clusters=tmp_path / "clusters", teacher="hand").clusters.k == 2
    with pytest.raises(ValueError, match="teacher 'hand'"):
        build_loss("brcd", clusters=tmp_path / "clusters", teacher="other")


def test_missing_clusters_and_bad_options_are_clear_errors():
    s1, t1, t2 = random_batch()
    with pytest.raises(ValueError, match="no clusters"):
        build_loss("brcd")(DistillBatch(s1=s1, t1=t1, t2=t2, index=torch.arange(6)))
    with pytest.raises(ValueError, match="t2"):
        build_loss("brcd", **OFF)(DistillBatch(s1=s1, t1=t1))
    with pytest.raises(ValueError, match="alpha=1.5"):
        build_loss("brcd", alpha=1.5)
    with pytest.raises(ValueError, match="margin"):
        build_loss("brcd", margin=1.0)


def test_student_with_fewer_bits_gets_a_learned_projection():
    s1, t1, t2 = random_batch(bits=16, seed=11)
    loss = build_loss("brcd", student_dim=8, teacher_dim=16, **OFF).double()
    s = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    loss(DistillBatch(s1=s, t1=t1, t2=t2)).backward()
    assert loss.proj.weight.grad is not None and s.grad.abs().sum() > 0


# -- bit-mask modes, kept fraction and empty-mask report ---------------------------------------


def overlapping_clusters():
    """Two 4-bit clusters whose masks at margin 0.5 overlap: m0 = 1110, m1 = 0111."""
    means = np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    return ClusterResult(labels=[0, 1], centres=means, means=means, teacher="hand", seed=0)


# B = 2, image 0 in cluster 0, image 1 in cluster 1; Z = [s1_0, s1_1, t2_0, t2_1]
HAND_S1 = [[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, 1.0]]
HAND_T2 = [[1.0, 1.0, -1.0, -1.0], [-1.0, 1.0, 1.0, -1.0]]
# anchor: row a masks both vectors with m_c(a) (rows 0, 2 -> m0; rows 1, 3 -> m1); every
# masked vector has 3 bits of +-1, so each entry is (masked dot product) / 3, worked by hand
HAND_ANCHOR = [
    [3, 1, 1, 1],  # m0 1110: s1_1 -> 1-11., t2_0 -> 11-1., t2_1 -> -111.
    [1, 3, -3, -1],  # m1 0111: s1_0 -> .111, s1_1 -> .-111, t2_0 -> .1-1-1, t2_1 -> .11-1
    [1, -1, 3, -1],
    [1, -1, 1, 3],
]
# own: s1_0 -> 111., s1_1 -> .-111, t2_0 -> 11-1., t2_1 -> .11-1 (symmetric)
HAND_OWN = [[3, 0, 1, 2], [0, 3, -2, -1], [1, -2, 3, 0], [2, -1, 0, 3]]


@pytest.mark.parametrize(("mask_mode", "hand"), [("anchor", HAND_ANCHOR), ("own", HAND_OWN)])
def test_mask_modes_on_a_hand_worked_batch(mask_mode, hand):
    loss = build_loss(
        "brcd",
        alpha=0.0,
        margin=0.5,
        mask_mode=mask_mode,
        clusters=overlapping_clusters(),
        use_cluster_filter=False,
        use_offset_positive=False,
    )
    s1 = torch.tensor(HAND_S1, dtype=torch.float64)
    t2 = torch.tensor(HAND_T2, dtype=torch.float64)
    batch = DistillBatch(s1=s1, t1=t2.clone(), t2=t2, cluster=torch.tensor([0, 1]))
    expected = np.array(hand, dtype=np.float64) / 3.0 / TAU
    np.testing.assert_allclose(
        loss.similarity_matrix(batch).numpy(), expected, rtol=1e-12, atol=1e-12
    )
    # row 0's loss by hand: positive S_02, negatives S_01 and S_03 (not itself, not partner)
    row0 = np.log(np.exp(expected[0, [2, 1, 3]]).sum()) - expected[0, 2]
    assert float(loss.row_losses(batch)[0]) == pytest.approx(row0, rel=1e-12, abs=1e-12)


def test_mask_modes_share_the_cross_view_positive_and_differ_elsewhere():
    s1, t1, t2 = random_batch(bsz=6, bits=8, seed=9)
    c = torch.tensor([0, 1, 0, 1, 1, 0])
    sims = {}
    for mode in ("anchor", "own"):
        loss = build_loss("brcd", margin=0.5, clusters=hand_clusters(), mask_mode=mode)
        sims[mode] = loss.similarity_matrix(DistillBatch(s1=s1, t1=t1, t2=t2, cluster=c)).detach()
    rows = torch.arange(6)
    assert torch.allclose(sims["anchor"][rows, rows + 6], sims["own"][rows, rows + 6])
    assert torch.allclose(sims["own"], sims["own"].t())  # own mode is symmetric
    same = (torch.cat([c, c])[:, None] == torch.cat([c, c])[None, :]).bool()
    assert torch.allclose(sims["anchor"][same], sims["own"][same])  # one mask for both
    assert not torch.allclose(sims["anchor"][~same], sims["own"][~same])


def kept_fraction_clusters() -> ClusterResult:
    """cluster 0: 4 codes, bit means 1, .5, .5, 0; cluster 1: 2 codes agreeing on no bit."""
    codes = np.array(
        [
            [1, 1, 1, 1],
            [1, 1, -1, 1],
            [1, -1, 1, -1],
            [1, 1, 1, -1],
            [1, -1, 1, -1],
            [-1, 1, -1, 1],
        ],
        dtype=np.float32,
    )
    labels = np.array([0, 0, 0, 0, 1, 1])
    means = cluster_means(codes, labels, 2)
    np.testing.assert_allclose(means, [[1.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]], atol=1e-12)
    return ClusterResult(labels=labels, centres=means, means=means, teacher="hand", seed=0)


@pytest.mark.parametrize(
    ("margin", "kept0", "mask0"), [(0.4, 0.75, [1.0, 1.0, 1.0, 0.0]), (0.5, 0.25, [1.0, 0, 0, 0])]
)
def test_kept_fraction_and_empty_mask_report_by_hand(margin, kept0, mask0):
    result = kept_fraction_clusters()
    np.testing.assert_allclose(result.kept_fraction(margin), [kept0, 0.0], atol=1e-12)
    assert result.sizes.tolist() == [4, 2]
    loss = build_loss("brcd", margin=margin, clusters=result)
    assert loss.masks.tolist() == [mask0, [1.0, 1.0, 1.0, 1.0]]  # the empty mask keeps all
    report = loss.report()
    assert report["margin"] == margin and report["mask_mode"] == "anchor"
    assert report["kept_fraction"] == [kept0, 0.0]
    assert report["cluster_sizes"] == [4, 2]
    assert report["mean_kept_fraction"] == pytest.approx(kept0 / 2)
    assert report["image_weighted_kept_fraction"] == pytest.approx(kept0 * 4 / 6)
    assert report["empty_mask_clusters"] == [1] and report["empty_mask_count"] == 1
    assert "kept all bits" in report["empty_mask_action"]
    assert report["applied_mean_kept_fraction"] == pytest.approx((kept0 + 1.0) / 2)
    assert loss.log_fields() == {"mean_kept_fraction": pytest.approx(kept0 / 2), "empty_masks": 1}


def test_report_without_empty_masks_says_none():
    loss = build_loss("brcd", margin=0.5, clusters=hand_clusters())
    report = loss.report()
    assert report["kept_fraction"] == [0.5, 0.75]  # cluster 0 keeps bits 0-3, cluster 1 six
    assert report["empty_mask_count"] == 0 and report["empty_mask_action"] == "none"
    off = build_loss("brcd", margin=0.5, clusters=hand_clusters(), use_bit_mask=False)
    assert off.report()["applied_mean_kept_fraction"] == 1.0
    assert build_loss("brcd", **OFF).report() == {}  # no clusters, nothing to report


def test_margin_and_mask_mode_come_through_the_cli_option_parser():
    from hashkd.cli._common import parse_loss_options

    options = parse_loss_options(["brcd.margin=0.3", "brcd.mask_mode=own"])["brcd"]
    loss = build_loss("brcd", clusters=kept_fraction_clusters(), **options)
    assert loss.margin == 0.3 and loss.mask_mode == "own"
    assert loss.report()["kept_fraction"] == [0.75, 0.0]  # |mu| > 0.3: bits 0, 1, 2
    for bad in ({"margin": "abc"}, {"margin": 1.0}, {"mask_mode": "both"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            build_loss("brcd", **bad)


def test_a_distillation_run_records_weights_and_the_bit_mask_report(tmp_path):
    """The trainer writes each loss's weight, its source and BRCD's mask report into
    run.json and the artifact's config.json, and repeats the mean kept fraction per epoch."""
    import json

    from hashkd.training.distill import DistillConfig, distill
    from tests.conftest import TINY_CNN, save_tiny_teacher

    teacher = save_tiny_teacher(tmp_path / "teacher")
    out = distill(
        DistillConfig(
            out=str(tmp_path / "student"),
            teacher=str(teacher),
            student=TINY_CNN["backbone"],
            data="digits",
            epochs=1,
            batch_size=32,
            max_train=96,
            progress=False,
            losses=["brcd", "sp"],
            loss_options={"brcd": {"k": 4, "margin": 0.3, "mask_mode": "own"}},
        )
    )
    setup = json.loads((out / "run.json").read_text())["losses"]
    assert [(r["loss"], r["weight"]) for r in setup] == [("brcd", 1.0), ("sp", 3000.0)]
    assert all(r["source"].startswith("default: ") for r in setup)
    report = setup[0]["report"]
    assert report["margin"] == 0.3 and report["mask_mode"] == "own" and report["k"] == 4
    n_train = json.loads((out / "run.json").read_text())["splits"]["sizes"]["train"]
    assert len(report["kept_fraction"]) == 4 and sum(report["cluster_sizes"]) == n_train
    assert report["mean_kept_fraction"] == pytest.approx(np.mean(report["kept_fraction"]))
    empty = [i for i, f in enumerate(report["kept_fraction"]) if f == 0.0]
    assert report["empty_mask_clusters"] == empty and report["empty_mask_count"] == len(empty)
    assert "report" not in setup[1]  # sp has no fitted state to report
    assert json.loads((out / "config.json").read_text())["meta"]["losses"] == setup
    record = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
    assert record["brcd.mean_kept_fraction"] == pytest.approx(report["mean_kept_fraction"])
    assert record["brcd.empty_masks"] == len(empty)
