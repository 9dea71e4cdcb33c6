#!/usr/bin/env python
"""Encoding throughput and peak memory: teacher vs student, eager PyTorch vs TorchScript vs ONNX Runtime.

Pairings (random weights; speed does not depend on training):

* ``32`` px (the CPU protocol): teacher ViT-Tiny (``vit_tiny_patch16_224``, img 32, patch 4,
  depth 6) vs student ``mobilenetv3_small_100`` at 32 px;
* ``224`` px (the reference pairing): teacher ViT-B/16 (``vit_base_patch16_224``) vs student
  ``efficientnet_b0``.

Method. Each model is built, saved as an artifact and exported (ONNX + TorchScript) with
``hashkd.export``, which also checks code agreement. Every cell (size, role, backend, batch)
then runs in its own fresh process forked from a server that has only *imported* torch,
onnxruntime and timm, so cells do not share caches or allocator state. A cell opens
``hashkd.runtime.Encoder`` with the backend and ``--threads``, runs one warm-up batch of
pre-normalised random float32 images, then times ``Encoder.encode_arrays`` (model + sign +
packbits; no image decoding) for at least ``--seconds`` and ``--min-iters`` batches.
When one image already takes so long that a full batch would exceed ``--seconds``, the
warm-up is two single images only and one full batch is timed (the ViT-B/16 cells on a slow
machine). Peak memory is the process's peak resident set size during the cell (Linux ``VmHWM`` after
resetting it through ``/proc/self/clear_refs``; ``ru_maxrss`` where that is not possible),
reported in full and as the increase over the RSS at the start of the cell (the imported
libraries). Image decoding + preprocessing throughput (PIL + numpy) is measured separately.

Int8 rows (issue 17): ``--precision fp32,int8`` also quantizes each model's ONNX graph
(``hashkd export --quantize int8``; static when ``--calibration-data SPEC`` is given, else
dynamic; the agreement is reported, not enforced, as the weights are random) and times it as the
backend ``onnxruntime int8``. The float ONNX rows always run the fp32 graph. The report then
adds int8 / fp32 throughput and the student / teacher ratio against the teacher's fastest
backend. The mAP change of int8 codes on real data is measured by ``scripts/eval_int8.py``.

Example (the recorded run, docs/bench-encode.md)::

    python scripts/bench_encode.py --threads 2 --seconds 2 --json-out bench-encode.json
    python scripts/bench_encode.py --sizes 224 --precision fp32,int8 --calibration-data cifar10 \
        --threads 2 --json-out bench-encode-int8.json
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import platform
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PAIRINGS = {
    32: {
        "teacher": {
            "backbone": "vit_tiny_patch16_224",
            "backbone_kwargs": {"patch_size": 4, "depth": 6},
            "label": "ViT-Tiny/4 depth 6",
        },
        "student": {
            "backbone": "mobilenetv3_small_100",
            "backbone_kwargs": {},
            "label": "MobileNetV3-S 1.0",
        },
    },
    224: {
        "teacher": {"backbone": "vit_base_patch16_224", "backbone_kwargs": {}, "label": "ViT-B/16"},
        "student": {
            "backbone": "efficientnet_b0",
            "backbone_kwargs": {},
            "label": "EfficientNet-B0",
        },
    },
}
BITS = 64
BACKEND_LABEL = {
    "torch": "eager",
    "torchscript": "torchscript",
    "onnx": "onnxruntime",
    "onnx-int8": "onnxruntime int8",
}
#: Timed "backends" -> (Encoder backend, precision).
CELL_BACKENDS = {
    "torch": ("torch", "fp32"),
    "torchscript": ("torchscript", "fp32"),
    "onnx": ("onnx", "fp32"),
    "onnx-int8": ("onnx", "int8"),
}


# ---------------------------------------------------------------------- memory helpers
def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------- child jobs
def _reuse(path: Path, int8: bool) -> dict | None:
    """Artifacts of an earlier run in --workdir whose exports (and int8 graph) are current."""
    import numpy as np
    from safetensors import safe_open

    from hashkd.runtime.backends import export_is_current, export_path, int8_path

    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    exports = {}
    for fmt in ("torchscript", "onnx"):
        if export_path(path, raw, fmt) is None or not export_is_current(path, raw, fmt):
            return None
        check = raw["exports"][fmt]["check"]
        exports[fmt] = {
            "seconds": "reused",
            "bit_agreement": check["bit_agreement"],
            "max_abs_logit_diff": check["max_abs_logit_diff"],
        }
    if int8:
        if int8_path(path, raw) is None:
            return None
        exports["onnx-int8"] = _int8_summary(raw["exports"]["onnx"]["int8"], "reused")
    params = 0
    with safe_open(str(path / "model.safetensors"), framework="numpy") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not iterable
            shape = f.get_slice(key).get_shape()
            params += int(np.prod(shape)) if shape else 1
    return {"dir": str(path), "params": params, "exports": exports, "reused": True}


def _int8_summary(int8: dict, seconds) -> dict:
    return {
        "seconds": seconds,
        "method": int8["method"],
        "bit_agreement": int8["check"]["bit_agreement"],
        "max_abs_logit_diff": int8["check"]["max_abs_logit_diff"],
    }


def prepare(
    size: int,
    role: str,
    root: str,
    exporter: str,
    threads: int,
    int8: bool = False,
    calibration_data: str | None = None,
) -> dict:
    """Build a random-init model, save it and export it to ONNX (+ int8) and TorchScript."""
    import torch

    from hashkd.export import export_model
    from hashkd.models import ModelConfig, build_model, save_artifact

    path = Path(root) / f"{role}-{size}"
    reused = _reuse(path, int8)
    if reused is not None:
        return reused
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    spec = PAIRINGS[size][role]
    cfg = ModelConfig(
        backbone=spec["backbone"],
        bits=BITS,
        img_size=size,
        backbone_kwargs=dict(spec["backbone_kwargs"]),
        role=role,
    )
    model = build_model(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    save_artifact(model, path)
    out = {"dir": str(path), "params": params, "exports": {}}
    for fmt in ("torchscript", "onnx"):
        t0 = time.perf_counter()
        quantize = "int8" if int8 and fmt == "onnx" else None
        entry = export_model(
            path,
            fmt,
            check_images=8,
            exporter=exporter,
            threads=threads,
            quantize=quantize,
            data=calibration_data if quantize else None,
            calibration_images=64,
            min_int8_agreement=0.0,  # random weights: report the agreement, time the graph
        )
        seconds = round(time.perf_counter() - t0, 1)
        out["exports"][fmt] = {
            "seconds": seconds,
            "bit_agreement": entry["check"]["bit_agreement"],
            "max_abs_logit_diff": entry["check"]["max_abs_logit_diff"],
        }
        if quantize:
            out["exports"]["onnx-int8"] = _int8_summary(entry["int8"], seconds)
    return out


def run_cell(
    model_dir: str,
    backend: str,
    batch: int,
    seconds: float,
    min_iters: int,
    threads: int,
    backend_batch: str = "auto",
) -> dict:
    """Time Encoder.encode_arrays on one batch size in this (fresh) process.

    ``backend_batch='auto'`` keeps the Encoder's own chunking (what callers get);
    ``'request'`` hands the whole batch to the backend in one call.
    """
    import numpy as np

    from hashkd.runtime import Encoder

    hwm_reset = _reset_peak()
    rss_start = _status_kb("VmRSS")
    t_load = time.perf_counter()
    chunk = batch if backend_batch == "request" else None
    name, precision = CELL_BACKENDS[backend]
    enc = Encoder.from_artifact(
        model_dir, backend=name, threads=threads, batch_size=chunk, precision=precision
    )
    load_s = time.perf_counter() - t_load
    x = (
        np.random.default_rng(0)
        .standard_normal((batch, 3, enc.img_size, enc.img_size))
        .astype(np.float32)
    )
    # Warm-up (allocations, ORT arena, TorchScript profiling runs): two runs of one image,
    # then one full batch unless the batch-1 time says a full batch would take > --seconds.
    t0 = time.perf_counter()
    enc.encode_arrays(x[:1])
    enc.encode_arrays(x[:1])
    probe_s = (time.perf_counter() - t0) / 2
    full_warmup = probe_s * batch <= seconds
    if full_warmup:
        enc.encode_arrays(x)
    warm_s = time.perf_counter() - t0
    times = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        enc.encode_arrays(x)
        times.append(time.perf_counter() - t)
    total = sum(times)
    peak_kb = _status_kb("VmHWM") if hwm_reset else None
    method = "VmHWM"
    if peak_kb is None:
        peak_kb, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
    return {
        "images_per_s": batch * len(times) / total,
        "batch_ms_median": 1000 * float(np.median(times)),
        "iters": len(times),
        "backend_batch": min(enc.batch_size, batch),
        "load_s": load_s,
        "warmup_s": warm_s,
        "full_batch_warmup": full_warmup,
        "peak_rss_mb": peak_kb / 1024,
        "delta_rss_mb": (peak_kb - (rss_start or 0)) / 1024,
        "memory_method": method,
    }


def bench_preprocess(size: int, seconds: float) -> dict:
    """Decode + resize + normalise throughput (one thread, PIL + numpy) for JPEG bytes."""
    import numpy as np
    from PIL import Image

    from hashkd.runtime import load_image
    from hashkd.runtime.preprocess import images_to_array

    rng = np.random.default_rng(0)
    w, h = (500, 375) if size >= 224 else (48, 48)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
        buf, format="JPEG", quality=90
    )
    blobs = [buf.getvalue()] * 16
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        images_to_array([load_image(b) for b in blobs], size, mean, std)
        n += len(blobs)
    return {"source": f"{w}x{h} JPEG", "images_per_s": n / (time.perf_counter() - start)}


# ---------------------------------------------------------------------- orchestration
def _csv(kind, text: str) -> list:
    return [kind(t) for t in str(text).split(",") if t.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="32,224", help="image sizes: 32 and/or 224 (default both)")
    p.add_argument("--batches", default="1,8,64", help="batch sizes (default 1,8,64)")
    p.add_argument("--backends", default="torch,torchscript,onnx", help="torch, torchscript, onnx")
    p.add_argument("--roles", default="teacher,student", help="teacher and/or student")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per cell (default 2)")
    p.add_argument(
        "--min-iters", type=int, default=1, help="at least this many timed batches per cell"
    )
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    p.add_argument(
        "--backend-batch",
        default="auto",
        choices=["auto", "request"],
        help="images per backend call: 'auto' = the Encoder's default chunking (what callers get; "
        "4 images at 224 px), 'request' = the whole batch in one call",
    )
    p.add_argument(
        "--max-cell-seconds",
        type=float,
        default=300.0,
        help="stop a cell (reported as an error) after this long, load and warm-up included (default 300)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        help="fp32 and/or int8 (comma-separated; int8 adds 'onnxruntime int8' rows; default fp32)",
    )
    p.add_argument(
        "--calibration-data",
        default=None,
        metavar="SPEC",
        help="data spec for static int8 calibration (e.g. cifar10); default: dynamic quantization",
    )
    p.add_argument("--onnx-exporter", default="auto", choices=["auto", "dynamo", "legacy"])
    p.add_argument(
        "--workdir", default=None, help="where artifacts are written (default: a temp dir)"
    )
    p.add_argument(
        "--json-out", dest="json", default=None, help="also write all figures to this JSON file"
    )
    from hashkd.cli.vocabulary import add_deprecated_aliases

    add_deprecated_aliases(p, "scripts/bench_encode.py")
    args = p.parse_args(argv)
    args.sizes = _csv(int, args.sizes)
    args.batches = _csv(int, args.batches)
    args.backends = _csv(str, args.backends)
    args.roles = _csv(str, args.roles)
    for s in args.sizes:
        if s not in PAIRINGS:
            p.error(f"--sizes {s} is not a known pairing: expected 32 or 224")
    for b in args.backends:
        if b not in ("torch", "torchscript", "onnx"):
            p.error(f"--backends {b!r} is not known: expected torch, torchscript or onnx")
    for r in args.roles:
        if r not in ("teacher", "student"):
            p.error(f"--roles {r!r} is not known: expected teacher or student")
    if any(b < 1 for b in args.batches) or args.threads < 1 or args.seconds <= 0:
        p.error("batches and threads must be positive integers and --seconds positive")
    args.precision = _csv(str, args.precision)
    for prec in args.precision:
        if prec not in ("fp32", "int8"):
            p.error(f"--precision {prec!r} is not known: expected fp32 or int8")
    args.int8 = "int8" in args.precision
    if args.int8 and "onnx" not in args.backends:
        args.backends.append("onnx")  # the int8 rows are compared with the float graph
    if args.int8:
        args.backends.append("onnx-int8")
    if "fp32" not in args.precision:
        p.error("--precision must include fp32 (the reference rows)")
    return args


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def report(args, prep: dict, cells: dict, pre: dict, wall: float) -> str:
    lines = []
    lines.append(
        f"threads={args.threads} backend-batch={args.backend_batch} seconds/cell={args.seconds} "
        f"bits={BITS} exporter={args.onnx_exporter} "
        f"cpu_count={os.cpu_count()} python={platform.python_version()}"
    )
    lines.append("")
    lines.append(
        "| size | role | model | backend | batch | per call | images/s | batch ms (median) | peak RSS MB "
        "| +RSS MB |"
    )
    lines.append("|---:|---|---|---|---:|---:|---:|---:|---:|---:|")

    def order(item):
        (size, role, backend, batch), _ = item
        return (args.sizes.index(size), args.roles.index(role), args.backends.index(backend), batch)

    for (size, role, backend, batch), c in sorted(cells.items(), key=order):
        label = PAIRINGS[size][role]["label"]
        if "error" in c:
            lines.append(
                f"| {size} | {role} | {label} | {BACKEND_LABEL[backend]} | {batch} | | error: {c['error']} | | | |"
            )
            continue
        lines.append(
            f"| {size} | {role} | {label} | {BACKEND_LABEL[backend]} | {batch} | {c['backend_batch']} | "
            f"{c['images_per_s']:.1f} | "
            f"{c['batch_ms_median']:.1f} | {c['peak_rss_mb']:.0f} | {c['delta_rss_mb']:.0f} |"
        )

    def ips(size, role, backend, batch):
        c = cells.get((size, role, backend, batch))
        return c.get("images_per_s") if c else None

    lines.append("")
    lines.append("Student / teacher throughput:")
    lines.append("")
    lines.append("| size | backend | " + " | ".join(f"batch {b}" for b in args.batches) + " |")
    lines.append("|---:|---|" + "---:|" * len(args.batches))
    for size in args.sizes:
        for backend in args.backends:
            row = [
                _ratio(ips(size, "student", backend, b), ips(size, "teacher", backend, b))
                for b in args.batches
            ]
            lines.append(f"| {size} | {BACKEND_LABEL[backend]} | " + " | ".join(row) + " |")
    lines.append("")
    lines.append("Student (each backend) / teacher at its fastest backend for that batch:")
    lines.append("")
    lines.append(
        "| size | student backend | " + " | ".join(f"batch {b}" for b in args.batches) + " |"
    )
    lines.append("|---:|---|" + "---:|" * len(args.batches))
    for size in args.sizes:
        for backend in args.backends:
            row = []
            for b in args.batches:
                teacher = [ips(size, "teacher", t, b) for t in args.backends]
                best = max((v for v in teacher if v), default=None)
                row.append(_ratio(ips(size, "student", backend, b), best))
            lines.append(f"| {size} | {BACKEND_LABEL[backend]} | " + " | ".join(row) + " |")
    if "onnx-int8" in args.backends:
        lines.append("")
        lines.append("onnxruntime int8 / fp32 throughput:")
        lines.append("")
        lines.append("| size | role | " + " | ".join(f"batch {b}" for b in args.batches) + " |")
        lines.append("|---:|---|" + "---:|" * len(args.batches))
        for size in args.sizes:
            for role in args.roles:
                row = [
                    _ratio(ips(size, role, "onnx-int8", b), ips(size, role, "onnx", b))
                    for b in args.batches
                ]
                lines.append(f"| {size} | {role} | " + " | ".join(row) + " |")
    lines.append("")
    lines.append("Exported / eager PyTorch throughput:")
    lines.append("")
    lines.append(
        "| size | role | backend | " + " | ".join(f"batch {b}" for b in args.batches) + " |"
    )
    lines.append("|---:|---|---|" + "---:|" * len(args.batches))
    for size in args.sizes:
        for role in args.roles:
            for backend in args.backends:
                if backend == "torch":
                    continue
                row = [
                    _ratio(ips(size, role, backend, b), ips(size, role, "torch", b))
                    for b in args.batches
                ]
                lines.append(
                    f"| {size} | {role} | {BACKEND_LABEL[backend]} | " + " | ".join(row) + " |"
                )
    if prep:
        lines.append("")
        lines.append("Models and exports (agreement on 8 random images, batch 8 and 1):")
        lines.append("")
        for (size, role), p in sorted(prep.items()):
            if "error" in p:
                lines.append(f"- {size} px {role}: preparation failed: {p['error']}")
                continue
            ex = ", ".join(
                f"{fmt}{' (' + e['method'] + ')' if 'method' in e else ''} export {e['seconds']}"
                f"{'' if e['seconds'] == 'reused' else ' s'}, agreement {100 * e['bit_agreement']:.2f}%"
                for fmt, e in p["exports"].items()
            )
            lines.append(
                f"- {size} px {role} {PAIRINGS[size][role]['label']}: {p['params'] / 1e6:.1f} M params; {ex}"
            )
    if pre:
        lines.append("")
        lines.append("Decode + resize + normalise (PIL + numpy, 1 thread, not included above):")
        lines.append("")
        for size, p in sorted(pre.items()):
            lines.append(f"- {size} px from {p['source']}: {p['images_per_s']:.0f} images/s")
    lines.append("")
    lines.append(f"wall time: {wall:.0f} s")
    return "\n".join(lines)


def _terminate(signum, frame):  # turn SIGTERM into SystemExit so that worker pools are closed
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    t_start = time.perf_counter()
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["numpy", "PIL.Image", "torch", "timm", "onnxruntime", "hashkd.runtime", "hashkd.export"]
    )
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-encode-"))
    root.mkdir(parents=True, exist_ok=True)
    prep: dict = {}
    cells: dict = {}
    pre: dict = {}
    print(f"artifacts in {root}", file=sys.stderr)

    def in_child(fn, *a, timeout=None):
        with ctx.Pool(1, maxtasksperchild=1) as pool:  # leaving the block terminates the worker
            try:
                return pool.apply_async(fn, a).get(timeout)
            except mp.TimeoutError:
                raise TimeoutError(f"stopped after {timeout:.0f} s (--max-cell-seconds)") from None

    for size in args.sizes:
        for role in args.roles:
            t0 = time.perf_counter()
            try:
                prep[(size, role)] = in_child(
                    prepare,
                    size,
                    role,
                    str(root),
                    args.onnx_exporter,
                    args.threads,
                    args.int8,
                    args.calibration_data,
                )
            except Exception as exc:  # noqa: BLE001 - report and continue with the other cells
                prep[(size, role)] = {
                    "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                }
                print(f"prepare {size} {role} failed: {exc}", file=sys.stderr)
                continue
            print(f"prepared {size} px {role} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            for backend in args.backends:
                for batch in args.batches:
                    try:
                        c = in_child(
                            run_cell,
                            prep[(size, role)]["dir"],
                            backend,
                            batch,
                            args.seconds,
                            args.min_iters,
                            args.threads,
                            args.backend_batch,
                            timeout=args.max_cell_seconds,
                        )
                    except Exception as exc:  # noqa: BLE001
                        c = {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
                    cells[(size, role, backend, batch)] = c
                    if "error" not in c:
                        print(
                            f"  {size:>3} {role:<7} {BACKEND_LABEL[backend]:<11} b={batch:<3} "
                            f"{c['images_per_s']:9.1f} img/s  peak {c['peak_rss_mb']:.0f} MB",
                            file=sys.stderr,
                        )
        pre[size] = in_child(bench_preprocess, size, min(args.seconds, 2.0))
    wall = time.perf_counter() - t_start
    text = report(args, prep, cells, pre, wall)
    print(text)
    if args.json:
        data = {
            "args": {k: v for k, v in vars(args).items()},
            "prepare": {f"{s}-{r}": v for (s, r), v in prep.items()},
            "cells": [
                {"size": s, "role": r, "backend": b, "batch": n, **c}
                for (s, r, b, n), c in sorted(cells.items())
            ],
            "preprocess": {str(k): v for k, v in pre.items()},
            "wall_s": wall,
        }
        Path(args.json).write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
