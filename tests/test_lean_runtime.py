"""Serving an exported artifact imports neither torch nor timm (issue 17, a lean server)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hashkd.export import export_model
from hashkd.models import ModelConfig, build_model, save_artifact
from hashkd.models.artifact import ARTIFACT_FORMAT_VERSION, read_config
from hashkd.runtime import config as runtime_config
from hashkd.runtime.config import ArtifactConfigError, read_artifact_config
from tests.conftest import REPO, TINY_CNN

pytest.importorskip("onnxruntime")

# Run in a fresh interpreter: encode image files with the default Encoder, report what loaded.
CHILD = """
import json, sys
from hashkd.runtime import Encoder

artifact, precisions, images = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
out = {}
for precision in precisions:
    enc = Encoder.from_artifact(artifact, precision=precision, threads=1)
    codes = enc.encode(images)
    out[precision] = {"backend": enc.backend, "precision": enc.precision, "codes": codes.tolist()}
heavy = ("torch", "timm", "torchvision")
out["modules"] = sorted(
    m for m in sys.modules
    if m.split(".")[0] in heavy or m.startswith(("hashkd.models", "hashkd.data"))
)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ModelConfig(bits=32, img_size=32, role="student", **TINY_CNN)).eval()
    root = tmp_path_factory.mktemp("lean")
    save_artifact(model, root / "student")
    export_model(
        root / "student",
        "onnx",
        root / "export",
        check_images=8,
        exporter="legacy",
        quantize="int8",
    )
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(((40, 30), (32, 32), (64, 48))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    return root, model


def test_encoding_an_exported_artifact_loads_no_torch(exported):
    from hashkd.data import eval_transform

    root, model = exported
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(root / "export"), "fp32,int8"]
        + [str(root / f"img{i}.png") for i in range(3)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["modules"] == []  # neither torch, timm, torchvision nor hashkd.models/data
    assert out["fp32"]["backend"] == out["int8"]["backend"] == "onnx"
    assert (out["fp32"]["precision"], out["int8"]["precision"]) == ("fp32", "int8")
    # oracle: the PyTorch student on the training evaluation transform (torchvision)
    tf = eval_transform(32, model.config.mean, model.config.std)
    images = [Image.open(root / f"img{i}.png").convert("RGB") for i in range(3)]
    expected = model.encode(torch.stack([tf(im) for im in images]))
    assert np.array_equal(np.asarray(out["fp32"]["codes"], dtype=np.uint8), expected)
    int8_codes = np.unpackbits(np.asarray(out["int8"]["codes"], dtype=np.uint8), axis=1)
    assert (int8_codes == np.unpackbits(expected, axis=1)).mean() >= 0.9


def test_runtime_config_reads_what_the_model_config_reads(exported):
    root, _ = exported
    assert runtime_config.ARTIFACT_FORMAT_VERSION == ARTIFACT_FORMAT_VERSION
    lean, lean_raw = read_artifact_config(root / "export")
    full, full_raw = read_config(root / "export")
    assert lean_raw == full_raw
    for name in ("backbone", "bits", "img_size", "mean", "std", "role", "head", "meta"):
        assert getattr(lean, name) == getattr(full, name), name


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"bits": 12}, "bits=12"),
        ({"img_size": 4}, "img_size=4"),
        ({"std": [0.2, 0.0, 0.3]}, "std="),
        ({"mean": [0.5, 0.5]}, "mean="),
        ({"format_version": 7}, "format_version=7"),
        ({"backbone": None}, "backbone=None"),
    ],
)
def test_runtime_config_refuses_bad_values(tmp_path, change, needle):
    raw = {"format_version": 1, "backbone": "resnet10t", "bits": 32, "img_size": 32, **change}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactConfigError, match=needle):
        read_artifact_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ArtifactConfigError, match="not valid JSON"):
        read_artifact_config(tmp_path)
    with pytest.raises(ArtifactConfigError, match="not a directory"):
        read_artifact_config(tmp_path / "missing")
