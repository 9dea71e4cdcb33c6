"""`hashkd serve` with an exported student imports neither torch nor timm (issue 17, lean server)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported_student(tmp_path_factory):
    from hashkd.export import export_model
    from hashkd.models import ModelConfig, build_model, save_artifact

    root = tmp_path_factory.mktemp("lean")
    cfg = ModelConfig(backbone="resnet10t", bits=16, img_size=32, role="student")
    save_artifact(build_model(cfg), root / "student")
    export_model(root / "student", "onnx", root / "student_onnx")
    return root / "student_onnx"


def test_service_with_an_onnx_student_runs_without_torch(exported_student, tmp_path):
    script = textwrap.dedent(
        f"""
        import io, json, sys
        from fastapi.testclient import TestClient
        from PIL import Image
        from service.app import create_app
        from service.settings import Settings

        settings = Settings(model={str(exported_student)!r}, store={str(tmp_path / "store")!r})
        with TestClient(create_app(settings)) as client:
            buf = io.BytesIO()
            Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format="PNG")
            files = {{"images": ("a.png", buf.getvalue(), "image/png")}}
            added = client.post("/v1/items", files=files).json()["ids"]
            hits = client.post("/v1/search?k=1", files={{"image": ("a.png", buf.getvalue(), "image/png")}}).json()
            info = client.get("/v1/info").json()
        heavy = sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules)
        print(json.dumps({{"heavy": heavy, "added": added, "hit": hits["results"][0]["id"],
                          "distance": hits["results"][0]["distance"], "info": info["query_model"]}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["hit"] == result["added"][0] and result["distance"] == 0
    assert result["info"]["backend"] == "onnx" and result["info"]["precision"] == "fp32"
