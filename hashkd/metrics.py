"""Retrieval metrics for binary codes: mAP@K, precision within a Hamming radius, P@N / R@N and
precision-recall over the Hamming radius.

Conventions (docs/evaluation.md, docs/ARCHITECTURE.md):

* Database item ``i`` is relevant to query ``q`` iff ``y_q . y_i > 0`` on multi-hot labels
  (for single-label data: the same class).
* The database is ranked by Hamming distance to the query; **equal distances are ordered by
  database position** (stable sort on distance, then index), so every figure is reproducible.
* ``AP@K(q) = (1/R_K) * sum_{r=1..K} P@r * rel(r)`` with ``R_K`` the number of relevant items in
  the top K, and ``AP@K(q) = 0`` when ``R_K = 0`` (the query still counts in the mean) -- the
  convention of the CIBHash, DeepHash-pytorch and BRCD evaluation code.
* ``map_tie_averaged`` is the exact expectation of mAP@K when the order of equal distances is
  uniformly random (every peer's ``argsort`` picks some such order), computed in closed form
  from per-distance counts: within a tie group of ``n`` items with ``r`` relevant starting after
  rank ``s``, ``E[rel(s+j) * cum(s+j)] = (r/n) * (R_before + 1 + (j-1)(r-1)/(n-1))`` (the same
  argument as McSherry & Najork, ECIR 2008, "Computing information retrieval performance measures
  efficiently in the presence of tied scores"); the group cut by rank K contributes through a
  hypergeometric number of relevant items.

Everything is vectorised over blocks of queries: distances are small integers (0..K bits), so
histograms are ``bincount`` calls and the ranking is a stable radix ``argsort`` of
``row * (K+1) + distance`` over the few candidates that can reach the top K. Memory stays bounded by ``block_elements`` (query x database cells per
block).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from hashkd.codes import as_codes

DEFAULT_PN_POINTS: tuple[int, ...] = (1, 10, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)
DEFAULT_BLOCK_ELEMENTS = 1 << 23
TIE_BREAK = "database_index"

__all__ = [
    "DEFAULT_PN_POINTS",
    "as_label_matrix",
    "code_health",
    "collapse_warning",
    "evaluate_codes",
    "hamming_into",
    "mean_average_precision",
    "precision_at_radius",
    "relevance",
]


# ----------------------------------------------------------------------------- inputs


def as_label_matrix(
    labels: Any, n: int, name: str = "labels", num_classes: int | None = None
) -> np.ndarray:
    """Return ``labels`` as a uint8 multi-hot matrix (n x C).

    A 1-d integer array is read as class indices and one-hot encoded (``num_classes`` columns,
    default ``max + 1``).
    """
    if labels is None:
        raise ValueError(f"{name} are missing: expected an n x C multi-hot label array")
    arr = np.asarray(labels)
    if arr.ndim == 1 and arr.dtype.kind in "iu":
        if arr.shape[0] and arr.min() < 0:
            raise ValueError(f"{name} hold a negative class index: expected indices >= 0")
        c = int(num_classes if num_classes is not None else (arr.max() + 1 if arr.size else 1))
        out = np.zeros((arr.shape[0], c), dtype=np.uint8)
        out[np.arange(arr.shape[0]), arr] = 1
        arr = out
    if arr.ndim != 2:
        raise ValueError(f"{name} have shape {arr.shape}: expected an n x C multi-hot matrix")
    if arr.shape[0] != n:
        raise ValueError(
            f"{name} have {arr.shape[0]} rows but there are {n} codes: expected one row per code"
        )
    if arr.dtype != np.uint8:
        arr = (arr != 0).astype(np.uint8)
    return arr


def _shared_class_count(query_labels: Any, db_labels: Any) -> int | None:
    """Common class count when both sides are given as 1-d class indices."""
    arrays = [np.asarray(x) for x in (query_labels, db_labels) if x is not None]
    if len(arrays) == 2 and all(a.ndim == 1 and a.dtype.kind in "iu" and a.size for a in arrays):
        return int(max(a.max() for a in arrays)) + 1
    return None


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        expect = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name}={value!r} is not valid: expected {expect}")
    return int(value)


# ----------------------------------------------------------------------------- distances and relevance


def hamming_into(query: np.ndarray, database: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Exact Hamming distances (nq x nd, int32) of packed codes, written into ``out``.

    Uses ``faiss.hammings`` (popcount kernels for every code length; about 5x faster than numpy
    xor + ``bitwise_count``); agrees with :func:`hashkd.codes.hamming_distances`.
    """
    import faiss

    q, d = np.ascontiguousarray(query), np.ascontiguousarray(database)
    assert (
        out.dtype == np.int32 and out.shape == (q.shape[0], d.shape[0]) and out.flags.c_contiguous
    )
    faiss.hammings(
        faiss.swig_ptr(q),
        faiss.swig_ptr(d),
        q.shape[0],
        d.shape[0],
        q.shape[1],
        faiss.swig_ptr(out),
    )
    return out


def _single_label_ids(labels: np.ndarray) -> np.ndarray | None:
    """Class index per row when every row has exactly one label, else None."""
    if labels.shape[0] and (labels.sum(axis=1) == 1).all():
        return labels.argmax(axis=1)
    return None


def relevance(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """Boolean relevance matrix ``y_q . y_i > 0`` (nq x nd) for multi-hot label matrices."""
    q, d = np.asarray(query_labels), np.asarray(db_labels)
    qi, di = _single_label_ids(q), _single_label_ids(d)
    if qi is not None and di is not None:
        return qi[:, None] == di[None, :]
    # float32 sums of 0/1 products are exact up to 2**24 labels.
    return (q.astype(np.float32) @ d.astype(np.float32).T) > 0


def _histograms(dist: np.ndarray, rel: np.ndarray, groups: int) -> np.ndarray:
    """Per-row counts of (distance, relevant): b x groups x 2. Overwrites ``dist`` (int32).

    One ``bincount`` over ``key = (row * groups + distance) * 2 + relevant`` per chunk of about
    a million cells, so that the keys stay in cache (2-3x faster than one big ``bincount``).
    """
    b, nd = dist.shape
    out = np.empty((b, groups, 2), dtype=np.int64)
    step = max(1, (1 << 20) // max(nd, 1))
    for s in range(0, b, step):
        key = dist[s : s + step]
        n = key.shape[0]
        key += (np.arange(n, dtype=np.int32) * groups)[:, None]
        key *= 2
        key += rel[s : s + step]
        out[s : s + n] = np.bincount(key.ravel(), minlength=n * 2 * groups).reshape(n, groups, 2)
    return out


def _ranked_relevance(dist: np.ndarray, rel: np.ndarray, n_g: np.ndarray, depth: int) -> np.ndarray:
    """Relevance of the first ``depth`` items of each row's ranking (b x depth, bool).

    The ranking is by distance, ties by database position. Only candidates matter: items at
    most at the distance where rank ``depth`` falls (known from the histogram ``n_g``), a few
    percent of the database. They are compacted in row-major order (so by index within a row)
    and one stable radix sort of ``row * groups + distance`` (uint16 when it fits) orders them.
    """
    b, groups = n_g.shape
    n_cum = np.cumsum(n_g, axis=1)
    cut = np.argmax(n_cum >= depth, axis=1)
    mask = dist <= cut[:, None].astype(dist.dtype)
    count = n_cum[np.arange(b), cut]  # candidates per row (>= depth)
    kind = np.uint16 if b * groups <= np.iinfo(np.uint16).max else np.uint32
    key = dist[mask].astype(kind)
    key += np.repeat((np.arange(b) * groups).astype(kind), count)
    order = np.argsort(key, kind="stable")
    del key
    first = np.cumsum(count) - count
    return rel[mask][order[first[:, None] + np.arange(depth)[None, :]]]


# ----------------------------------------------------------------------------- tie-averaged AP


def _harmonic(n: int) -> np.ndarray:
    """``H[m] = sum_{i=1..m} 1/i`` for m = 0..n."""
    h = np.zeros(n + 1, dtype=np.float64)
    h[1:] = np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.float64))
    return h


def _tie_sum(
    h: np.ndarray, s: np.ndarray, n: np.ndarray, r: np.ndarray, r_before: np.ndarray
) -> np.ndarray:
    """Expected ``sum_j rel(s+j) * cum(s+j) / (s+j)`` over ``n`` tied items in random order.

    The group holds ``r`` relevant items and starts after rank ``s`` with ``r_before`` relevant
    items ranked before it. With ``H1 = sum_j 1/(s+j)`` and ``H2 = sum_j (j-1)/(s+j) = n - (s+1) H1``
    the expectation is ``(r/n) * ((r_before + 1) * H1 + (r-1)/(n-1) * H2)``.
    """
    n_safe = np.maximum(n, 1)
    h1 = h[s + n] - h[s]
    h2 = n - (s + 1) * h1
    pair = np.where(n > 1, (r - 1) / np.maximum(n - 1, 1), 0.0)
    return np.where(n > 0, (r / n_safe) * ((r_before + 1) * h1 + pair * h2), 0.0)


def _log_factorials(n: int) -> np.ndarray:
    """``L[m] = log(m!)`` for m = 0..n."""
    out = np.zeros(n + 1, dtype=np.float64)
    out[1:] = np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))
    return out


def _tie_averaged_ap(
    n_g: np.ndarray, r_g: np.ndarray, topk: int, h: np.ndarray, logfact: np.ndarray
) -> np.ndarray:
    """Expected AP@K per query under uniformly random order of equal distances.

    ``n_g`` / ``r_g``: items / relevant items per distance (b x (bits+1)). Groups wholly inside
    the top K contribute their expected sum (:func:`_tie_sum`); from the group cut by rank K,
    ``m`` random items enter, holding ``X ~ Hypergeometric(n*, r*, m)`` relevant ones, and
    ``E[AP] = sum_x P(X=x) * (E[S_full] + E[S_cut | x]) / (R_before + x)`` (the orders of the
    full groups and the subset drawn from the cut group are independent).
    """
    b = n_g.shape[0]
    rows = np.arange(b)
    n_cum = np.cumsum(n_g, axis=1)
    r_cum = np.cumsum(r_g, axis=1)
    n_before = n_cum - n_g
    r_before = r_cum - r_g
    cut = np.argmax(n_cum >= topk, axis=1)  # the group that rank K falls in
    full = np.arange(n_g.shape[1])[None, :] < cut[:, None]
    e_full = np.where(full, _tie_sum(h, n_before, n_g, r_g, r_before), 0.0).sum(axis=1)

    s = n_before[rows, cut][:, None]
    m = topk - s  # items taken from the cut group, 1..n*
    n_star = n_g[rows, cut][:, None]
    r_star = r_g[rows, cut][:, None]
    r0 = r_before[rows, cut][:, None]
    x = np.arange(int(min(topk, r_star.max(initial=0))) + 1)[None, :]
    support = (x <= np.minimum(m, r_star)) & (x >= m - (n_star - r_star))

    def log_choose(n: np.ndarray, k: np.ndarray) -> np.ndarray:
        k = np.clip(k, 0, n)
        return logfact[n] - logfact[k] - logfact[n - k]

    logp = log_choose(r_star, x) + log_choose(n_star - r_star, m - x) - log_choose(n_star, m)
    pmf = np.where(support, np.exp(np.where(support, logp, 0.0)), 0.0)
    pmf /= pmf.sum(axis=1, keepdims=True)  # remove the rounding of large log-factorials
    h1 = h[s + m] - h[s]
    h2 = m - (s + 1) * h1
    pair = np.where(m > 1, (x - 1) / np.maximum(m - 1, 1), 0.0)
    e_cut = (x / m) * ((r0 + 1) * h1 + pair * h2)
    total_rel = r0 + x
    ap_x = np.where(total_rel > 0, (e_full[:, None] + e_cut) / np.maximum(total_rel, 1), 0.0)
    return (pmf * ap_x).sum(axis=1)


# ----------------------------------------------------------------------------- evaluation


def _pn_points(points: Iterable[int] | None, num_database: int) -> np.ndarray:
    pts = DEFAULT_PN_POINTS if points is None else tuple(points)
    for p in pts:
        _check_int(p, "precision@N point", 1)
    # points beyond the database are clipped to it: the curve then ends at the whole database
    return (
        np.unique(np.minimum(np.asarray(pts, dtype=np.int64), num_database))
        if pts
        else np.asarray([num_database], dtype=np.int64)
    )


def evaluate_codes(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    topk: int = 1000,
    radius: int = 2,
    curves: bool = True,
    pn_points: Sequence[int] | None = None,
    tie_averaged: bool = True,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> dict[str, Any]:
    """Evaluate Hamming ranking of packed codes against multi-hot labels.

    Args:
        query_codes, db_codes: packed uint8 codes (n x K/8, :mod:`hashkd.codes` layout).
        query_labels, db_labels: multi-hot uint8 (n x C), or 1-d class indices.
        topk: K of mAP@K; clipped to the database size (the returned ``topk`` is the one used).
        radius: Hamming radius of the "hash lookup" precision (inclusive, ``<= radius``).
        curves: also return P@N / R@N at ``pn_points`` and precision-recall over radius 0..K.
        tie_averaged: also return the expected mAP@K under random order of equal distances.
        block_elements: query x database cells per block (bounds memory, ~15 bytes each).

    Returns:
        A JSON-ready dict: ``map``, ``map_tie_averaged`` (or None), ``topk``,
        ``precision_at_radius``, ``radius``, ``radius_hit_rate`` (share of queries with at least
        one item within the radius), ``bits``, ``num_queries``, ``num_database``,
        ``tie_break`` and, with ``curves``, ``curves = {"precision_at_n": {n, precision, recall},
        "pr_radius": {radius, precision, recall, hit_rate}}``. Per-query ratios with an empty
        denominator (nothing retrieved, nothing relevant) count 0 in every mean.
    """
    q = as_codes(query_codes)
    d = as_codes(db_codes)
    if q.shape[1] != d.shape[1]:
        raise ValueError(
            f"query codes are {q.shape[1] * 8} bits but database codes are {d.shape[1] * 8} bits: expected equal code lengths"
        )
    nq, nd, bits = q.shape[0], d.shape[0], q.shape[1] * 8
    if nq == 0:
        raise ValueError("there are no query codes: expected at least one query")
    if nd == 0:
        raise ValueError("there are no database codes: expected at least one database item")
    topk = min(_check_int(topk, "topk", 1), nd)
    radius = _check_int(radius, "radius", 0)
    _check_int(block_elements, "block_elements", 1)
    num_classes = _shared_class_count(query_labels, db_labels)
    ql = as_label_matrix(query_labels, nq, "query labels", num_classes)
    dl = as_label_matrix(db_labels, nd, "database labels", num_classes)
    if ql.shape[1] != dl.shape[1]:
        raise ValueError(
            f"query labels have {ql.shape[1]} classes but database labels have {dl.shape[1]}: expected the same label space"
        )
    pts = _pn_points(pn_points, nd) if curves else np.zeros(0, dtype=np.int64)
    depth = int(max(topk, pts.max(initial=0)))
    groups = bits + 1
    small = np.uint8 if bits < 256 else np.uint16  # compact distances: cheap masks and gathers

    q_single, d_single = _single_label_ids(ql), _single_label_ids(dl)
    single = q_single is not None and d_single is not None
    dl_t = dl.astype(np.float32).T if not single else None
    ranks = np.arange(1, depth + 1, dtype=np.float64)
    harmonic = _harmonic(nd) if tie_averaged else None
    logfact = _log_factorials(nd) if tie_averaged else None

    ap = np.empty(nq)
    ap_tie = np.empty(nq) if tie_averaged else None
    cum_at_n = np.empty((nq, pts.size))
    # hist[q, g, 0/1]: database items at distance g that are not relevant / relevant to q
    hist = np.empty((nq, groups, 2), dtype=np.int64)

    block = max(1, min(nq, block_elements // nd))
    buf = np.empty((block, nd), dtype=np.int32)
    for start in range(0, nq, block):
        stop = min(nq, start + block)
        b = stop - start
        key = hamming_into(q[start:stop], d, buf[:b])
        dist = key.astype(small)
        if single:
            rel = q_single[start:stop, None] == d_single[None, :]
        else:
            rel = (ql[start:stop].astype(np.float32) @ dl_t) > 0
        h = _histograms(key, rel, groups)
        hist[start:stop] = h
        n_g = h.sum(axis=2)
        ranked = _ranked_relevance(dist, rel, n_g, depth)
        del dist
        cum = np.cumsum(ranked, axis=1, dtype=np.int64)
        r_k = cum[:, topk - 1]
        s = (ranked[:, :topk] * (cum[:, :topk] / ranks[:topk])).sum(axis=1)
        ap[start:stop] = np.where(r_k > 0, s / np.maximum(r_k, 1), 0.0)
        if pts.size:
            cum_at_n[start:stop] = cum[:, pts - 1]
        if tie_averaged:
            ap_tie[start:stop] = _tie_averaged_ap(n_g, h[:, :, 1], topk, harmonic, logfact)

    n_g = hist.sum(axis=2)
    r_g = hist[:, :, 1]
    total_rel = r_g.sum(axis=1)
    within = min(radius, bits)
    hits_in_radius = n_g[:, : within + 1].sum(axis=1)
    rel_in_radius = r_g[:, : within + 1].sum(axis=1)
    prec_r = np.where(hits_in_radius > 0, rel_in_radius / np.maximum(hits_in_radius, 1), 0.0)
    result: dict[str, Any] = {
        "map": float(ap.mean()),
        "map_tie_averaged": float(ap_tie.mean()) if ap_tie is not None else None,
        "topk": int(topk),
        "precision_at_radius": float(prec_r.mean()),
        "radius": int(radius),
        "radius_hit_rate": float((hits_in_radius > 0).mean()),
        "bits": int(bits),
        "num_queries": int(nq),
        "num_database": int(nd),
        "tie_break": TIE_BREAK,
    }
    if curves:
        denom = np.maximum(total_rel, 1)[:, None]
        has_rel = (total_rel > 0)[:, None]
        result["curves"] = {
            "precision_at_n": {
                "n": pts.tolist(),
                "precision": (cum_at_n / pts[None, :]).mean(axis=0).tolist(),
                "recall": np.where(has_rel, cum_at_n / denom, 0.0).mean(axis=0).tolist(),
            },
            "pr_radius": _pr_over_radius(hist, total_rel),
        }
    return result


def _pr_over_radius(hist: np.ndarray, total_rel: np.ndarray) -> dict[str, list]:
    """Mean precision / recall / hit rate of the lookup ``distance <= r`` for r = 0..K."""
    cum = np.cumsum(hist, axis=1)  # nq x groups x (non-relevant, relevant)
    retrieved = cum.sum(axis=2)
    relevant = cum[:, :, 1]
    precision = np.where(retrieved > 0, relevant / np.maximum(retrieved, 1), 0.0)
    recall = np.where(total_rel[:, None] > 0, relevant / np.maximum(total_rel, 1)[:, None], 0.0)
    return {
        "radius": list(range(hist.shape[1])),
        "precision": precision.mean(axis=0).tolist(),
        "recall": recall.mean(axis=0).tolist(),
        "hit_rate": (retrieved > 0).mean(axis=0).tolist(),
    }


def mean_average_precision(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    topk: int = 1000,
) -> float:
    """mAP@K with ties broken by database position (see :func:`evaluate_codes`)."""
    out = evaluate_codes(
        query_codes, db_codes, query_labels, db_labels, topk=topk, curves=False, tie_averaged=False
    )
    return out["map"]


def precision_at_radius(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    radius: int = 2,
) -> float:
    """Mean share of relevant items within Hamming distance ``<= radius`` (0 for an empty lookup)."""
    out = evaluate_codes(
        query_codes,
        db_codes,
        query_labels,
        db_labels,
        topk=1,
        radius=radius,
        curves=False,
        tie_averaged=False,
    )
    return out["precision_at_radius"]


#: collapsed: fewer distinct codes than this share of the items
COLLAPSE_DISTINCT_FRACTION = 0.01
#: collapsed: more than this share of the items in one bucket (29 codes with 44% in one bucket
#: retrieve a near-constant list for almost half the queries)
COLLAPSE_BUCKET_FRACTION = 0.25
#: collapsed: an effective number of codes (exp of the entropy of the code histogram) below this
#: share of the items (a few large buckets behind a scatter of singletons)
COLLAPSE_EFFECTIVE_FRACTION = 0.01


def code_health(codes: np.ndarray) -> dict[str, Any]:
    """Diagnostics of a code set that reveal collapse, which mAP alone can hide.

    Returns a JSON-ready dict: ``num_codes``, ``distinct_codes`` (number of different codes),
    ``distinct_fraction``, ``effective_codes`` (``exp(H)``, H the Shannon entropy in nats of the
    share of items per code: the number of equally filled buckets with the same entropy),
    ``bit_balance`` (``mean_k |p_k - 0.5|`` with ``p_k`` the share of ones of bit ``k``: 0 for
    perfectly balanced bits, 0.5 when every bit is constant), ``largest_bucket_fraction``
    (share of the items that share the most frequent code, i.e. sit in the largest
    Hamming-distance-0 bucket), ``collapse_reasons`` and ``collapsed`` (True when any reason
    holds): fewer distinct codes than ``COLLAPSE_DISTINCT_FRACTION`` (1%) of the items; more than
    ``COLLAPSE_BUCKET_FRACTION`` (a quarter) of the items sharing one code; fewer effective codes
    than ``COLLAPSE_EFFECTIVE_FRACTION`` (1%) of the items; one code for all of several items.
    """
    c = as_codes(codes)
    n = int(c.shape[0])
    if n == 0:
        raise ValueError("there are no codes: expected at least one code to diagnose")
    rows = np.ascontiguousarray(c).view(np.dtype((np.void, c.shape[1]))).ravel()
    _, counts = np.unique(rows, return_counts=True)
    ones = np.unpackbits(c, axis=1).mean(axis=0)
    distinct = int(counts.size)
    largest = float(counts.max() / n)
    share = counts / n
    effective = float(np.exp(-(share * np.log(share)).sum()))
    reasons = []
    if distinct == 1 and n > 1:
        reasons.append("one code for all items")
    if distinct < COLLAPSE_DISTINCT_FRACTION * n:
        reasons.append(f"fewer distinct codes than {COLLAPSE_DISTINCT_FRACTION:.0%} of the items")
    if largest > COLLAPSE_BUCKET_FRACTION:
        reasons.append(f"more than {COLLAPSE_BUCKET_FRACTION:.0%} of the items in one bucket")
    if effective < COLLAPSE_EFFECTIVE_FRACTION * n:
        reasons.append(f"fewer effective codes than {COLLAPSE_EFFECTIVE_FRACTION:.0%} of the items")
    return {
        "num_codes": n,
        "distinct_codes": distinct,
        "distinct_fraction": distinct / n,
        "effective_codes": effective,
        "bit_balance": float(np.abs(ones - 0.5).mean()),
        "largest_bucket_fraction": largest,
        "collapse_reasons": reasons,
        "collapsed": bool(reasons),
    }


def worst_health(healths: Sequence[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """``(position, health)`` of the least healthy code set of several (e.g. one per seed): a
    collapsed one before a healthy one, then the fewest effective codes, then the largest
    bucket. A table of means would hide one seed's collapse behind two healthy ones."""
    if not healths:
        raise ValueError("there is no code health to compare: expected at least one")

    def badness(item: tuple[int, dict[str, Any]]) -> tuple:
        h = item[1]
        effective = h.get("effective_codes", h["distinct_codes"])
        return (not h["collapsed"], effective, -h["largest_bucket_fraction"])

    return min(enumerate(healths), key=badness)


def collapse_warning(health: dict[str, Any], name: str = "codes") -> str | None:
    """One sentence warning about a collapsed code set (None when it is healthy)."""
    if not health["collapsed"]:
        return None
    reasons = health.get("collapse_reasons")
    why = f" ({'; '.join(reasons)})" if reasons else ""
    return (
        f"warning: {name} look collapsed: {health['distinct_codes']} distinct codes for "
        f"{health['num_codes']} items, {health['largest_bucket_fraction']:.1%} of them in one bucket"
        f"{why}; their mAP is not a fair comparison"
    )


def mean_std_text(values: Sequence[float | None], digits: int = 4) -> str:
    """A table cell for a figure over seeds: ``mean ± std`` (sample std, ddof 1), the mean alone
    for one value (no spread is known), "-" for none; ``None`` values are left out."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return "-"
    mean = float(np.mean(vals))
    if len(vals) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {float(np.std(vals, ddof=1)):.{digits}f}"
