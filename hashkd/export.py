"""Export a model artifact to ONNX or TorchScript, checked against the PyTorch model.

The output directory is a complete, self-describing artifact: ``config.json`` (input size,
normalisation, bits ...), ``model.safetensors`` and the exported graph, listed in
``config.json`` under ``exports``::

    "exports": {"onnx": {"file": "model.onnx", "exporter": "dynamo", "opset": 18,
                         "weights_sha256": "...", "check": {"bit_agreement": 1.0, ...}}}

The graph takes ``images`` (batch x 3 x S x S, float32, normalised; the batch dimension is
dynamic) and returns ``logits`` (batch x K); the code is their sign. A head with no
non-linearity between two linear layers is folded into one Linear first
(:func:`fold_linear_head`).

Check (issue 4): the exported graph is run on a fixed batch of seeded random images and its
codes are compared with the (unfolded) PyTorch model's; the export is refused with
:class:`ExportError` when more than :data:`MAX_BIT_DISAGREEMENT` of the bits differ.

Int8 (issue 17, ``quantize='int8'``, ONNX only): the checked float graph is quantized with ONNX
Runtime (:mod:`hashkd.quantize`) into ``model.int8.onnx``, listed as ``exports.onnx.int8``.
With ``data`` the static method is calibrated on images of that data set and checked on other,
held-out images of it; without, the dynamic method is checked on the seeded random images.
``quantize_method='auto'`` falls back from static to dynamic when static fails or its codes
agree on fewer than :data:`MIN_INT8_BIT_AGREEMENT` of the bits; when the kept method is still
below, the export is refused (:class:`ExportError`, nothing written).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hashkd.io import atomic_move, atomic_write, atomic_write_json
from hashkd.models.artifact import CONFIG_NAME, WEIGHTS_NAME, load_artifact, read_config
from hashkd.models.hash_model import HashModel
from hashkd.runtime.backends import (
    EXPORT_FILES,
    INT8_FILE,
    export_entry,
    file_sha256,
    int8_entry,
    open_backend,
)
from hashkd.runtime.fold import fold_linear_head
from hashkd.runtime.preprocess import normalize_uint8

__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "MAX_BIT_DISAGREEMENT",
    "MIN_INT8_BIT_AGREEMENT",
    "bit_agreement",
    "check_batch",
    "export_model",
    "fold_linear_head",
]

EXPORT_FORMATS = tuple(EXPORT_FILES)
#: 'auto' tries torch.export ('dynamo') and falls back to the TorchScript-based 'legacy' exporter.
ONNX_EXPORTERS = ("auto", "dynamo", "legacy")
#: Largest fraction of code bits an export may flip relative to the PyTorch model.
MAX_BIT_DISAGREEMENT = 0.001
DEFAULT_CHECK_IMAGES = 64
#: Smallest fraction of code bits the int8 graph must share with the PyTorch model.
MIN_INT8_BIT_AGREEMENT = 0.99
QUANTIZATIONS = ("int8",)
DEFAULT_CALIBRATION_IMAGES = 128
# Protobuf files are limited to 2 GB; bigger models keep their weights in model.onnx.data.
_ONNX_INLINE_LIMIT = 1_500_000_000


class ExportError(ValueError):
    """An export failed or does not reproduce the PyTorch model's codes."""


def check_batch(
    img_size: int, mean: Any, std: Any, n: int = DEFAULT_CHECK_IMAGES, seed: int = 0
) -> np.ndarray:
    """A fixed batch of ``n`` seeded random RGB images, normalised as the runtime does."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, img_size, img_size, 3), dtype=np.uint8)
    return normalize_uint8(pixels, mean, std)


def bit_agreement(reference: np.ndarray, other: np.ndarray) -> tuple[float, int]:
    """Fraction of code bits (signs, bit = logit > 0) that agree, and the count that differ."""
    a, b = np.asarray(reference) > 0, np.asarray(other) > 0
    if a.shape != b.shape:
        raise ExportError(f"exported model returns shape {b.shape}, the PyTorch model {a.shape}")
    differing = int(np.count_nonzero(a != b))
    return (1.0 - differing / a.size if a.size else 1.0), differing


def _export_torchscript(model: HashModel, example: torch.Tensor, path: Path) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of timm's shape asserts, jit deprecation
        traced = torch.jit.trace(model, example, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
        torch.jit.save(frozen, str(path))
    return {"tracer": "torch.jit.trace+freeze"}


def _export_onnx(
    model: HashModel, example: torch.Tensor, path: Path, exporter: str, opset: int | None
) -> dict[str, Any]:
    if exporter == "auto":
        try:
            return _export_onnx(model, example, path, "dynamo", opset)
        except Exception as exc:  # noqa: BLE001 - torch.export fails in many ways; fall back
            for leftover in path.parent.iterdir():
                leftover.unlink()
            info = _export_onnx(model, example, path, "legacy", opset)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return {**info, "dynamo_error": first[:300]}
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > _ONNX_INLINE_LIMIT
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            opset = opset or 18
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 16)},),
                opset_version=opset,
                external_data=big,
                verbose=False,
                report=False,
            )
        else:
            opset = opset or 17
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
            )
    return {"exporter": exporter, "opset": int(opset)}


def _run_check(
    fmt: str, path: Path, reference_model: HashModel, batch: np.ndarray, threads: int | None
) -> dict:
    """Run the exported file on ``batch`` (all at once, and its first image alone)."""
    with torch.inference_mode():
        ref = reference_model(torch.from_numpy(batch)).float().numpy()
    backend = open_backend(fmt, path, threads)
    try:
        got = backend.run(batch)
        single = backend.run(batch[:1])
    except Exception as exc:  # noqa: BLE001 - any runtime failure means the export is unusable
        raise ExportError(
            f"the exported {fmt} model could not be run on a batch of {len(batch)}: {exc}"
        ) from None
    agreement, differing = bit_agreement(ref, got)
    agreement_1, differing_1 = bit_agreement(ref[:1], single)
    return {
        "images": int(batch.shape[0]),
        "bits_compared": int(ref.size + ref[:1].size),
        "bits_differing": differing + differing_1,
        "bit_agreement": (agreement * ref.size + agreement_1 * ref[:1].size)
        / (ref.size + ref[:1].size),
        "max_abs_logit_diff": float(max(np.abs(ref - got).max(), np.abs(ref[:1] - single).max())),
        "batch_sizes": [int(batch.shape[0]), 1],
    }


def _atomic_copy(src: Path, dst: Path) -> None:
    atomic_write(dst, lambda tmp: shutil.copy2(src, tmp))


def _export_files(raw: dict, fmt: str) -> list[str]:
    entry = export_entry(raw, fmt) or {}
    if not entry:
        return []
    quantized = int8_entry(raw) if fmt == "onnx" else None
    return [
        entry["file"],
        *entry.get("extra_files", []),
        *([quantized["file"]] if quantized else []),
    ]


def _quantize_checked(
    fp32_path: Path,
    model: HashModel,
    random_batch: np.ndarray,
    workdir: Path,
    *,
    src: Path,
    data: str | None,
    method: str,
    calibration_images: int,
    check_images: int,
    seed: int,
    threads: int | None,
    min_agreement: float,
) -> tuple[dict[str, Any], Path]:
    """Quantize ``fp32_path`` to int8 and check it on held-out images: (entry, int8 file)."""
    try:
        from hashkd import quantize as q
    except ImportError as exc:
        raise ExportError(
            f"--quantize int8 needs onnxruntime's quantization tools ({exc}): "
            "pip install 'hashkd[onnx]'"
        ) from None
    config = model.config
    if data is None:
        if method == "static":
            raise ExportError(
                "quantize method 'static' needs calibration images: pass --data SPEC "
                "(or use --quantize-method dynamic)"
            )
        calibration, held_out = None, random_batch
        check_source: dict[str, Any] = {"source": "random", "seed": int(seed)}
    else:
        calibration, held_out = q.draw_images(
            data, config.img_size, config.mean, config.std, calibration_images, check_images, seed
        )
        check_source = {"source": "held-out", "data": str(data), "seed": int(seed)}
    if method == "auto":
        methods = ["static", "dynamic"] if data is not None else ["dynamic"]
    else:
        methods = [method]
    rejected: list[str] = []
    for name in methods:
        dst = workdir / f"{name}.onnx"
        try:
            if name == "static":
                info = q.quantize_onnx_static(fp32_path, dst, calibration, workdir)
                info["calibration"] = {"data": str(data), "images": len(calibration), "seed": seed}
            else:
                info = q.quantize_onnx_dynamic(fp32_path, dst, workdir)
            check = _run_check("onnx", dst, model, held_out, threads)
        except Exception as exc:  # noqa: BLE001 - quantizer and runtime fail in many ways
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            rejected.append(f"{name} failed: {msg[:200]}")
            continue
        if check["bit_agreement"] >= min_agreement:
            entry = {"file": INT8_FILE, **info, "check": {**check, **check_source}}
            if rejected:
                entry["rejected"] = rejected
            return entry, dst
        rejected.append(
            f"{name}: bit agreement {100 * check['bit_agreement']:.2f}% "
            f"({check['bits_differing']} of {check['bits_compared']} bits differ)"
        )
    raise ExportError(
        f"the int8 quantization of {str(src)!r} does not reproduce the PyTorch model's codes "
        f"({'; '.join(rejected)}): expected at least {100 * min_agreement:.0f}% bit "
        "agreement; nothing was written (export without --quantize to keep the float graph"
        + (", or pass --data SPEC for static calibration)" if data is None else ")")
    )


def _kept_exports(src_raw: dict, out: Path, weights_sha: str) -> dict[str, Any]:
    """Exports listed by the source or already in ``out`` that were made from these weights."""
    candidates = [src_raw]
    if (out / CONFIG_NAME).is_file():
        with contextlib.suppress(json.JSONDecodeError, OSError):  # unreadable: keep nothing from it
            candidates.append(json.loads((out / CONFIG_NAME).read_text()))
    kept: dict[str, Any] = {}
    for raw in candidates:
        for fmt in EXPORT_FORMATS:
            try:
                entry = export_entry(raw, fmt)
            except ValueError:
                continue
            if (
                entry
                and entry.get("weights_sha256") == weights_sha
                and all((out / name).is_file() for name in _export_files(raw, fmt))
            ):
                kept[fmt] = entry
    return kept


def export_model(
    model_dir: str | os.PathLike[str],
    fmt: str,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    check_images: int = DEFAULT_CHECK_IMAGES,
    seed: int = 0,
    opset: int | None = None,
    exporter: str = "auto",
    threads: int | None = None,
    quantize: str | None = None,
    data: str | None = None,
    quantize_method: str = "auto",
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    min_int8_agreement: float = MIN_INT8_BIT_AGREEMENT,
) -> dict[str, Any]:
    """Export the artifact ``model_dir`` as ``fmt`` ('onnx' or 'torchscript') into ``out_dir``.

    ``out_dir`` defaults to ``model_dir`` (export in place). Returns the ``exports[fmt]`` entry
    written to ``out_dir/config.json``, including the check's bit agreement. Raises
    :class:`ExportError` when the export fails or more than 0.1% of code bits differ.

    ``quantize='int8'`` (ONNX only) also writes ``model.int8.onnx`` (entry ``["int8"]``):
    ``quantize_method`` 'static' (calibrated on ``calibration_images`` images of ``data``),
    'dynamic', or 'auto' (static when ``data`` is given, else or as a fallback dynamic). The
    int8 graph is checked on ``check_images`` held-out images of ``data`` (random images
    without ``data``) and refused below ``min_int8_agreement`` (default
    :data:`MIN_INT8_BIT_AGREEMENT`; ``scripts/bench_encode.py`` passes 0 for the random-weight
    models it only times).
    """
    if fmt not in EXPORT_FORMATS:
        raise ExportError(
            f"format {fmt!r} is not supported: expected one of {', '.join(EXPORT_FORMATS)}"
        )
    if exporter not in ONNX_EXPORTERS:
        raise ExportError(
            f"exporter {exporter!r} is not known: expected one of {', '.join(ONNX_EXPORTERS)}"
        )
    if int(check_images) < 2:
        raise ExportError(f"check_images={check_images!r} is too small: expected at least 2 images")
    if opset is not None and int(opset) < 17:
        raise ExportError(f"opset={opset!r} is too old: expected 17 or newer")
    if quantize is not None:
        if quantize not in QUANTIZATIONS:
            raise ExportError(
                f"quantize={quantize!r} is not supported: expected one of {', '.join(QUANTIZATIONS)}"
            )
        if fmt != "onnx":
            raise ExportError(f"quantize={quantize!r} applies to the onnx format only, not {fmt!r}")
        from hashkd.quantize import QUANTIZE_METHODS

        if quantize_method not in QUANTIZE_METHODS:
            raise ExportError(
                f"quantize method {quantize_method!r} is not known: expected one of "
                f"{', '.join(QUANTIZE_METHODS)}"
            )
        if int(calibration_images) < 1:
            raise ExportError(
                f"calibration_images={calibration_images!r} is too small: expected at least 1"
            )
    src = Path(model_dir)
    config, raw = read_config(src)
    model = load_artifact(src)
    out = Path(out_dir) if out_dir is not None else src
    out.mkdir(parents=True, exist_ok=True)
    in_place = out.resolve() == src.resolve()

    folded = copy.deepcopy(model)
    folded.head = fold_linear_head(folded.head)
    folded.eval()
    head_folded = sum(isinstance(m, torch.nn.Linear) for m in folded.head.modules()) < sum(
        isinstance(m, torch.nn.Linear) for m in model.head.modules()
    )
    batch = check_batch(config.img_size, config.mean, config.std, int(check_images), seed)
    example = torch.from_numpy(batch[:2].copy())

    staging = Path(tempfile.mkdtemp(dir=out, prefix=".export-"))
    quant_dir = Path(tempfile.mkdtemp(dir=out, prefix=".quantize-")) if quantize else None
    int8: dict[str, Any] | None = None
    try:
        staged = staging / EXPORT_FILES[fmt]
        try:
            if fmt == "onnx":
                info = _export_onnx(folded, example, staged, exporter, opset)
            else:
                info = _export_torchscript(folded, example, staged)
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - exporter failures come in many types
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = " (try --onnx-exporter legacy)" if fmt == "onnx" and exporter == "dynamo" else ""
            raise ExportError(f"exporting {str(src)!r} to {fmt} failed: {msg}{hint}") from None
        check = _run_check(fmt, staged, model, batch, threads)
        check["seed"] = int(seed)
        if 1.0 - check["bit_agreement"] > MAX_BIT_DISAGREEMENT:
            raise ExportError(
                f"the {fmt} export of {str(src)!r} disagrees with the PyTorch model on "
                f"{check['bits_differing']} of {check['bits_compared']} code bits "
                f"({100 * (1 - check['bit_agreement']):.2f}%): expected at most "
                f"{100 * MAX_BIT_DISAGREEMENT:.1f}%; the export was not written"
            )
        if quant_dir is not None:
            int8, int8_file = _quantize_checked(
                staged,
                model,
                batch,
                quant_dir,
                src=src,
                data=data,
                method=quantize_method,
                calibration_images=int(calibration_images),
                check_images=int(check_images),
                seed=seed,
                threads=threads,
                min_agreement=float(min_int8_agreement),
            )
        # Publish: weights and listed exports first, then the config that lists them.
        if not in_place:
            _atomic_copy(src / WEIGHTS_NAME, out / WEIGHTS_NAME)
            for other in EXPORT_FORMATS:
                if other == fmt:
                    continue
                for name in _export_files(raw, other):
                    if (src / name).is_file():
                        _atomic_copy(src / name, out / name)
        extra_files = []
        for f in staging.iterdir():
            atomic_move(f, out / f.name)
            if f.name != EXPORT_FILES[fmt]:
                extra_files.append(f.name)
        if int8 is not None:
            os.replace(int8_file, out / INT8_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if quant_dir is not None:
            shutil.rmtree(quant_dir, ignore_errors=True)

    entry: dict[str, Any] = {
        "file": EXPORT_FILES[fmt],
        **info,
        "input": {
            "name": "images",
            "shape": ["batch", 3, config.img_size, config.img_size],
            "dtype": "float32",
        },
        "output": {"name": "logits", "shape": ["batch", config.bits], "dtype": "float32"},
        "head_folded": bool(head_folded),
        "torch_version": torch.__version__,
        "weights_sha256": file_sha256(out / WEIGHTS_NAME),
        "check": check,
    }
    if extra_files:
        entry["extra_files"] = sorted(extra_files)
    if int8 is not None:
        entry["int8"] = int8
    new_raw = dict(raw)
    exports = _kept_exports(raw, out, entry["weights_sha256"])
    exports[fmt] = entry
    new_raw["exports"] = exports
    atomic_write_json(out / CONFIG_NAME, new_raw)
    return entry
