"""``hashkd export MODEL_DIR --format onnx|torchscript|all [--out DIR] [--quantize int8 --data SPEC]``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model artifact to ONNX or TorchScript (checked against PyTorch)",
        description="Export a model artifact to ONNX and/or TorchScript. The output directory is a "
        "complete artifact (config.json + model.safetensors + the graph); the export is run on a "
        "fixed batch of random images and refused if more than 0.1%% of code bits differ from PyTorch.",
    )
    p.add_argument(
        "model_dir",
        metavar="MODEL_DIR",
        help="model artifact directory (config.json + model.safetensors)",
    )
    p.add_argument(
        "--format",
        dest="formats",
        action="append",
        metavar="FORMAT",
        help="onnx, torchscript or all (repeatable; default onnx)",
    )
    p.add_argument(
        "--out", default=None, help="output directory (default: MODEL_DIR, exporting in place)"
    )
    p.add_argument(
        "--check-images",
        type=int,
        default=64,
        help="random images in the agreement check (default 64)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the check images (default 0)")
    p.add_argument(
        "--opset", type=int, default=None, help="ONNX opset (default 18 dynamo, 17 legacy)"
    )
    p.add_argument(
        "--onnx-exporter",
        default="auto",
        metavar="{auto,dynamo,legacy}",
        help="torch.onnx exporter: dynamo (torch.export), legacy (TorchScript-based) or auto "
        "(dynamo, falling back to legacy; default)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the check run")
    p.add_argument(
        "--quantize",
        default=None,
        metavar="int8",
        help="also write an int8 ONNX graph (model.int8.onnx, ONNX Runtime quantization), "
        "refused below 99%% bit agreement with the PyTorch model on held-out images",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="SPEC",
        help="images for --quantize: static calibration on --calibration-images of them and the "
        "check on --check-images others ('digits', 'cifar10[:PATH]', a folder or a list file); "
        "without it, dynamic quantization checked on random images",
    )
    p.add_argument(
        "--quantize-method",
        default="auto",
        metavar="{auto,static,dynamic}",
        help="auto (default): static with --data, falling back to dynamic when static fails its "
        "check; static or dynamic force one",
    )
    p.add_argument(
        "--calibration-images",
        type=int,
        default=128,
        help="calibration images for static quantization (default 128)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from hashkd.export import EXPORT_FORMATS, export_model
    except ModuleNotFoundError as exc:  # a serving-only install ('hashkd[serve]') has no torch
        raise ValueError(
            f"hashkd export needs PyTorch and ONNX ({exc.name} is not installed): "
            "pip install 'hashkd[train,onnx]'"
        ) from None

    formats: list[str] = []
    for item in args.formats or ["onnx"]:
        for name in str(item).split(","):
            name = name.strip().lower()
            if name == "all":
                formats.extend(EXPORT_FORMATS)
            elif name in EXPORT_FORMATS:
                formats.append(name)
            else:
                raise ValueError(
                    f"--format {name!r} is not supported: expected onnx, torchscript or all"
                )
    if not Path(args.model_dir).is_dir():
        raise ValueError(
            f"model directory {args.model_dir!r} does not exist: expected a model artifact folder"
        )
    if args.quantize is not None and "onnx" not in formats:
        raise ValueError(
            f"--quantize {args.quantize!r} applies to the onnx format: add --format onnx"
        )
    if args.data is not None and args.quantize is None:
        raise ValueError(
            f"--data {args.data!r} is used only by --quantize: add --quantize int8 or drop --data"
        )
    out = args.out if args.out is not None else args.model_dir
    for fmt in dict.fromkeys(formats):
        entry = export_model(
            args.model_dir,
            fmt,
            out,
            check_images=args.check_images,
            seed=args.seed,
            exporter=args.onnx_exporter,
            opset=args.opset,
            threads=args.threads,
            quantize=args.quantize if fmt == "onnx" else None,
            data=args.data,
            quantize_method=args.quantize_method,
            calibration_images=args.calibration_images,
        )
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
