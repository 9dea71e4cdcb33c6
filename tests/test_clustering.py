"""BRCD's offline stage: faiss k-means on teacher codes, k selection, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from hashkd.clustering import (
    ClusterError,
    ClusterResult,
    choose_k,
    cluster_means,
    cluster_teacher_codes,
    elbow_k,
    kmeans,
    sign_codes,
)


def planted(k=4, bits=32, per=60, flip=0.05, seed=0):
    """k random ±1 prototypes; each member flips about ``flip`` of the bits."""
    rng = np.random.default_rng(seed)
    protos = np.where(rng.random((k, bits)) < 0.5, -1.0, 1.0)
    truth = np.repeat(np.arange(k), per)
    codes = np.where(rng.random((k * per, bits)) < flip, -protos[truth], protos[truth]).astype(
        np.float32
    )
    return codes, truth


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_recovers_planted_clusters(seed):
    codes, truth = planted()
    labels, centres, inertia = kmeans(codes, 4, seed=seed)
    assert adjusted_rand_score(truth, labels) == 1.0
    assert centres.shape == (4, 32)
    brute = ((codes[:, None, :] - centres[None]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(labels, brute.argmin(axis=1))
    assert inertia == pytest.approx(float(brute.min(axis=1).sum()), rel=1e-4)


@pytest.mark.parametrize("method", ["silhouette", "elbow"])
def test_choose_k_finds_the_planted_k(method):
    codes, _ = planted(k=5, per=40)
    k, scores = choose_k(codes, candidates=range(2, 10), seed=0, method=method, sample_size=150)
    assert k == 5
    assert sorted(scores) == list(range(2, 10))


def test_elbow_on_a_hand_curve():
    # scaled: x = [0, .2, .4, .6, .8, 1], y = [1, .46, .03, .02, .01, 0];
    # distance below the chord 1 - x is largest (0.57) at k = 3
    assert elbow_k([1, 2, 3, 4, 5, 6], [100, 50, 10, 9, 8, 7]) == 3


def test_cluster_teacher_codes_records_teacher_seed_and_means(tmp_path):
    codes, truth = planted(k=3, per=30)
    result = cluster_teacher_codes(
        codes, teacher="runs/teacher-vit", seed=7, candidates=range(2, 7)
    )
    assert result.k == 3 and result.method == "silhouette" and result.seed == 7
    assert result.teacher == "runs/teacher-vit"
    assert adjusted_rand_score(truth, result.labels) == 1.0
    for c in range(3):  # mu_c = mean of the members' ±1 codes
        np.testing.assert_allclose(
            result.means[c], codes[result.labels == c].mean(axis=0), atol=1e-6
        )
    # the augmented view of a member lands in its own cluster
    np.testing.assert_array_equal(result.assign(codes), result.labels)


def test_packed_and_sign_codes_give_the_same_clustering():
    codes, _ = planted(k=3, per=20)
    packed = np.packbits(codes > 0, axis=1)
    a = cluster_teacher_codes(codes, teacher="t", k=3, seed=1)
    b = cluster_teacher_codes(packed, teacher="t", k=3, seed=1)
    c = cluster_teacher_codes(
        (codes > 0).astype(np.uint8).astype(np.int64), teacher="t", k=3, seed=1
    )
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.labels, c.labels)
    np.testing.assert_allclose(a.centres, b.centres, atol=1e-12)


def test_same_seed_same_result():
    rng = np.random.default_rng(3)
    codes = np.sign(rng.standard_normal((300, 16))).astype(np.float32)  # no structure: init matters
    a = cluster_teacher_codes(codes, teacher="t", k=6, seed=11)
    b = cluster_teacher_codes(codes, teacher="t", k=6, seed=11)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centres, b.centres)
    others = [cluster_teacher_codes(codes, teacher="t", k=6, seed=s).centres for s in (12, 13, 14)]
    assert any(not np.array_equal(a.centres, o) for o in others)


def test_save_load_round_trip(tmp_path):
    codes, _ = planted(k=3, per=20)
    result = cluster_teacher_codes(codes, teacher="teacher@abc123", seed=5, candidates=[2, 3, 4])
    path = result.save(tmp_path / "clusters")
    meta = json.loads((path / "clusters.json").read_text())
    assert meta["teacher"] == "teacher@abc123" and meta["seed"] == 5 and meta["k"] == 3
    loaded = ClusterResult.load(path)
    np.testing.assert_array_equal(loaded.labels, result.labels)
    np.testing.assert_array_equal(loaded.centres, result.centres)
    np.testing.assert_array_equal(loaded.means, result.means)
    assert (loaded.teacher, loaded.seed, loaded.method, loaded.scores) == (
        result.teacher,
        result.seed,
        result.method,
        result.scores,
    )
    np.testing.assert_array_equal(loaded.bit_mask(0.3), result.bit_mask(0.3))


def test_load_refuses_missing_files_and_pickled_arrays(tmp_path):
    with pytest.raises(ClusterError, match="clusters.npz is missing"):
        ClusterResult.load(tmp_path)
    codes, _ = planted(k=2, per=5)
    path = cluster_teacher_codes(codes, teacher="t", k=2).save(tmp_path / "c")
    np.savez(
        path / "clusters.npz",
        labels=np.array([object()], dtype=object),
        centres=np.zeros((2, 32)),
        means=np.zeros((2, 32)),
    )
    with pytest.raises(ClusterError, match="could not be read"):
        ClusterResult.load(path)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ClusterError, match="expected ±1"):
        sign_codes(np.array([[0.5, -1.0]]))
    with pytest.raises(ClusterError, match="k=10 is larger"):
        kmeans(np.ones((4, 8), dtype=np.float32), 10)
    with pytest.raises(ClusterError, match="teacher"):
        cluster_teacher_codes(np.ones((4, 8)), teacher="")
    with pytest.raises(ClusterError, match="method"):
        choose_k(np.ones((4, 8), dtype=np.float32), method="gap")
    with pytest.raises(ClusterError, match="margin"):
        ClusterResult(
            labels=[0], centres=np.zeros((1, 8)), means=np.zeros((1, 8)), teacher="t", seed=0
        ).bit_mask(1.5)


def test_cluster_means_of_an_empty_cluster_is_zero():
    means = cluster_means(np.array([[1.0, -1.0], [1.0, 1.0]]), np.array([0, 0]), 2)
    np.testing.assert_allclose(means, [[1.0, 0.0], [0.0, 0.0]], atol=1e-12)
