"""Seeded, class-balanced splits and the named retrieval protocols (CIFAR-10, digits).

The hashing literature evaluates retrieval with four disjoint-or-nested sets drawn per
class with a fixed seed (CIBHash, Qiu et al. IJCAI 2021; BRCD, WWW 2024; DeepHash-pytorch):
``train`` (unlabelled training images), ``val`` (model selection — never the test queries),
``query`` and ``database`` (retrieval evaluation). The seed goes into every output.

Each split of a protocol comes in a seeded random order, never sorted by class: mAP@K breaks
equal Hamming distances by database position, so a class-sorted database would let tied (or
collapsed) codes gain from the class order (docs/data.md, docs/evaluation.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from hashkd.data.datasets import DatasetView, ImageDataset

SizeSpec = int | str | None
_SPEC_RE = re.compile(r"^\s*(\d+|rest|all)\s*((?:\+\s*[A-Za-z_][\w-]*\s*)*)$")


def primary_class(labels: np.ndarray) -> np.ndarray:
    """The class each image is balanced by: its class id, or for multi-hot rows the FIRST label.

    ``labels`` is a 1-D array of class ids or an ``n x C`` multi-hot array; for multi-label
    data (NUS-WIDE, COCO) an image counts toward the lowest-numbered class it carries.
    Rows without any label are rejected.
    """
    labels = np.asarray(labels)
    if labels.ndim == 1:
        if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
            raise ValueError(
                "1-D labels must be non-negative integer class ids: expected ids or an n x C multi-hot array"
            )
        return labels.astype(np.int64)
    if labels.ndim != 2:
        raise ValueError(
            f"labels of shape {labels.shape} are not valid: expected class ids or an n x C multi-hot array"
        )
    positive = labels > 0
    empty = np.flatnonzero(~positive.any(axis=1))
    if empty.size:
        raise ValueError(
            f"{empty.size} images have no label (first: row {int(empty[0])}): expected at least one class per image"
        )
    return positive.argmax(axis=1).astype(np.int64)


def _parse_spec(name: str, value: SizeSpec) -> tuple[int | str, tuple[str, ...]]:
    if value is None:
        return "rest", ()
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, str)):
        raise ValueError(
            f"size {value!r} of split {name!r} is not valid: expected an int per class, None, 'rest', 'all' or e.g. 'rest+train'"
        )
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise ValueError(
                f"size {value} of split {name!r} is negative: expected a count per class >= 0"
            )
        return int(value), ()
    m = _SPEC_RE.match(value)
    if not m:
        raise ValueError(
            f"size {value!r} of split {name!r} is not valid: expected an int per class, 'rest', 'all' or e.g. 'rest+train', '500+train'"
        )
    base = m.group(1)
    extra = tuple(p.strip() for p in m.group(2).split("+") if p.strip())
    return (int(base) if base.isdigit() else base), extra


def class_balanced_split(
    labels: np.ndarray,
    sizes: Mapping[str, SizeSpec],
    seed: int,
    class_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Draw named, seeded, class-balanced index sets from ``labels``.

    ``sizes`` maps a split name to:
      - an int ``n``: ``n`` images of every class, drawn from images not in an earlier split;
      - ``None`` or ``"rest"``: every image no int-sized split took (at most one such split);
      - ``"all"``: every image;
      - ``"<n|rest|all>+name[+name...]"``: the same, united with the named splits' draws
        (``"rest+train"``: the CIFAR protocol's database that contains the training images).
    Int-sized splits are drawn first, in ``sizes`` order, from one seeded permutation per
    class; so the splits are disjoint unless ``all`` or ``+name`` asks otherwise. Classes
    follow :func:`primary_class` (first label of multi-hot rows). Returns sorted int64 index
    arrays; the same seed always gives the same arrays. A class with too few images raises.
    """
    if seed is None or isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(
            f"seed={seed!r} is not valid: expected an integer so that the split can be reproduced"
        )
    primary = primary_class(labels)
    parsed = {str(name): _parse_spec(str(name), value) for name, value in sizes.items()}
    rest_names = [n for n, (base, _) in parsed.items() if base == "rest"]
    if len(rest_names) > 1:
        raise ValueError(
            f"splits {rest_names} all ask for the rest: expected at most one 'rest' split"
        )
    for name, (_, extra) in parsed.items():
        for other in extra:
            if other not in parsed or other == name:
                raise ValueError(
                    f"split {name!r} adds split {other!r}: expected the name of another split in {list(parsed)}"
                )

    rng = np.random.default_rng(int(seed))
    classes = np.unique(primary)
    perms = [rng.permutation(np.flatnonzero(primary == c)) for c in classes]
    taken = [0] * len(classes)
    drawn: dict[str, np.ndarray] = {}
    for name, (base, _) in parsed.items():
        if not isinstance(base, int):
            continue
        parts = []
        for k, c in enumerate(classes):
            left = len(perms[k]) - taken[k]
            if base > left:
                cname = class_names[c] if class_names is not None else str(int(c))
                raise ValueError(
                    f"class {cname!r} has {left} images left for split {name!r}: expected at least {base} per class"
                )
            parts.append(perms[k][taken[k] : taken[k] + base])
            taken[k] += base
        drawn[name] = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    for name, (base, _) in parsed.items():
        if base == "rest":
            rest = [perms[k][taken[k] :] for k in range(len(classes))]
            drawn[name] = np.concatenate(rest) if rest else np.zeros(0, dtype=np.int64)
        elif base == "all":
            drawn[name] = np.arange(len(primary), dtype=np.int64)
    out = {}
    for name, (_, extra) in parsed.items():
        idx = np.concatenate([drawn[name], *(drawn[o] for o in extra)])
        out[name] = np.unique(idx).astype(np.int64)
    return out


@dataclass(frozen=True)
class Protocol:
    """A named retrieval protocol: per-class split sizes and where each split comes from.

    ``train``/``val``/``query`` are counts per class; ``database`` is a size spec of
    :func:`class_balanced_split` (``"all"``, ``"rest"``, ``"500+train"``...). ``pool_group``
    and ``query_group`` name dataset groups (``dataset.groups``) to draw from: CIFAR-10 draws
    train/val/database from ``train`` and queries from ``test``; ``None`` means the whole
    dataset. ``dataset`` is the default :func:`hashkd.data.load_dataset` spec. ``shuffle``:
    every split comes in a seeded random order (:func:`shuffle_splits`); ``False`` keeps the
    ascending index order (class-sorted for class-sorted data), which favours tied codes.
    """

    name: str
    train: int
    val: int
    query: int
    database: SizeSpec = "rest"
    pool_group: str | None = None
    query_group: str | None = None
    dataset: str | None = None
    description: str = ""
    shuffle: bool = True

    def pool_sizes(self) -> dict[str, SizeSpec]:
        """Sizes drawn from the pool (with ``query`` when queries share the pool)."""
        sizes: dict[str, SizeSpec] = {"train": self.train, "val": self.val}
        if self.query_group is None:
            sizes["query"] = self.query
        sizes["database"] = self.database
        return sizes

    def with_database_per_class(self, per_class: int) -> Protocol:
        """This protocol with a database of ``per_class`` images per class.

        When the database contains the training images (``"all"`` or ``"...+train"``), the
        smaller database keeps them: ``train`` images plus ``per_class - train`` others
        (never validation images) per class; otherwise ``per_class`` images not in another split.
        """
        per_class = int(per_class)
        _, extra = _parse_spec("database", self.database)
        includes_train = self.database == "all" or "train" in extra
        if includes_train:
            if per_class < self.train:
                raise ValueError(
                    f"database_per_class={per_class} is smaller than the {self.train} training images per class "
                    f"the {self.name!r} database contains: expected at least {self.train}"
                )
            database: SizeSpec = f"{per_class - self.train}+train"
        else:
            if per_class < 1:
                raise ValueError(
                    f"database_per_class={per_class} is not valid: expected a positive count"
                )
            database = per_class
        return replace(self, name=f"{self.name}@db{per_class}", database=database)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROTOCOLS: dict[str, Protocol] = {
    "cifar10": Protocol(
        name="cifar10",
        train=500,
        val=100,
        query=100,
        database="all",
        pool_group="train",
        query_group="test",
        dataset="cifar10",
        description="CIBHash/BRCD CIFAR-10: train 500/class and val 100/class (disjoint) from the "
        "train folder, query 100/class from the test folder, database = all 50,000 train images.",
    ),
    "digits": Protocol(
        name="digits",
        train=50,
        val=10,
        query=20,
        database="rest",
        dataset="digits",
        description="scikit-learn digits: train 50/class, val 10/class, query 20/class, database = "
        "the remaining ~997 images (all disjoint).",
    ),
}
PROTOCOLS["cifar10-cpu"] = replace(
    PROTOCOLS["cifar10"].with_database_per_class(1000),
    name="cifar10-cpu",
    description="CIFAR-10 on CPU: as cifar10 but the database is 1,000/class = 10,000 train images "
    "(the 500/class training images plus 500/class others, no validation images).",
)


SPLIT_NAMES: tuple[str, ...] = ("train", "val", "query", "database")


def shuffle_splits(indices: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Each split's indices in a random order drawn from ``seed``; the members are unchanged.

    The order of a split depends only on ``seed``, the split's name and its members (one
    random stream per name in :data:`SPLIT_NAMES`, apart from the stream that drew the
    members), so e.g. the ``train`` split of ``cifar10`` and ``cifar10-cpu`` stay identical.
    """
    out = {}
    for name, idx in indices.items():
        stream = SPLIT_NAMES.index(name) + 1 if name in SPLIT_NAMES else len(SPLIT_NAMES) + 1
        rng = np.random.default_rng([int(seed), stream])
        out[name] = rng.permutation(np.sort(np.asarray(idx, dtype=np.int64)))
    return out


def get_protocol(protocol: str | Protocol) -> Protocol:
    """A :class:`Protocol` by name (``cifar10``, ``cifar10-cpu``, ``digits``), or the one given."""
    if isinstance(protocol, Protocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"protocol {protocol!r} is not known: expected one of {', '.join(PROTOCOLS)}"
        )
    return PROTOCOLS[protocol]


@dataclass
class Splits(Mapping[str, DatasetView]):
    """The result of :func:`make_splits`: ``splits["train"|"val"|"query"|"database"]`` are views.

    ``indices[name]`` are indices into the dataset the split was drawn from: the single dataset
    given (whatever group the split came from), or the mapping entry ``meta["sources"][name]``.
    ``meta`` is JSON-serialisable (protocol, seed, per-class sizes, counts, sources = the
    group or mapping key each split came from, ``"all"`` for a whole dataset, and the
    dataset's ``describe()``) for callers to write into outputs.
    """

    views: dict[str, DatasetView]
    indices: dict[str, np.ndarray]
    meta: dict[str, Any]

    def __getitem__(self, name: str) -> DatasetView:
        return self.views[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.views)

    def __len__(self) -> int:
        return len(self.views)

    @property
    def seed(self) -> int:
        return int(self.meta["seed"])


def _pool(
    dataset: ImageDataset | Mapping[str, ImageDataset],
    group: str | None,
    protocol: Protocol,
    role: str,
) -> tuple[str, ImageDataset, np.ndarray]:
    """(source name, dataset, candidate indices) for one pool of a protocol."""
    if isinstance(dataset, Mapping):
        key = group or "train"
        if key not in dataset:
            raise ValueError(
                f"protocol {protocol.name!r} draws {role} from {key!r}: expected a dataset under that key, got {sorted(dataset)}"
            )
        ds = dataset[key]
        return key, ds, np.arange(len(ds), dtype=np.int64)
    if group is None:
        return "all", dataset, np.arange(len(dataset), dtype=np.int64)
    groups = dataset.groups or {}
    if group not in groups:
        example = f" such as load_dataset({protocol.dataset!r})" if protocol.dataset else ""
        raise ValueError(
            f"protocol {protocol.name!r} draws {role} from the {group!r} images but the dataset has groups "
            f"{sorted(groups)}: expected a dataset with a {group!r} group{example} or a dict of datasets "
            f"with key {group!r}"
        )
    return group, dataset, np.asarray(groups[group], dtype=np.int64)


def make_splits(
    protocol: str | Protocol,
    dataset: ImageDataset | Mapping[str, ImageDataset],
    seed: int,
    database_per_class: int | None = None,
) -> Splits:
    """Draw ``train``/``val``/``query``/``database`` of a protocol from ``dataset`` with ``seed``.

    ``dataset`` is one :class:`ImageDataset` (with ``groups`` when the protocol names them,
    e.g. ``load_dataset("cifar10")``) or a mapping such as ``{"train": ds, "test": ds}``.
    ``database_per_class`` shrinks the database (see :meth:`Protocol.with_database_per_class`).
    Every split is in a seeded random order (:func:`shuffle_splits`) unless the protocol says
    ``shuffle=False`` (then ascending indices); ``meta["order"]`` records which.
    """
    proto = get_protocol(protocol)
    if database_per_class is not None:
        proto = proto.with_database_per_class(database_per_class)
    pool_src, pool_ds, pool_idx = _pool(dataset, proto.pool_group, proto, "train/val/database")
    names = pool_ds.class_names
    drawn = class_balanced_split(
        pool_ds.labels[pool_idx], proto.pool_sizes(), seed, class_names=names
    )
    indices = {k: pool_idx[v] for k, v in drawn.items()}
    sources = dict.fromkeys(indices, pool_src)
    parents = dict.fromkeys(indices, pool_ds)
    if proto.query_group is not None:
        q_src, q_ds, q_idx = _pool(dataset, proto.query_group, proto, "queries")
        q = class_balanced_split(
            q_ds.labels[q_idx], {"query": proto.query}, seed, class_names=q_ds.class_names
        )
        indices["query"] = q_idx[q["query"]]
        sources["query"], parents["query"] = q_src, q_ds
    order = SPLIT_NAMES
    if proto.shuffle:
        indices = shuffle_splits(indices, seed)
    views = {k: parents[k].subset(indices[k]) for k in order}
    meta = {
        "protocol": proto.name,
        "seed": int(seed),
        "per_class": {
            "train": proto.train,
            "val": proto.val,
            "query": proto.query,
            "database": proto.database,
        },
        "sizes": {k: int(len(indices[k])) for k in order},
        "sources": {k: sources[k] for k in order},
        "order": "shuffled" if proto.shuffle else "sorted",
        "dataset": pool_ds.describe(),
    }
    return Splits(
        views=views,
        indices={k: indices[k] for k in order},
        meta=meta,
    )
