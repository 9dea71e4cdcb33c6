"""``hashkd export MODEL_DIR --format onnx|torchscript|all [--out DIR] [--quantize int8 --data SPEC]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from hashkd.pipeline import ExportConfig, export_formats, export_out
from hashkd.settings import add_arguments, add_config_argument, resolve, write_config

#: The export run's resolved settings, beside the exported files.
EXPORT_CONFIG_NAME = "export.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model artifact to ONNX or TorchScript (checked against PyTorch)",
        description="Export a model artifact to ONNX and/or TorchScript. The output directory is a "
        "complete artifact (config.json + model.safetensors + the graph); the export is run on a "
        "fixed batch of random images and refused if more than 0.1% of code bits differ from PyTorch. "
        "The resolved settings are written to OUT/export.yaml (--config re-runs them).",
    )
    add_config_argument(p)
    add_arguments(p, ExportConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = resolve(ExportConfig, args)
    try:
        import hashkd.export  # noqa: F401 - fails here, with one sentence, without torch
    except ModuleNotFoundError as exc:  # a serving-only install ('hashkd[serve]') has no torch
        raise ValueError(
            f"hashkd export needs PyTorch and ONNX ({exc.name} is not installed): "
            "pip install 'hashkd[train,onnx]'"
        ) from None

    if not Path(cfg.model_dir).is_dir():
        raise ValueError(
            f"model directory {cfg.model_dir!r} does not exist: expected a model artifact folder"
        )
    if cfg.quantize is not None and "onnx" not in cfg.formats:
        raise ValueError(
            f"--quantize {cfg.quantize!r} applies to the onnx format: add --format onnx"
        )
    if cfg.data is not None and cfg.quantize is None:
        raise ValueError(
            f"--data {cfg.data!r} is used only by --quantize: add --quantize int8 or drop --data"
        )
    out = export_out(cfg)
    for fmt, entry in export_formats(cfg):
        check = entry["check"]
        print(
            f"exported {fmt}: {Path(out) / entry['file']} "
            f"(bit agreement {100 * check['bit_agreement']:.3f}% on {check['images']} random images, "
            f"{check['bits_differing']} of {check['bits_compared']} bits differ, "
            f"max |logit diff| {check['max_abs_logit_diff']:.2e}"
            + (", head folded" if entry["head_folded"] else "")
            + ")"
        )
        if "int8" in entry:
            print(describe_int8(entry["int8"], Path(out)))
    # export.yaml, not config.yaml: OUT may be the model's own folder, whose config.yaml is
    # the training run's settings
    write_config(Path(out) / EXPORT_CONFIG_NAME, cfg, "export")
    return 0


def describe_int8(int8: dict, out: Path) -> str:
    """One line on the int8 graph: method, calibration and the held-out check."""
    check = int8["check"]
    where = (
        f"{check['images']} held-out images of {check['data']!r}"
        if check.get("source") == "held-out"
        else f"{check['images']} random images"
    )
    how = int8["method"]
    if "calibration" in int8:
        cal = int8["calibration"]
        how += f", calibrated on {cal['images']} images of {cal['data']!r}"
    rejected = f"; rejected: {'; '.join(int8['rejected'])}" if int8.get("rejected") else ""
    return (
        f"quantized int8 ({how}): {out / int8['file']} "
        f"(bit agreement {100 * check['bit_agreement']:.3f}% with the PyTorch model on {where}, "
        f"{check['bits_differing']} of {check['bits_compared']} bits differ{rejected})"
    )
