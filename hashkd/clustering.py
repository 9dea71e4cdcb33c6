"""BRCD's offline stage: k-means on the teacher's codes of the training set.

BRCD (Bit-mask Robust Contrastive KD, He et al., WWW 2024, arXiv:2403.06071) encodes the training
set with the frozen teacher, clusters the ±1 codes with k-means, and keeps each image's
cluster label ``c(i)``, the centres, and the per-cluster mean code ``mu_c`` (mean of the
±1 codes of the cluster's members). During distillation these give:

- false-negative removal: pairs in the same cluster are not negatives;
- offset-positive detection: an augmented view whose teacher code is nearest another
  centre loses its cross-view positive;
- the bit mask ``m_cj = 1[|mu_cj| > margin]`` (:meth:`ClusterResult.bit_mask`).

k-means is ``faiss.Kmeans`` (seeded). When k is not given it is chosen over a candidate
range by the silhouette score (``sklearn.metrics.silhouette_score`` on a seeded
subsample; Rousseeuw 1987) or by the elbow of the inertia curve (the point farthest
below the chord joining the curve's ends, as in "Kneedle", Satopaa et al. 2011).

A result is saved as a directory holding ``clusters.npz`` (arrays, read with
``allow_pickle=False``) and ``clusters.json`` (teacher identity, seed, k, scores).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from sklearn.metrics import silhouette_score

from hashkd.codes import codes_to_signs

CLUSTERS_FORMAT_VERSION = 1
K_METHODS = ("silhouette", "elbow")
DEFAULT_CANDIDATES = tuple(range(2, 21))


class ClusterError(ValueError):
    """Clustering input or a saved cluster file is invalid."""


def sign_codes(codes: Any) -> np.ndarray:
    """Teacher codes as a float32 ``n x K`` ±1 matrix.

    Accepts packed uint8 codes (``n x K/8``, the layout of :mod:`hashkd.codes`), ±1 codes, or {0, 1} codes
    (numpy arrays or torch tensors).
    """
    if hasattr(codes, "detach"):
        codes = codes.detach().cpu().numpy()
    arr = np.asarray(codes)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ClusterError(
            f"teacher codes have shape {arr.shape}: expected a non-empty 2-d n x K array"
        )
    if arr.dtype == np.uint8:
        return codes_to_signs(arr)
    arr = arr.astype(np.float32)
    values = np.unique(arr)
    if np.all(np.isin(values, (-1.0, 1.0))):
        return np.ascontiguousarray(arr)
    if np.all(np.isin(values, (0.0, 1.0))):
        return np.ascontiguousarray(arr * 2.0 - 1.0)
    raise ClusterError(
        f"teacher codes hold values such as {values[:4].tolist()}: expected ±1 or {{0, 1}} codes, or packed uint8"
    )


@dataclass
class ClusterResult:
    """Cluster labels, centres and per-cluster mean codes of a teacher's training codes.

    Attributes:
        labels: ``n`` int64 cluster label of each training image (row order of the codes).
        centres: ``k x K`` float32 k-means centroids (used to assign new codes).
        means: ``k x K`` float32 mean ±1 code of each cluster's members (``mu_c``; 0 for an
            empty cluster).
        teacher: identity of the teacher whose codes were clustered (the caller's string,
            e.g. an artifact path or hash); checked by BRCD against the teacher it distils.
        seed: the k-means seed.
        scores: candidate k -> silhouette or inertia, when k was chosen automatically.
        method: ``"given"``, ``"silhouette"`` or ``"elbow"``.
        inertia: sum of squared distances of the codes to their centres.
    """

    labels: np.ndarray
    centres: np.ndarray
    means: np.ndarray
    teacher: str
    seed: int
    scores: dict[int, float] = field(default_factory=dict)
    method: str = "given"
    inertia: float = float("nan")

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.centres = np.ascontiguousarray(self.centres, dtype=np.float32)
        self.means = np.ascontiguousarray(self.means, dtype=np.float32)
        if self.centres.ndim != 2 or self.means.shape != self.centres.shape:
            raise ClusterError(
                f"centres {self.centres.shape} and means {self.means.shape} must both be k x K"
            )
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= self.k):
            raise ClusterError(
                f"cluster labels must lie in [0, {self.k}), got {self.labels.min()}..{self.labels.max()}"
            )
        self.scores = {int(k): float(v) for k, v in self.scores.items()}

    @property
    def k(self) -> int:
        return int(self.centres.shape[0])

    @property
    def bits(self) -> int:
        return int(self.centres.shape[1])

    def bit_mask(self, margin: float) -> np.ndarray:
        """``k x K`` bool mask ``m_cj = |mu_cj| > margin``: the bits cluster c agrees on.

        BRCD's rule (see docs/losses.md); the released code's two cancelling ``np.where``
        calls, which ship an all-zero mask, are deliberately not reproduced.
        """
        if not 0.0 <= margin < 1.0:
            raise ClusterError(f"margin={margin!r} is not valid: expected a number in [0, 1)")
        return np.abs(self.means) > margin

    def kept_fraction(self, margin: float) -> np.ndarray:
        """``k`` float64: the fraction of the K bits each cluster's mask keeps at ``margin``
        (0 for a cluster whose members agree on no bit by more than the margin)."""
        return self.bit_mask(margin).mean(axis=1, dtype=np.float64)

    @property
    def sizes(self) -> np.ndarray:
        """``k`` int64: the number of training codes in each cluster."""
        return np.bincount(self.labels, minlength=self.k).astype(np.int64)

    def assign(self, codes: Any) -> np.ndarray:
        """Nearest centre (squared L2) of each code: ``n`` int64 labels."""
        return assign_to_centres(sign_codes(codes), self.centres)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``clusters.npz`` and ``clusters.json`` into ``directory`` (created if needed)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        np.savez(path / "clusters.npz", labels=self.labels, centres=self.centres, means=self.means)
        meta = {
            "format_version": CLUSTERS_FORMAT_VERSION,
            "teacher": self.teacher,
            "seed": self.seed,
            "k": self.k,
            "bits": self.bits,
            "count": int(self.labels.size),
            "method": self.method,
            "inertia": self.inertia,
            "scores": {str(k): v for k, v in sorted(self.scores.items())},
        }
        (path / "clusters.json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ClusterResult:
        """Read a result written by :meth:`save` (no pickle involved)."""
        path = Path(directory)
        for name in ("clusters.npz", "clusters.json"):
            if not (path / name).is_file():
                raise ClusterError(f"{str(path)!r} is not a cluster directory: {name} is missing")
        try:
            meta = json.loads((path / "clusters.json").read_text())
            with np.load(path / "clusters.npz", allow_pickle=False) as data:
                arrays = {key: data[key] for key in ("labels", "centres", "means")}
        except (ValueError, KeyError, OSError) as exc:
            raise ClusterError(
                f"cluster directory {str(path)!r} could not be read: {exc}"
            ) from None
        if meta.get("format_version") != CLUSTERS_FORMAT_VERSION:
            raise ClusterError(
                f"{str(path / 'clusters.json')!r} has format_version {meta.get('format_version')!r}: expected {CLUSTERS_FORMAT_VERSION}"
            )
        return cls(
            **arrays,
            teacher=str(meta["teacher"]),
            seed=int(meta["seed"]),
            scores={int(k): v for k, v in meta.get("scores", {}).items()},
            method=str(meta.get("method", "given")),
            inertia=float(meta.get("inertia", float("nan"))),
        )


def assign_to_centres(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (squared L2, exact) for each row of ``x``."""
    index = faiss.IndexFlatL2(centres.shape[1])
    index.add(np.ascontiguousarray(centres, dtype=np.float32))
    _, nearest = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return nearest[:, 0].astype(np.int64)


def _check_k(k: int, n: int) -> int:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ClusterError(f"k={k!r} is not valid: expected a positive integer")
    if k > n:
        raise ClusterError(f"k={k} is larger than the number of codes ({n}): expected k <= {n}")
    return int(k)


def kmeans_pp_init(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii, SODA 2007): each new centre is drawn with
    probability proportional to the squared distance to the nearest centre so far."""
    centres = np.empty((k, x.shape[1]), dtype=np.float32)
    centres[0] = x[rng.integers(x.shape[0])]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for i in range(1, k):
        total = float(d2.sum())
        j = (
            int(rng.choice(x.shape[0], p=d2 / total))
            if total > 0
            else int(rng.integers(x.shape[0]))
        )
        centres[i] = x[j]
        d2 = np.minimum(d2, ((x - centres[i]) ** 2).sum(axis=1))
    return centres


def kmeans(
    x: np.ndarray, k: int, seed: int = 0, niter: int = 25, nredo: int = 5
) -> tuple[np.ndarray, np.ndarray, float]:
    """Seeded ``faiss.Kmeans`` on the rows of ``x``: ``(labels, centres, inertia)``.

    Each of the ``nredo`` runs starts from a k-means++ seeding drawn with
    ``numpy.random.default_rng(seed)``; the run with the lowest inertia is kept (one
    run from a random sample often merges two true clusters and splits another).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    k = _check_k(k, x.shape[0])
    if nredo < 1:
        raise ClusterError(f"nredo={nredo!r} is not valid: expected at least 1 run")
    rng = np.random.default_rng(seed)
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(nredo):
        # max_points_per_centroid=n: faiss would otherwise subsample large sets
        km = faiss.Kmeans(
            x.shape[1],
            k,
            niter=niter,
            seed=int(seed),
            verbose=False,
            min_points_per_centroid=1,
            max_points_per_centroid=max(1, x.shape[0]),
        )
        km.train(x, init_centroids=kmeans_pp_init(x, k, rng))
        centres = np.asarray(km.centroids, dtype=np.float32).reshape(k, x.shape[1])
        dist, nearest = km.index.search(x, 1)
        inertia = float(dist.sum())
        if best is None or inertia < best[2]:
            best = (nearest[:, 0].astype(np.int64), centres, inertia)
    assert best is not None
    return best


def cluster_means(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """``k x K`` mean of the rows of each cluster (0 for an empty cluster)."""
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, x)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return (sums / np.maximum(counts, 1.0)[:, None]).astype(np.float32)


def elbow_k(candidates: Sequence[int], inertias: Sequence[float]) -> int:
    """The candidate farthest below the chord joining the first and last inertia points.

    Both axes are scaled to [0, 1] first (Kneedle, Satopaa et al. 2011), so the choice
    does not depend on the inertia's units.
    """
    ks = np.asarray(candidates, dtype=np.float64)
    y = np.asarray(inertias, dtype=np.float64)
    if ks.size < 3:
        return int(ks[int(np.argmin(y))]) if ks.size else 0
    xn = (ks - ks[0]) / (ks[-1] - ks[0])
    span = y.max() - y.min()
    yn = (y - y.min()) / span if span > 0 else np.zeros_like(y)
    chord = yn[0] + (yn[-1] - yn[0]) * xn
    return int(ks[int(np.argmax(chord - yn))])


def choose_k(
    x: np.ndarray,
    candidates: Sequence[int] = DEFAULT_CANDIDATES,
    seed: int = 0,
    method: str = "silhouette",
    sample_size: int = 2000,
    niter: int = 25,
    max_points: int = 10000,
    nredo: int = 2,
) -> tuple[int, dict[int, float]]:
    """Pick k among ``candidates``: ``(k, scores)``.

    ``silhouette``: highest mean silhouette (Euclidean distance, 2 sqrt(Hamming) on ±1 codes; on a
    subsample of ``sample_size`` codes drawn with ``seed``); ``elbow``: the knee of the
    inertia curve. Scores hold the silhouette or the inertia of every candidate. To keep
    the sweep cheap, each candidate is clustered (``nredo`` runs) on a seeded subsample of
    at most ``max_points`` codes.
    """
    if method not in K_METHODS:
        raise ClusterError(
            f"method={method!r} is not valid: expected one of {', '.join(K_METHODS)}"
        )
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[0] > max_points:
        rows = np.random.default_rng(seed).choice(x.shape[0], size=max_points, replace=False)
        x = x[np.sort(rows)]
    cands = sorted({_check_k(k, x.shape[0]) for k in candidates})
    if method == "silhouette":
        cands = [k for k in cands if 2 <= k <= x.shape[0] - 1]
    if not cands:
        raise ClusterError(f"no usable candidate k in {list(candidates)} for {x.shape[0]} codes")
    scores: dict[int, float] = {}
    for k in cands:
        labels, _, inertia = kmeans(x, k, seed=seed, niter=niter, nredo=nredo)
        if method == "elbow":
            scores[k] = inertia
        elif len(np.unique(labels)) < 2:
            scores[k] = -1.0  # degenerate clustering: worst possible silhouette
        else:
            n = min(sample_size, x.shape[0])
            scores[k] = float(silhouette_score(x, labels, sample_size=n, random_state=seed))
    if method == "elbow":
        return elbow_k(cands, [scores[k] for k in cands]), scores
    return max(cands, key=lambda k: (scores[k], -k)), scores


def cluster_teacher_codes(
    codes: Any,
    teacher: str,
    k: int | None = None,
    seed: int = 0,
    candidates: Sequence[int] = DEFAULT_CANDIDATES,
    method: str = "silhouette",
    sample_size: int = 2000,
    niter: int = 25,
) -> ClusterResult:
    """BRCD's offline stage on the teacher's training-set codes (row i = dataset index i).

    ``codes``: ±1, {0, 1} or packed uint8. ``teacher``: identity string stored with the
    result. ``k``: number of clusters, or None to choose it among ``candidates`` by
    ``method`` (``"silhouette"`` or ``"elbow"``).
    """
    if not isinstance(teacher, str) or not teacher:
        raise ClusterError(
            f"teacher={teacher!r} is not valid: expected a non-empty identity string"
        )
    x = sign_codes(codes)
    scores: dict[int, float] = {}
    chosen = "given"
    if k is None:
        k, scores = choose_k(
            x, candidates, seed=seed, method=method, sample_size=sample_size, niter=niter
        )
        chosen = method
    labels, centres, inertia = kmeans(x, k, seed=seed, niter=niter)
    return ClusterResult(
        labels=labels,
        centres=centres,
        means=cluster_means(x, labels, centres.shape[0]),
        teacher=teacher,
        seed=int(seed),
        scores=scores,
        method=chosen,
        inertia=inertia,
    )
