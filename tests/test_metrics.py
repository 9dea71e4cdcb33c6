"""hashkd.metrics against brute-force oracles written here with plain Python loops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hashkd.metrics import evaluate_codes, mean_average_precision, precision_at_radius, relevance

# ----------------------------------------------------------------------------- oracles


def _ham(a: np.ndarray, b: np.ndarray) -> int:
    return int(sum(bin(int(x) ^ int(y)).count("1") for x, y in zip(a, b, strict=True)))


def _is_rel(yq: np.ndarray, yi: np.ndarray) -> bool:
    return any(int(a) and int(b) for a, b in zip(yq, yi, strict=True))


def _ap_of_ranking(rels: list[bool], topk: int) -> float:
    hits, total = 0, 0.0
    for r, rel in enumerate(rels[:topk], start=1):
        if rel:
            hits += 1
            total += hits / r
    return total / hits if hits else 0.0


def brute_force(qc, dc, ql, dl, topk, radius, points):
    """Straightforward per-query evaluation: stable sort on (distance, index)."""
    nd = len(dc)
    bits = dc.shape[1] * 8
    aps, prs, hit, pn, rn = [], [], [], [], []
    pr_p = [[] for _ in range(bits + 1)]
    pr_r = [[] for _ in range(bits + 1)]
    for i in range(len(qc)):
        dists = [_ham(qc[i], dc[j]) for j in range(nd)]
        rels = [_is_rel(ql[i], dl[j]) for j in range(nd)]
        order = sorted(range(nd), key=lambda j: (dists[j], j))
        ranked = [rels[j] for j in order]
        aps.append(_ap_of_ranking(ranked, topk))
        n_rel = sum(rels)
        for rad in range(bits + 1):
            inside = [j for j in range(nd) if dists[j] <= rad]
            good = sum(rels[j] for j in inside)
            pr_p[rad].append(good / len(inside) if inside else 0.0)
            pr_r[rad].append(good / n_rel if n_rel else 0.0)
        inside = [j for j in range(nd) if dists[j] <= radius]
        prs.append(sum(rels[j] for j in inside) / len(inside) if inside else 0.0)
        hit.append(1.0 if inside else 0.0)
        pn.append([sum(ranked[:n]) / n for n in points])
        rn.append([sum(ranked[:n]) / n_rel if n_rel else 0.0 for n in points])
    return {
        "map": float(np.mean(aps)),
        "precision_at_radius": float(np.mean(prs)),
        "radius_hit_rate": float(np.mean(hit)),
        "pn": np.mean(pn, axis=0),
        "rn": np.mean(rn, axis=0),
        "pr_p": np.array([np.mean(p) for p in pr_p]),
        "pr_r": np.array([np.mean(r) for r in pr_r]),
    }


def tie_enumeration_ap(qcode, dc, yq, dl, topk) -> float:
    """Average AP@K over every order of equal distances (exhaustive enumeration)."""
    nd = len(dc)
    dists = [_ham(qcode, dc[j]) for j in range(nd)]
    rels = [_is_rel(yq, dl[j]) for j in range(nd)]
    groups = [[j for j in range(nd) if dists[j] == g] for g in sorted(set(dists))]
    values = []
    for perms in itertools.product(*(itertools.permutations(g) for g in groups)):
        ranking = [j for p in perms for j in p]
        values.append(_ap_of_ranking([rels[j] for j in ranking], topk))
    return float(np.mean(values))


def _random_case(rng, nq, nd, bits, classes, multi):
    qc = rng.integers(0, 256, (nq, bits // 8), dtype=np.uint8)
    dc = rng.integers(0, 256, (nd, bits // 8), dtype=np.uint8)
    if multi:
        ql = (rng.random((nq, classes)) < 0.25).astype(np.uint8)
        dl = (rng.random((nd, classes)) < 0.25).astype(np.uint8)
    else:
        ql = np.eye(classes, dtype=np.uint8)[rng.integers(0, classes, nq)]
        dl = np.eye(classes, dtype=np.uint8)[rng.integers(0, classes, nd)]
    return qc, dc, ql, dl


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    ("bits", "multi", "topk", "radius"),
    [
        (8, False, 40, 2),
        (8, True, 500, 0),
        (16, True, 25, 3),
        (16, False, 150, 2),
        (24, True, 7, 5),
    ],
)
def test_matches_brute_force_with_many_ties(rng, bits, multi, topk, radius):
    qc, dc, ql, dl = _random_case(rng, 23, 150, bits, 5, multi)
    ql[0] = 0  # a query with no relevant item at all
    dl[3] = 0  # a database item relevant to nobody
    points = [1, 5, 17, 60, 150]
    # small blocks so that several query blocks are exercised
    got = evaluate_codes(
        qc, dc, ql, dl, topk=topk, radius=radius, pn_points=points, block_elements=700
    )
    want = brute_force(qc, dc, ql, dl, min(topk, 150), radius, points)
    assert got["topk"] == min(topk, 150)
    assert got["map"] == pytest.approx(want["map"], abs=1e-12)
    assert got["precision_at_radius"] == pytest.approx(want["precision_at_radius"], abs=1e-12)
    assert got["radius_hit_rate"] == pytest.approx(want["radius_hit_rate"], abs=1e-12)
    pan = got["curves"]["precision_at_n"]
    assert pan["n"] == points
    np.testing.assert_allclose(pan["precision"], want["pn"], atol=1e-12)
    np.testing.assert_allclose(pan["recall"], want["rn"], atol=1e-12)
    pr = got["curves"]["pr_radius"]
    assert pr["radius"] == list(range(bits + 1))
    np.testing.assert_allclose(pr["precision"], want["pr_p"], atol=1e-12)
    np.testing.assert_allclose(pr["recall"], want["pr_r"], atol=1e-12)
    assert (got["bits"], got["num_queries"], got["num_database"]) == (bits, 23, 150)


def test_blocking_does_not_change_results(rng):
    qc, dc, ql, dl = _random_case(rng, 40, 300, 16, 4, True)
    a = evaluate_codes(qc, dc, ql, dl, topk=50, block_elements=300)
    b = evaluate_codes(qc, dc, ql, dl, topk=50, block_elements=10**9)
    tie_a, tie_b = a.pop("map_tie_averaged"), b.pop("map_tie_averaged")
    assert a == b  # exact: the stable ranking does not depend on the blocks
    assert tie_a == pytest.approx(tie_b, abs=1e-14)  # sums of another length round differently


def test_large_blocks_use_wide_sort_keys(rng):
    # 4000 queries x 12 items in one block: row * 17 + distance no longer fits uint16
    qc, dc, ql, dl = _random_case(rng, 4000, 12, 16, 3, True)
    got = evaluate_codes(qc, dc, ql, dl, topk=7, curves=False, tie_averaged=False)
    aps = []
    for i in range(len(qc)):
        order = sorted(range(len(dc)), key=lambda j: (_ham(qc[i], dc[j]), j))
        aps.append(_ap_of_ranking([_is_rel(ql[i], dl[j]) for j in order], 7))
    assert got["map"] == pytest.approx(float(np.mean(aps)), abs=1e-12)


def test_fast_path_without_curves_agrees(rng):
    qc, dc, ql, dl = _random_case(rng, 30, 120, 8, 3, True)
    full = evaluate_codes(qc, dc, ql, dl, topk=30, radius=1)
    lean = evaluate_codes(qc, dc, ql, dl, topk=30, radius=1, curves=False, tie_averaged=False)
    assert "curves" not in lean and lean["map_tie_averaged"] is None
    for key in ("map", "precision_at_radius", "radius_hit_rate"):
        assert lean[key] == pytest.approx(full[key], abs=1e-12)
    assert mean_average_precision(qc, dc, ql, dl, topk=30) == full["map"]
    assert precision_at_radius(qc, dc, ql, dl, radius=1) == pytest.approx(
        full["precision_at_radius"]
    )


def test_hand_worked_three_items():
    # query 0 = 0b00000000; database distances 2, 0, 1; items 0 and 2 share its class.
    qc = np.array([[0b00000000], [0b00000000]], dtype=np.uint8)
    dc = np.array([[0b00000011], [0b00000000], [0b10000000]], dtype=np.uint8)
    ql = np.array([[1, 0, 0], [0, 0, 1]], dtype=np.uint8)  # second query: nothing relevant
    dl = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=np.uint8)
    # ranking: item1 (d=0, no), item2 (d=1, yes), item0 (d=2, yes)
    # AP@3 = (1/2) * (1/2 + 2/3) = 7/12; AP@2 = 1/2; AP@1 = 0; the second query counts 0.
    assert mean_average_precision(qc, dc, ql, dl, topk=3) == pytest.approx(7 / 24)
    assert mean_average_precision(qc, dc, ql, dl, topk=2) == pytest.approx(1 / 4)
    assert mean_average_precision(qc, dc, ql, dl, topk=1) == 0.0
    # radius 1: {item1, item2} -> 1/2 for query 0, 0 for query 1
    assert precision_at_radius(qc, dc, ql, dl, radius=1) == pytest.approx(1 / 4)
    # topk above the database size is clipped to it
    assert evaluate_codes(qc, dc, ql, dl, topk=1000)["topk"] == 3


def test_ties_are_broken_by_database_position():
    qc = np.zeros((1, 1), dtype=np.uint8)
    dc = np.zeros((2, 1), dtype=np.uint8)  # both at distance 0
    out = evaluate_codes(qc, dc, [[1, 0]], [[0, 1], [1, 0]], topk=1)
    assert out["map"] == 0.0  # item 0 (not relevant) comes first
    out = evaluate_codes(qc, dc, [[1, 0]], [[1, 0], [0, 1]], topk=1)
    assert out["map"] == 1.0
    # random tie order: half the time the relevant item is first
    assert out["map_tie_averaged"] == pytest.approx(0.5)
    assert evaluate_codes(qc, dc, [[1, 0]], [[0, 1], [1, 0]], topk=2)[
        "map_tie_averaged"
    ] == pytest.approx(0.75)


@pytest.mark.parametrize("topk", [1, 3, 5, 8])
def test_tie_averaged_map_equals_exhaustive_enumeration(rng, topk):
    nd = 8
    # only the 2 low bits vary: distances in 0..2 -> big ties
    qc = rng.integers(0, 4, (6, 1), dtype=np.uint8)
    dc = rng.integers(0, 4, (nd, 1), dtype=np.uint8)
    ql = (rng.random((6, 3)) < 0.4).astype(np.uint8)
    dl = (rng.random((nd, 3)) < 0.4).astype(np.uint8)
    got = evaluate_codes(qc, dc, ql, dl, topk=topk)
    want = np.mean([tie_enumeration_ap(qc[i], dc, ql[i], dl, topk) for i in range(6)])
    assert got["map_tie_averaged"] == pytest.approx(want, abs=1e-12)


def test_tie_averaged_equals_stable_without_ties(rng):
    # distinct distances: database item j at distance j from the query
    qc = np.zeros((1, 2), dtype=np.uint8)
    dc = np.packbits(np.tril(np.ones((17, 16), dtype=np.uint8), k=-1), axis=1)
    dl = np.eye(2, dtype=np.uint8)[rng.integers(0, 2, 17)]
    out = evaluate_codes(qc, dc, [[1, 0]], dl, topk=9)
    assert out["map_tie_averaged"] == pytest.approx(out["map"], abs=1e-12)


def test_precision_at_n_points_are_clipped_to_the_database(rng):
    qc, dc, ql, dl = _random_case(rng, 5, 30, 16, 3, False)
    pan = evaluate_codes(qc, dc, ql, dl, topk=10, pn_points=[5, 1000, 10])["curves"][
        "precision_at_n"
    ]
    assert pan["n"] == [5, 10, 30]
    # at N = database size every relevant item is retrieved
    has_rel = (ql @ dl.T > 0).any(axis=1)
    assert pan["recall"][-1] == pytest.approx(has_rel.mean())


def test_class_index_labels_equal_one_hot(rng):
    qc, dc, _, _ = _random_case(rng, 10, 60, 16, 4, False)
    qi, di = rng.integers(0, 4, 10), rng.integers(0, 4, 60)
    a = evaluate_codes(qc, dc, qi, di, topk=20)
    b = evaluate_codes(
        qc, dc, np.eye(4, dtype=np.uint8)[qi], np.eye(4, dtype=np.uint8)[di], topk=20
    )
    assert a == b


def test_relevance_single_and_multi_label():
    ql = np.array([[1, 0, 1], [0, 0, 0]], dtype=np.uint8)
    dl = np.array([[0, 0, 1], [0, 1, 0], [1, 1, 1]], dtype=np.uint8)
    want = [[_is_rel(a, b) for b in dl] for a in ql]
    assert relevance(ql, dl).tolist() == want
    one = np.eye(3, dtype=np.uint8)
    assert relevance(one, one).tolist() == np.eye(3, dtype=bool).tolist()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"topk": 0}, "topk=0"),
        ({"topk": -3}, "topk=-3"),
        ({"radius": -1}, "radius=-1"),
        ({"pn_points": [0, 5]}, "precision@N point=0"),
    ],
)
def test_bad_parameters_are_named(rng, kwargs, needle):
    qc, dc, ql, dl = _random_case(rng, 3, 10, 16, 3, False)
    with pytest.raises(ValueError, match=needle):
        evaluate_codes(qc, dc, ql, dl, **kwargs)


def test_bad_inputs_are_refused(rng):
    qc, dc, ql, dl = _random_case(rng, 3, 10, 16, 3, False)
    with pytest.raises(ValueError, match="16 bits but database codes are 32 bits"):
        evaluate_codes(qc, np.zeros((10, 4), np.uint8), ql, dl)
    with pytest.raises(ValueError, match="database labels have 9 rows"):
        evaluate_codes(qc, dc, ql, dl[:9])
    with pytest.raises(ValueError, match="same label space"):
        evaluate_codes(qc, dc, ql, np.zeros((10, 4), np.uint8))
    with pytest.raises(ValueError, match="query labels are missing"):
        evaluate_codes(qc, dc, None, dl)
    with pytest.raises(ValueError, match="no query codes"):
        evaluate_codes(qc[:0], dc, ql[:0], dl)


def test_tie_averaged_map_agrees_with_monte_carlo_on_large_ties(rng):
    # 8-bit codes, 3000 items: tie groups of hundreds, rank K=500 cuts through one of them
    nq, nd, topk, draws = 4, 3000, 500, 400
    qc, dc, ql, dl = _random_case(rng, nq, nd, 8, 4, True)
    out = evaluate_codes(qc, dc, ql, dl, topk=topk, curves=False)
    got = out["map_tie_averaged"]
    dist = np.unpackbits(qc[:, None, :] ^ dc[None, :, :], axis=2).sum(axis=2)
    rel = (ql.astype(int) @ dl.T.astype(int)) > 0
    samples = np.empty(draws)
    for t in range(draws):
        aps = []
        for i in range(nq):
            order = np.lexsort((rng.permutation(nd), dist[i]))[:topk]  # random order within ties
            r = rel[i, order]
            hits = np.cumsum(r)
            aps.append((hits[r] / (np.flatnonzero(r) + 1)).sum() / hits[-1] if hits[-1] else 0.0)
        samples[t] = np.mean(aps)
    se = samples.std(ddof=1) / np.sqrt(draws)
    assert abs(got - samples.mean()) < 5 * se + 1e-12
    # the check has power: the index tie-break is measurably different from the average here
    assert abs(out["map"] - samples.mean()) > 5 * se
