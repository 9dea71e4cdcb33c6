"""The flag vocabulary of every ``hashkd`` command: one name per meaning, and the old names.

:data:`MEANINGS` lists every flag of every sub-command (``hashkd``'s own and those the
``indexes`` and ``service`` packages register) with its one meaning; tests/test_cli_vocabulary.py
walks the real parsers and fails on a flag missing from it, on a flag whose kind (switch, integer,
number, text) differs between commands, and on a duration flag without its unit (``-seconds`` or
``-minutes``) in the name. docs/cli.md shows the same table.

:data:`DEPRECATED` keeps the names of the previous release working for one more release as
hidden aliases that print a warning (:func:`add_deprecated_aliases`, applied to every command by
:func:`hashkd.cli.build_parser`; ``indexes`` and ``service`` need not import anything of
``hashkd`` for it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: flag -> its one meaning, across every command.
MEANINGS: dict[str, str] = {
    # what the command reads and writes
    "--config": "YAML file of a run's settings (flags given beside it win)",
    "--data": "image source: class folder, list file, 'digits' or 'cifar10[:PATH]'",
    "--root": "folder the paths of a list file are relative to",
    "--split-protocol": "named split protocol of the data (train / val / query / database)",
    "--split": "which split of the split protocol to use",
    "--group": "named part of the data (e.g. CIFAR-10's training images)",
    "--pool": "unlabeled images to distil on instead of the training split",
    "--teacher-cache": "folder of the teacher's stored logits, reused by later runs",
    "--max-train": "at most this many training images",
    "--out": "where the command writes its result (a folder; an index file for index build)",
    "--workdir": "folder of every artifact of the demo",
    "--json-out": "file the results are written to as JSON",
    "--markdown": "file the Markdown table is written to",
    "--plots": "folder the plots are written to",
    "--save-codes": "folder the encoded code sets are written to",
    "--print-json": "print the results as JSON instead of text",
    "--seed": "seed of every random choice",
    # models
    "--backbone": "timm model name of the backbone being trained",
    "--backbone-kwargs": "extra timm.create_model arguments of that backbone",
    "--backbone-weights": "local weights file of the backbone, loading what fits",
    "--pretrain-weights": "`hashkd pretrain` weights of the backbone, every tensor matching",
    "--pretrained": "timm's own pretrained weights",
    "--freeze-backbone": "train only the hash head",
    "--bits": "code length K in bits",
    "--img-size": "input image size in pixels",
    "--head": "hash head kind",
    "--teacher": "teacher model artifact folder",
    "--model": "query model artifact folder",
    "--database-model": "model artifact folder that encodes the database",
    "--query-model": "model artifact folder that encodes the queries",
    # training
    "--epochs": "training epochs",
    "--teacher-epochs": "training epochs of the demo's teacher",
    "--student-epochs": "training epochs of the demo's student",
    "--batch-size": "images per batch (and process)",
    "--lr": "learning rate",
    "--lr-schedule": "learning rate schedule",
    "--warmup-epochs": "epochs of linear learning rate warm-up",
    "--weight-decay": "optimizer weight decay",
    "--tau": "contrastive temperature",
    "--beta": "weight of CIBHash's KL term",
    "--momentum": "MoCo v3 EMA momentum",
    "--method": "self-supervised pretraining method",
    "--proj-dim": "projection output size",
    "--proj-hidden": "projection hidden size",
    "--loss": "KD losses of the student",
    "--loss-weights": "one weight per KD loss",
    "--loss-opt": "one option of one KD loss",
    "--cib": "keep the student's own CIBHash term",
    "--view-bank": "augmented views per image coded once by the teacher",
    "--feature-cache": "augmented views per image whose frozen-backbone features are cached",
    "--val-every": "validate every N epochs",
    "--knn-eval": "kNN accuracy of the pretrained features",
    "--knn-every": "kNN accuracy every N epochs",
    "--knn-k": "neighbours of the kNN classifier",
    "--checkpoint-every": "also checkpoint every N steps",
    "--keep-every": "also keep the weights of every N-th epoch",
    "--time-limit-minutes": "stop training after this many minutes",
    "--budget-minutes": "time the demo should take at most, in minutes",
    "--resume": "continue a run from its checkpoint",
    "--device": "torch device",
    "--num-workers": "DataLoader worker processes",
    "--progress": "show progress bars",
    # image files
    "--cache": "how decoded images are cached",
    "--cache-dir": "folder of the on-disk image cache",
    "--strict": "stop at the first unreadable image",
    # encoding and export
    "--shard": "the I-th of N shards of the images",
    "--backend": "encoder runtime backend",
    "--threads": "threads of the encoder or model runtime",
    "--format": "model export format",
    "--check-images": "images of the export's agreement check",
    "--opset": "ONNX opset",
    "--onnx-exporter": "torch.onnx exporter",
    "--quantize": "also write a quantized graph",
    "--quantize-method": "quantization method",
    "--calibration-images": "images of static quantization calibration",
    "--precision": "which ONNX graph to run (fp32 / int8)",
    # evaluation and search
    "--query": "query code set folder",
    "--database": "database code set folder",
    "--query-data": "image source whose every image is a query",
    "--database-data": "image source whose every image is in the database",
    "--k": "number of nearest items (returned, or ranked by mAP@K)",
    "--radius": "Hamming radius, inclusive",
    "--offset": "nearest items skipped (paging)",
    "--filter": "metadata filter (JSON)",
    "--pn": "points N of the precision@N curve",
    "--retrieval-protocol": "symmetric or asymmetric retrieval",
    "--no-tie-average": "skip the tie-averaged mAP",
    # indexes
    "--index-spec": "index kind and parameters",
    "--index-threads": "OpenMP threads FAISS uses for an index",
    "--nprobe": "inverted lists visited per query",
    "--ef-search": "HNSW candidate list size per query",
    "--collection": "Milvus collection name",
    "--milvus-timeout-seconds": "seconds a Milvus call may take",
    # the service
    "--store": "store folder of the service",
    "--cluster": "cluster mode (items in Milvus)",
    "--host": "bind address",
    "--port": "TCP port",
    "--api-key-env": "environment variable holding the API key",
    "--batching": "micro-batch concurrent searches",
    "--max-batch": "most images per micro-batch",
    "--max-wait-seconds": "longest micro-batch wait, in seconds",
    "--max-upload-bytes": "largest image upload in bytes",
    "--max-image-pixels": "largest decoded image in pixels",
    "--max-request-images": "most images per batch request",
    "--thumbnail-px": "stored thumbnail size in pixels",
    "--snapshot-every": "index snapshot after this many changes",
    "--codes": "a code set loaded into the store at start-up",
    "--consistency": "cluster mode read consistency (bounded or strong)",
    "--thumbnail-store": "cluster mode: the directory of thumbnails every replica shares",
    "--data-root": "folder a code set's relative paths are under (for thumbnails)",
    "--retries": "retries of a request answered 503 or cut off",
    "--kd-inputs": "what the KD losses compare: codes or pre-sign logits",
    "--sqlite-synchronous": "SQLite durability level",
    "--access-log": "uvicorn access log",
    "--log-level": "log level",
    # the demo
    "--quick": "the reduced demo",
    "--keep-serving": "keep the service running after the demo",
    "--fresh": "re-run every stage of the demo",
}


@dataclass(frozen=True)
class Alias:
    """``old`` is the previous release's name of ``new``; its value times ``scale`` is ``new``'s."""

    old: str
    new: str
    scale: float | None = None


#: command path ("index build") -> the old names it still accepts.
DEPRECATED: dict[str, tuple[Alias, ...]] = {
    "train-teacher": (
        Alias("--weights", "--backbone-weights"),
        Alias("--protocol", "--split-protocol"),
    ),
    "distill": (
        Alias("--weights", "--loss-weights"),
        Alias("--protocol", "--split-protocol"),
        Alias("--student", "--backbone"),
        Alias("--student-kwargs", "--backbone-kwargs"),
        Alias("--student-weights", "--pretrain-weights"),
    ),
    "pretrain": (
        Alias("--max-images", "--max-train"),
        Alias("--protocol", "--split-protocol"),
        Alias("--time-limit", "--time-limit-minutes"),
    ),
    "encode": (
        Alias("--protocol", "--split-protocol"),
        Alias("--workers", "--num-workers"),
    ),
    "evaluate": (
        Alias("--protocol", "--retrieval-protocol"),
        Alias("--topk", "--k"),
        Alias("--json", "--json-out"),
    ),
    "query": (Alias("--json", "--print-json"),),
    "index build": (
        Alias("--spec", "--index-spec"),
        Alias("--threads", "--index-threads"),
    ),
    "index search": (
        Alias("--json", "--json-out"),
        Alias("--threads", "--index-threads"),
    ),
    "serve": (
        Alias("--max-images", "--max-request-images"),
        Alias("--milvus-timeout-s", "--milvus-timeout-seconds"),
        Alias("--max-wait-ms", "--max-wait-seconds", scale=0.001),
        Alias("--search-threads", "--index-threads"),
    ),
}


#: the scripts' own parsers follow the vocabulary too (scripts/*.py); their old names.
SCRIPT_DEPRECATED: dict[str, tuple[Alias, ...]] = {
    "scripts/bench_data.py": (Alias("--workers", "--num-workers"),),
    "scripts/bench_distill.py": (
        Alias("--student", "--backbone"),
        Alias("--protocol", "--split-protocol"),
        Alias("--student-weights", "--pretrain-weights"),
        Alias("--topk", "--k"),
    ),
    "scripts/bench_encode.py": (Alias("--json", "--json-out"),),
    "scripts/bench_encode_shards.py": (
        Alias("--workers", "--num-workers"),
        Alias("--json", "--json-out"),
    ),
    "scripts/bench_metrics.py": (Alias("--topk", "--k"),),
    "scripts/bench_search.py": (
        Alias("--threads", "--index-threads"),
        Alias("--json", "--json-out"),
    ),
    "scripts/bench_service.py": (Alias("--max-wait-ms", "--max-wait-seconds", scale=0.001),),
    "scripts/bench_student_cost.py": (Alias("--json", "--json-out"),),
    "scripts/bench_teacher.py": (
        Alias("--protocol", "--split-protocol"),
        Alias("--topk", "--k"),
        Alias("--json", "--json-out"),
    ),
    "scripts/eval_int8.py": (Alias("--topk", "--k"), Alias("--json", "--json-out")),
    "scripts/sweep_distill.py": (
        Alias("--student", "--backbone"),
        Alias("--protocol", "--split-protocol"),
    ),
}


def warn_deprecated(old: str, new: str) -> None:
    """The one warning of a deprecated name (stderr)."""
    print(
        f"hashkd: warning: {old} is deprecated and goes in the next release: use {new}",
        file=sys.stderr,
    )


class DeprecatedAlias(argparse.Action):
    """A hidden flag that warns and stores into the ``dest`` of the flag that replaced it."""

    def __init__(self, option_strings: Sequence[str], dest: str, target=None, alias=None, **kw):
        self.target: argparse.Action = target
        self.alias: Alias = alias
        switch = isinstance(target, argparse.BooleanOptionalAction) or target.nargs == 0
        super().__init__(
            option_strings,
            dest,
            nargs=0 if switch else target.nargs,
            type=None if switch else target.type,
            choices=None if switch else target.choices,
            metavar=target.metavar,
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )

    def __call__(self, parser, namespace, values: Any, option_string=None) -> None:
        warn_deprecated(option_string or self.alias.old, self.alias.new)
        if self.nargs == 0:
            values = True if self.target.const is None else self.target.const
        elif self.alias.scale is not None:
            values = values * self.alias.scale
        if isinstance(self.target, argparse._AppendAction):
            values = [*(getattr(namespace, self.target.dest, None) or []), values]
        setattr(namespace, self.target.dest, values)


def add_deprecated_aliases(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the hidden old names of ``command`` (a key of :data:`DEPRECATED` or
    :data:`SCRIPT_DEPRECATED`) to its ``parser``."""
    for alias in DEPRECATED.get(command) or SCRIPT_DEPRECATED.get(command, ()):
        target = parser._option_string_actions.get(alias.new)
        if target is None or alias.old in parser._option_string_actions:
            continue  # the command does not have the new flag (yet), or keeps the old name
        old = parser.add_argument(alias.old, action=DeprecatedAlias, target=target, alias=alias)
        if target.required:  # either name satisfies it (argparse names only the visible one)
            target.required = False
            group = parser.add_mutually_exclusive_group(required=True)
            group._group_actions.extend([target, old])


def sub_commands(parser: argparse.ArgumentParser, path: str = "") -> dict[str, Any]:
    """Every leaf command of ``parser``: ``{"index build": its parser, ...}``."""
    out: dict[str, Any] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(sub_commands(sub, f"{path} {name}".strip()))
    if not out and path:
        out[path] = parser
    return out
