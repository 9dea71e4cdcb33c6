"""hashkd.export: ONNX/TorchScript round trips, head folding, the agreement check and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import hashkd.export as export_mod
from hashkd.cli import main
from hashkd.codes import unpack_codes
from hashkd.export import ExportError, bit_agreement, export_model, fold_linear_head
from hashkd.models import ModelConfig, build_model, load_artifact, save_artifact
from hashkd.models.artifact import read_config
from hashkd.runtime import Encoder
from tests.conftest import TINY_CNN, TINY_VIT

MODELS = {"vit": TINY_VIT, "cnn": TINY_CNN}


def _save(tmp_path, kind: str, name: str = "model", **cfg) -> tuple:
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(bits=cfg.pop("bits", 32), img_size=32, **MODELS[kind], **cfg)
    ).eval()
    path = tmp_path / name
    save_artifact(model, path)
    return path, model


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    ua, ub = unpack_codes(a), unpack_codes(b)
    return float((ua == ub).mean())


def _n_linear(module: nn.Module) -> int:
    return sum(isinstance(m, nn.Linear) for m in module.modules())


# ---------------------------------------------------------------- folding
def test_fold_two_linear_layers_into_one():
    torch.manual_seed(1)
    head = nn.Sequential(nn.Linear(12, 7), nn.Dropout(0.3), nn.Identity(), nn.Linear(7, 16)).eval()
    folded = fold_linear_head(head)
    assert isinstance(folded, nn.Linear) and (folded.in_features, folded.out_features) == (12, 16)
    x = torch.randn(50, 12)
    with torch.no_grad():
        # oracle: the composed affine map W2 (W1 x + b1) + b2 computed by hand in float64
        w1, b1 = head[0].weight.double(), head[0].bias.double()
        w2, b2 = head[3].weight.double(), head[3].bias.double()
        expected = (x.double() @ w1.T + b1) @ w2.T + b2
        np.testing.assert_allclose(folded(x).double().numpy(), expected.numpy(), atol=1e-5)
        assert torch.equal(folded(x) > 0, head(x) > 0)
    assert _n_linear(head) == 2  # the input head is left unchanged


def test_fold_keeps_non_linearities_and_nested_runs():
    torch.manual_seed(2)
    head = nn.Sequential(
        nn.Linear(8, 6, bias=False),
        nn.Sequential(nn.Linear(6, 5)),
        nn.ReLU(),
        nn.Linear(5, 4),
        nn.Linear(4, 3),
    ).eval()
    folded = fold_linear_head(head)
    assert [type(m) for m in folded] == [nn.Linear, nn.ReLU, nn.Linear]
    x = torch.randn(20, 8)
    with torch.no_grad():
        np.testing.assert_allclose(folded(x).numpy(), head(x).numpy(), atol=1e-5)
    mlp = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    assert _n_linear(fold_linear_head(mlp)) == 2
    single = nn.Linear(3, 2)
    assert fold_linear_head(single) is single


def test_linear2_hash_model_folds_without_changing_codes(rng):
    torch.manual_seed(3)
    model = build_model(ModelConfig(bits=16, head="linear2", head_hidden=24, **TINY_VIT)).eval()
    assert _n_linear(model.head) == 2
    x = torch.from_numpy(rng.standard_normal((9, 3, 32, 32)).astype(np.float32))
    before = model.encode(x)
    model.head = fold_linear_head(model.head)
    assert isinstance(model.head, nn.Linear)
    assert np.array_equal(model.encode(x), before)


def test_bit_agreement_counts_sign_flips():
    a = np.array([[1.0, -1.0, 2.0, -0.5]])
    b = np.array([[0.5, 1.0, 3.0, 0.0]])  # flips at positions 1 and 3 (0 counts as bit 0)
    agreement, differing = bit_agreement(a, b)
    assert differing == 1 and agreement == pytest.approx(0.75)


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize(
    "kind, fmt, exporter",
    [
        ("vit", "onnx", "auto"),  # the default: torch.export (dynamo)
        ("cnn", "onnx", "legacy"),
        pytest.param("cnn", "onnx", "dynamo", marks=pytest.mark.slow),
        ("vit", "torchscript", "auto"),
        ("cnn", "torchscript", "auto"),
    ],
)
def test_export_round_trip_dynamic_batch(tmp_path, rng, kind, fmt, exporter):
    src, model = _save(tmp_path, kind)
    out = tmp_path / "out"
    entry = export_model(src, fmt, out, check_images=16, exporter=exporter)
    if fmt == "onnx":
        assert entry["exporter"] == ("dynamo" if exporter == "auto" else exporter)
        assert Encoder.from_artifact(out).backend == "onnx"  # auto prefers onnxruntime
    assert entry["check"]["bit_agreement"] >= 0.999 and entry["check"]["images"] == 16
    # the output is a complete artifact: config + weights + graph, loadable by every backend
    config, raw = read_config(out)
    assert (
        config.bits == 32 and config.img_size == 32 and raw["exports"][fmt]["file"] == entry["file"]
    )
    assert (out / entry["file"]).is_file()
    assert "exports" not in read_config(src)[1]  # the source artifact is untouched
    reloaded = load_artifact(out)
    enc = Encoder.from_artifact(out, backend=fmt, threads=1)
    assert enc.backend == fmt
    for n in (1, 5):
        x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
        expected = model.encode(torch.from_numpy(x))
        got = enc.encode_arrays(x)
        assert got.shape == (n, 4)
        assert _agreement(got, expected) >= 0.999
        assert np.array_equal(reloaded.encode(torch.from_numpy(x)), expected)
        np.testing.assert_allclose(
            enc.logits_from_arrays(x), model(torch.from_numpy(x)).detach().numpy(), atol=1e-4
        )


def test_legacy_onnx_exporter_and_folded_head(tmp_path, rng):
    src, model = _save(tmp_path, "vit", bits=16, head="linear2", head_hidden=24)
    entry = export_model(src, "onnx", check_images=8, exporter="legacy")  # in place
    assert entry["exporter"] == "legacy" and entry["opset"] >= 17 and entry["head_folded"]
    import onnx

    graph = onnx.load(str(src / "model.onnx")).graph
    # dynamic batch: the input's first dimension is symbolic
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param
    x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    enc = Encoder.from_artifact(src, backend="onnx")
    assert _agreement(enc.encode_arrays(x), model.encode(torch.from_numpy(x))) >= 0.999


def test_auto_exporter_falls_back_to_legacy(tmp_path, monkeypatch):
    src, _ = _save(tmp_path, "cnn", bits=16)
    real_export = torch.onnx.export

    def no_dynamo(*args, **kwargs):
        if kwargs.get("dynamo"):
            raise RuntimeError("torch.export cannot trace this model")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    entry = export_model(src, "onnx", check_images=4)
    assert entry["exporter"] == "legacy" and "cannot trace" in entry["dynamo_error"]
    with pytest.raises(ExportError, match="cannot trace.*legacy"):
        export_model(src, "onnx", check_images=4, exporter="dynamo")


def test_two_exports_are_both_listed(tmp_path):
    src, _ = _save(tmp_path, "cnn", bits=16)
    out = tmp_path / "out"
    export_model(src, "torchscript", out, check_images=4)
    export_model(src, "onnx", out, check_images=4, exporter="legacy")
    exports = json.loads((out / "config.json").read_text())["exports"]
    assert set(exports) == {"onnx", "torchscript"}
    assert Encoder.from_artifact(out, backend="torchscript").backend == "torchscript"


def test_divergent_export_is_refused(tmp_path, monkeypatch):
    src, _ = _save(tmp_path, "vit", bits=16)

    def corrupt_fold(head: nn.Module) -> nn.Module:  # the exported graph gets a negated head
        bad = nn.Linear(head.in_features, head.out_features)
        with torch.no_grad():
            bad.weight.copy_(-head.weight)
            bad.bias.copy_(-head.bias)
        return bad

    monkeypatch.setattr(export_mod, "fold_linear_head", corrupt_fold)
    with pytest.raises(ExportError, match=r"disagrees with the PyTorch model.*at most 0\.1%"):
        export_model(src, "torchscript", check_images=8)
    assert not (src / "model.torchscript.pt").exists()
    assert "exports" not in json.loads((src / "config.json").read_text())
    assert not list(src.glob(".export-*"))


def test_bad_arguments(tmp_path):
    src, _ = _save(tmp_path, "vit", bits=16)
    with pytest.raises(ExportError, match="format 'tflite'"):
        export_model(src, "tflite")
    with pytest.raises(ExportError, match="opset=11"):
        export_model(src, "onnx", opset=11)
    with pytest.raises(ValueError, match="config.json|not a directory"):
        export_model(tmp_path / "nothing", "onnx")


# ---------------------------------------------------------------- CLI
def test_cli_export(tmp_path, capsys):
    src, model = _save(tmp_path, "cnn", bits=16)
    out = tmp_path / "cli-out"
    assert (
        main(
            [
                "export",
                str(src),
                "--format",
                "torchscript",
                "--out",
                str(out),
                "--check-images",
                "4",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "exported torchscript" in printed and "bit agreement 100.000%" in printed
    assert (out / "model.torchscript.pt").is_file() and (out / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "argv_tail, needle",
    [(["--format", "tflite"], "tflite"), ([], "does not exist")],
    ids=["unknown-format", "missing-dir"],
)
def test_cli_bad_input_is_one_line(tmp_path, capsys, argv_tail, needle):
    model_dir = (
        tmp_path / "missing" if needle == "does not exist" else _save(tmp_path, "vit", bits=16)[0]
    )
    code = main(["export", str(model_dir), *argv_tail])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and needle in err[0] and err[0].startswith("hashkd: error:")


# ---------------------------------------------------------------- int8 (issue 17)
def _digits_held_out(config, n_calibration: int, n_check: int, seed: int = 0) -> np.ndarray:
    """Oracle for the held-out images: the same seeded draw, prepared independently."""
    from hashkd.data import eval_transform, load_dataset

    ds = load_dataset("digits")
    order = np.random.default_rng(seed).permutation(len(ds))[
        n_calibration : n_calibration + n_check
    ]
    tf = eval_transform(config.img_size, config.mean, config.std)
    return torch.stack([tf(ds.load_image(int(i))) for i in order]).numpy()


def _negated_graph(src, dst) -> None:
    """An ONNX graph whose logits are the negation of ``src``'s: every code bit flips."""
    import onnx
    from onnx import helper

    graph_model = onnx.load(str(src))
    graph = graph_model.graph
    out = graph.output[0]
    graph.node[-1].output[list(graph.node[-1].output).index(out.name)] = "raw_logits"
    graph.node.append(helper.make_node("Neg", ["raw_logits"], [out.name]))
    onnx.save(graph_model, str(dst))


def test_int8_static_export_checked_on_held_out_images(tmp_path, capsys):
    src, model = _save(tmp_path, "cnn")
    out = tmp_path / "int8"
    argv = ["export", str(src), "--out", str(out), "--onnx-exporter", "legacy"]
    argv += ["--quantize", "int8", "--data", "digits", "--calibration-images", "24"]
    assert main([*argv, "--check-images", "16"]) == 0
    printed = capsys.readouterr().out
    assert "quantized int8 (static, calibrated on 24 images of 'digits')" in printed
    assert "on 16 held-out images of 'digits'" in printed

    raw = json.loads((out / "config.json").read_text())
    int8 = raw["exports"]["onnx"]["int8"]
    assert int8["file"] == "model.int8.onnx" and (out / "model.int8.onnx").is_file()
    assert int8["method"] == "static" and int8["calibration"]["images"] == 24
    check = int8["check"]
    assert check["source"] == "held-out" and check["images"] == 16
    assert check["bit_agreement"] >= export_mod.MIN_INT8_BIT_AGREEMENT
    # the int8 graph is smaller than the float one (int8 weights)
    assert (out / "model.int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size

    # oracle: the PyTorch student on the same held-out images, drawn independently
    x = _digits_held_out(model.config, 24, 16)
    expected = model.encode(torch.from_numpy(x))
    enc = Encoder.from_artifact(out, threads=1)
    assert (enc.backend, enc.precision) == ("onnx", "int8")  # auto picks the int8 graph
    got = enc.encode_arrays(x)
    differing = int((unpack_codes(got) != unpack_codes(expected)).sum())
    assert differing == check["bits_differing"] - int(
        (unpack_codes(enc.encode_arrays(x[:1])) != unpack_codes(expected[:1])).sum()
    )
    assert _agreement(got, expected) >= 0.99
    fp32 = Encoder.from_artifact(out, precision="fp32", threads=1)
    assert fp32.precision == "fp32" and _agreement(fp32.encode_arrays(x), expected) >= 0.999
    assert not list(out.glob(".quantize-*")) and not list(out.glob(".export-*"))

    # a later torchscript export into the same artifact keeps the int8 graph listed
    export_model(out, "torchscript", check_images=4)
    assert json.loads((out / "config.json").read_text())["exports"]["onnx"]["int8"] == int8


def test_int8_dynamic_without_data_and_auto_fallback(tmp_path, monkeypatch):
    import hashkd.quantize as quantize_mod

    src, model = _save(tmp_path, "vit", bits=16)
    entry = export_model(src, "onnx", tmp_path / "dyn", check_images=8, quantize="int8")
    int8 = entry["int8"]
    assert int8["method"] == "dynamic" and "calibration" not in int8
    assert int8["check"]["source"] == "random" and int8["check"]["images"] == 8
    assert int8["check"]["bit_agreement"] >= 0.99

    def broken_static(*args, **kwargs):
        raise RuntimeError("calibration exploded")

    monkeypatch.setattr(quantize_mod, "quantize_onnx_static", broken_static)
    entry = export_model(
        src,
        "onnx",
        tmp_path / "fallback",
        check_images=8,
        quantize="int8",
        data="digits",
        calibration_images=8,
    )
    assert entry["int8"]["method"] == "dynamic"
    assert entry["int8"]["check"]["source"] == "held-out"
    assert entry["int8"]["rejected"] == ["static failed: calibration exploded"]
    with pytest.raises(ExportError, match="calibration exploded"):
        export_model(
            src,
            "onnx",
            tmp_path / "forced",
            check_images=8,
            quantize="int8",
            data="digits",
            quantize_method="static",
            calibration_images=8,
        )


def test_divergent_int8_graph_is_refused_and_nothing_written(tmp_path, monkeypatch):
    import hashkd.quantize as quantize_mod

    src, _ = _save(tmp_path, "cnn", bits=16)
    real_dynamic = quantize_mod.quantize_onnx_dynamic

    def negated_dynamic(src_path, dst, workdir):
        info = real_dynamic(src_path, dst, workdir)
        _negated_graph(dst, dst)
        return info

    monkeypatch.setattr(quantize_mod, "quantize_onnx_dynamic", negated_dynamic)
    out = tmp_path / "refused"
    with pytest.raises(ExportError, match=r"dynamic: bit agreement 0\.00%.*at least 99%"):
        export_model(src, "onnx", out, check_images=8, quantize="int8", exporter="legacy")
    assert not (out / "model.onnx").exists() and not (out / "model.int8.onnx").exists()
    assert not (out / "config.json").exists()
    assert not list(out.glob(".quantize-*")) and not list(out.glob(".export-*"))


def test_int8_bad_arguments(tmp_path, capsys):
    src, _ = _save(tmp_path, "vit", bits=16)
    with pytest.raises(ExportError, match="onnx format only"):
        export_model(src, "torchscript", quantize="int8")
    with pytest.raises(ExportError, match="quantize='int4'"):
        export_model(src, "onnx", quantize="int4")
    with pytest.raises(ExportError, match="method 'minmax'"):
        export_model(src, "onnx", quantize="int8", quantize_method="minmax")
    with pytest.raises(ExportError, match="needs calibration images: pass --data"):
        export_model(src, "onnx", quantize="int8", quantize_method="static", check_images=4)
    with pytest.raises(ValueError, match="'digits' has 1797 images: expected at least 1800"):
        export_model(
            src, "onnx", quantize="int8", data="digits", calibration_images=1790, check_images=10
        )
    assert "exports" not in json.loads((src / "config.json").read_text())
    for tail, needle in (
        (["--data", "digits"], "--data 'digits' is used only by --quantize"),
        (["--format", "torchscript", "--quantize", "int8"], "add --format onnx"),
    ):
        assert main(["export", str(src), *tail]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0]
