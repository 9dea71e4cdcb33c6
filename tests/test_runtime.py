"""hashkd.runtime.Encoder: preprocessing, input kinds, backends and their errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from hashkd.codes import unpack_codes
from hashkd.export import export_model
from hashkd.models import ModelConfig, build_model, save_artifact
from hashkd.runtime import AUTO_ORDER, BackendError, Encoder, ImageDecodeError, available_backends
from hashkd.runtime.preprocess import images_to_array
from tests.conftest import TINY_VIT

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _torchvision_eval(img_size: int, mean, std):
    """The training evaluation transform, as the oracle for the numpy preprocessing."""
    from torchvision import transforms as T

    return T.Compose([T.Resize((img_size, img_size)), T.ToTensor(), T.Normalize(mean, std)])


def _random_images(rng, n: int, sizes=((40, 30), (32, 32), (17, 50))) -> list[Image.Image]:
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        out.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    return out


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig(bits=32, img_size=32, mean=MEAN, std=STD, **TINY_VIT)
    model = build_model(cfg).eval()
    path = tmp_path_factory.mktemp("vit")
    save_artifact(model, path)
    return path, model


def test_preprocessing_matches_torchvision_eval_transform(rng):
    images = _random_images(rng, 6)
    tf = _torchvision_eval(32, MEAN, STD)
    expected = torch.stack([tf(im) for im in images]).numpy()
    got = images_to_array(images, 32, MEAN, STD)
    assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_preprocessing_matches_the_training_eval_transform(rng):
    transforms = pytest.importorskip("hashkd.data.transforms")
    images = _random_images(rng, 4, sizes=((64, 48), (20, 20)))
    tf = transforms.eval_transform(24, MEAN, STD)
    expected = torch.stack([tf(im) for im in images]).numpy()
    np.testing.assert_allclose(images_to_array(images, 24, MEAN, STD), expected, rtol=0, atol=1e-6)


def test_same_codes_for_file_bytes_and_pil_and_model_encode(artifact, tmp_path, rng):
    path, model = artifact
    enc = Encoder.from_artifact(path, backend="torch", threads=1)
    assert enc.bits == 32 and enc.backend == "torch" and enc.config.mean == MEAN
    images = _random_images(rng, 5)
    files, blobs = [], []
    for i, im in enumerate(images):
        f = tmp_path / f"img{i}.png"
        im.save(f)
        files.append(f)
        blobs.append(f.read_bytes())
    from_pil = enc.encode(images)
    assert from_pil.shape == (5, 4) and from_pil.dtype == np.uint8
    assert np.array_equal(enc.encode(files), from_pil)
    assert np.array_equal(enc.encode([str(f) for f in files]), from_pil)
    assert np.array_equal(enc.encode(blobs), from_pil)
    # oracle: the torchvision-preprocessed tensor through HashModel.encode
    tf = _torchvision_eval(32, MEAN, STD)
    expected = model.encode(torch.stack([tf(im) for im in images]))
    assert np.array_equal(from_pil, expected)
    logits = enc.encode_logits(images)
    np.testing.assert_array_equal(unpack_codes(from_pil), (logits > 0).astype(np.uint8))
    with torch.no_grad():
        ref = model(torch.stack([tf(im) for im in images])).numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-5)


def test_auto_batch_size_follows_the_pixel_budget(artifact, rng):
    from hashkd.runtime.encoder import AUTO_BATCH_PIXELS, auto_batch_size

    assert auto_batch_size(224) == 4  # 4 x 224^2 pixels per backend call
    assert auto_batch_size(32) == AUTO_BATCH_PIXELS // 1024 == 196
    assert auto_batch_size(4096) == 1  # never zero
    path, model = artifact
    enc = Encoder.from_artifact(path, backend="torch")
    assert enc.batch_size == auto_batch_size(enc.img_size)
    calls = []
    run = enc._backend.run
    enc._backend.run = lambda x: calls.append(len(x)) or run(x)
    x = rng.standard_normal((enc.batch_size * 2 + 1, 3, 32, 32)).astype(np.float32)
    assert np.array_equal(enc.encode_arrays(x), model.encode(torch.from_numpy(x)))
    assert calls == [enc.batch_size, enc.batch_size, 1]  # chunked, the codes unchanged
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            Encoder.from_artifact(path, backend="torch", batch_size=bad)


def test_encode_arrays_and_batching(artifact, rng):
    path, model = artifact
    enc = Encoder.from_artifact(path, backend="torch", batch_size=3)
    x = rng.standard_normal((7, 3, 32, 32)).astype(np.float32)
    codes = enc.encode_arrays(x)
    assert np.array_equal(codes, model.encode(torch.from_numpy(x)))
    assert np.array_equal(enc.encode_arrays(x.astype(np.float64), batch_size=1), codes)
    assert enc.encode([]).shape == (0, 4)
    assert enc.encode_arrays(np.empty((0, 3, 32, 32), np.float32)).shape == (0, 4)
    with pytest.raises(ValueError, match=r"\(n, 3, 32, 32\)"):
        enc.encode_arrays(np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        enc.encode_arrays(np.zeros((2, 3, 32, 32), np.uint8))


def test_mixed_modes_are_encoded_not_rejected(artifact, rng):
    path, _ = artifact
    enc = Encoder.from_artifact(path, backend="torch")
    base = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    gray, rgba, pal = base.convert("L"), base.convert("RGBA"), base.convert("P")
    codes = enc.encode([gray, rgba, pal])
    assert codes.shape == (3, 4)
    # an opaque RGBA image is the same picture as its RGB original
    assert np.array_equal(codes[1], enc.encode([base])[0])
    # a gray image equals its explicit RGB replication
    assert np.array_equal(codes[0], enc.encode([gray.convert("RGB")])[0])


def test_bad_image_in_a_batch_names_its_position(artifact, rng):
    path, _ = artifact
    enc = Encoder.from_artifact(path, backend="torch")
    good = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(good, format="PNG")
    with pytest.raises(ImageDecodeError, match="image #1"):
        enc.encode([good.getvalue(), b"garbage"])
    small = Encoder.from_artifact(path, backend="torch", max_pixels=10)
    with pytest.raises(ImageDecodeError) as info:
        small.encode([good.getvalue()])
    assert info.value.too_large


def test_backend_selection_and_errors(artifact, tmp_path, rng):
    path, model = artifact
    with pytest.raises(BackendError, match="no onnx export"):
        Encoder.from_artifact(path, backend="onnx")
    with pytest.raises(ValueError, match="backend='tensorrt'"):
        Encoder.from_artifact(path, backend="tensorrt")
    with pytest.raises(ValueError, match="threads=0"):
        Encoder.from_artifact(path, threads=0)
    with pytest.raises(ValueError, match="config.json"):
        Encoder.from_artifact(tmp_path / "missing")
    assert Encoder.from_artifact(path).backend == "torch"  # nothing exported yet

    out = tmp_path / "exported"
    export_model(path, "torchscript", out, check_images=8)
    assert set(available_backends(out)) == {"torch", "torchscript"}
    auto = [b for b in AUTO_ORDER if b in ("torch", "torchscript")][0]  # onnx not exported here
    assert Encoder.from_artifact(out).backend == auto
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    ts = Encoder.from_artifact(out, backend="torchscript", threads=1)
    assert np.array_equal(ts.encode_arrays(x), model.encode(torch.from_numpy(x)))

    # weights replaced after export: the export is stale, auto falls back, explicit refuses
    other = build_model(ModelConfig(bits=32, img_size=32, mean=MEAN, std=STD, **TINY_VIT))
    save_artifact(other, tmp_path / "other")
    (out / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    assert Encoder.from_artifact(out).backend == "torch"
    assert available_backends(out) == ["torch"]
    with pytest.raises(BackendError, match="other weights"):
        Encoder.from_artifact(out, backend="torchscript")


def test_preprocessing_matches_the_eval_transform_at_224_from_a_large_photo(rng):
    transforms = pytest.importorskip("hashkd.data.transforms")
    # a smooth 500x375 picture (like a photo) plus noise, downscaled 2.2x as at serving time
    yy, xx = np.mgrid[0:375, 0:500]
    smooth = np.stack([xx * 255 / 500, yy * 255 / 375, (xx + yy) * 255 / 875], axis=-1)
    noisy = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(noisy)
    expected = transforms.eval_transform(224, MEAN, STD)(image).numpy()[None]
    np.testing.assert_allclose(images_to_array([image], 224, MEAN, STD), expected, atol=1e-6)


def test_precision_selects_the_int8_graph(artifact, tmp_path, rng):
    import onnxruntime as ort

    path, model = artifact
    out = tmp_path / "int8"
    export_model(path, "onnx", out, check_images=8, exporter="legacy")
    with pytest.raises(BackendError, match="precision='fp16' is not valid"):
        Encoder.from_artifact(out, precision="fp16")
    with pytest.raises(BackendError, match="no int8 export"):
        Encoder.from_artifact(out, precision="int8")
    assert Encoder.from_artifact(out).precision == "fp32"  # nothing quantized yet

    export_model(path, "onnx", out, check_images=8, exporter="legacy", quantize="int8")
    x = rng.standard_normal((5, 3, 32, 32)).astype(np.float32)
    # oracle: onnxruntime run directly on each graph file
    direct = {
        name: ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"]).run(
            None, {"images": x}
        )[0]
        for name in ("model.onnx", "model.int8.onnx")
    }
    assert not np.array_equal(direct["model.onnx"], direct["model.int8.onnx"])  # really int8
    for backend, precision, want_backend, want_file in (
        ("auto", "auto", "onnx", "model.int8.onnx"),
        ("onnx", "auto", "onnx", "model.int8.onnx"),
        ("auto", "int8", "onnx", "model.int8.onnx"),
        ("onnx", "fp32", "onnx", "model.onnx"),
        ("auto", "fp32", "onnx", "model.onnx"),
    ):
        enc = Encoder.from_artifact(out, backend=backend, precision=precision, threads=1)
        assert enc.backend == want_backend
        assert enc.precision == ("int8" if "int8" in want_file else "fp32")
        np.testing.assert_allclose(enc.logits_from_arrays(x), direct[want_file], atol=1e-6)
    torch_enc = Encoder.from_artifact(out, backend="torch")
    assert torch_enc.precision == "fp32"
    assert np.array_equal(torch_enc.encode_arrays(x), model.encode(torch.from_numpy(x)))
    with pytest.raises(BackendError, match="needs the onnx backend, not 'torch'"):
        Encoder.from_artifact(out, backend="torch", precision="int8")

    # weights replaced: the int8 graph is as stale as the float one it came from
    other = build_model(ModelConfig(bits=32, img_size=32, mean=MEAN, std=STD, **TINY_VIT))
    save_artifact(other, tmp_path / "other")
    (out / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    stale = Encoder.from_artifact(out)
    assert (stale.backend, stale.precision) == ("torch", "fp32")
    with pytest.raises(BackendError, match="other weights"):
        Encoder.from_artifact(out, precision="int8")
