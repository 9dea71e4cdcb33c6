"""A hand-collected photo folder: odd but readable files are converted, bad ones skipped or refused."""

from __future__ import annotations

import io
import logging
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hashkd.cli import main
from hashkd.data import DataOptions, FolderDataset
from hashkd.runtime.images import load_image
from tests.conftest import TINY_VIT

BAD = ("a/bomb.png", "b/truncated.jpg", "c/text.jpg")  # in scanning order
ODD = ("a/cmyk.jpg", "a/gray16.png", "b/rgba.png", "b/palette.png", "c/exif6.jpg")


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))


def _normal(root: Path, rng: np.random.Generator) -> None:
    for c, cls in enumerate("abc"):
        for k in range(8):
            color = np.array([60 * c + 20, 25 * k, 255 - 60 * c])
            noise = rng.integers(-10, 10, (20, 24, 3))
            arr = np.clip(color + noise, 0, 255).astype(np.uint8)
            path = root / cls / f"img{k}.{'jpg' if k % 2 else 'png'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)


def _odd(root: Path) -> None:
    Image.new("CMYK", (20, 16), (0, 200, 200, 0)).save(root / "a" / "cmyk.jpg", quality=95)
    ramp = (np.arange(20 * 16, dtype=np.uint16).reshape(16, 20) * 200).astype(np.uint16)
    Image.fromarray(ramp).save(root / "a" / "gray16.png")  # uint16 -> mode I;16
    rgba = np.zeros((16, 20, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, np.linspace(0, 255, 20, dtype=np.uint8)[None, :]
    Image.fromarray(rgba).save(root / "b" / "rgba.png")
    pal = Image.new("P", (20, 16), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.save(root / "b" / "palette.png", transparency=0)
    # 24 wide x 16 high, left half red, right half blue; EXIF 6 = "rotate 90 CW to display".
    arr = np.zeros((16, 24, 3), dtype=np.uint8)
    arr[:, :12] = (255, 0, 0)
    arr[:, 12:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(root / "c" / "exif6.jpg", quality=95, exif=exif.tobytes())


def _bad(root: Path, rng: np.random.Generator) -> None:
    (root / "a" / "bomb.png").write_bytes(_bomb_png(20_000, 20_000))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    (root / "b" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "c" / "text.jpg").write_text("these are my holiday notes, not a picture\n")


@pytest.fixture
def odd_folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    _normal(root, rng)
    _odd(root)
    _bad(root, rng)
    (root / "empty").mkdir()
    return root


def _opts(tmp_path: Path, mode: str = "memory", **kw) -> DataOptions:
    return DataOptions(cache=mode, cache_dir=str(tmp_path / "cache"), progress=False, **kw)


@pytest.mark.parametrize("mode", ["memory", "disk", "off"])
def test_bad_files_are_skipped_with_a_warning_each(
    odd_folder: Path, tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hashkd.data")
    ds = FolderDataset(odd_folder, options=_opts(tmp_path, mode))
    assert ds.class_names == ["a", "b", "c"]  # the empty class folder is skipped
    bad = {str(odd_folder / b) for b in BAD}
    assert {p for p, _ in ds.skipped} == bad
    assert not bad & set(ds.paths)
    assert len(ds) == 3 * 8 + len(ODD)
    lines = [r.getMessage() for r in caplog.records]
    for b in BAD:  # one line naming each bad file
        assert sum(str(odd_folder / b) in line for line in lines) == 1
    assert sum(str(odd_folder / "empty") in line for line in lines) == 1
    assert any("3 of 32 image files" in line for line in lines)
    assert ds.describe()["unreadable_skipped"] == 3
    assert (
        "too large" in dict(ds.skipped)[str(odd_folder / "a" / "bomb.png")]
        or "pixels" in (dict(ds.skipped)[str(odd_folder / "a" / "bomb.png")])
    )


@pytest.mark.parametrize("mode", ["memory", "disk", "off"])
def test_strict_stops_at_the_first_problem(odd_folder: Path, tmp_path: Path, mode: str) -> None:
    with pytest.raises(ValueError, match="empty holds no images"):
        FolderDataset(odd_folder, options=_opts(tmp_path, mode, strict=True))
    (odd_folder / "empty").rmdir()
    with pytest.raises(ValueError, match="bomb.png") as info:
        FolderDataset(odd_folder, options=_opts(tmp_path, mode, strict=True))
    assert "truncated" not in str(info.value) and "text.jpg" not in str(info.value)


def test_odd_modes_and_exif_give_the_shared_conversion(odd_folder: Path, tmp_path: Path) -> None:
    # img_size large enough that nothing is resized: the cache holds the decoded pixels.
    ds = FolderDataset(odd_folder, options=_opts(tmp_path, img_size=64))
    where = {Path(p).relative_to(odd_folder).as_posix(): i for i, p in enumerate(ds.paths)}
    for name in ODD:
        got = np.asarray(ds.load_image(where[name]))
        assert got.dtype == np.uint8 and got.shape[2] == 3
        np.testing.assert_array_equal(got, np.asarray(load_image(odd_folder / name)))
    # EXIF orientation 6: the 24x16 image shows as 16x24, its left (red) half now on top.
    exif = np.asarray(ds.load_image(where["c/exif6.jpg"])).astype(int)
    assert exif.shape == (24, 16, 3)
    top, bottom = exif[:10].mean(axis=(0, 1)), exif[14:].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 50 and bottom[2] > 200 and bottom[0] < 50
    # 16-bit gray is scaled (65535 -> 255), not clipped at 255.
    gray = np.asarray(ds.load_image(where["a/gray16.png"])).astype(int)
    ramp = np.arange(20 * 16).reshape(16, 20) * 200
    np.testing.assert_array_equal(gray[..., 0], np.rint(ramp / 257).astype(int))
    # RGBA over white: fully transparent column white, opaque column the colour.
    rgba = np.asarray(ds.load_image(where["b/rgba.png"]))
    assert rgba[0, 0].tolist() == [255, 255, 255] and rgba[0, -1].tolist() == [200, 0, 0]
    # Palette: colour 1 everywhere, colour 0 (transparent) unused.
    assert np.asarray(ds.load_image(where["b/palette.png"]))[3, 3].tolist() == [10, 200, 30]


def _split_paths(folder: Path, tmp_path: Path) -> dict[str, set[str]]:
    from hashkd.data import use_data_options
    from hashkd.training.data_setup import prepare_data

    with use_data_options(_opts(tmp_path)):
        data = prepare_data(str(folder), None, None, seed=3)
    out = {}
    for name in ("train", "val", "query", "database"):
        view = getattr(data, name).source
        out[name] = {Path(p).relative_to(folder).as_posix() for p in view.paths}
    return out


def test_bad_files_do_not_move_readable_files_between_splits(
    odd_folder: Path, tmp_path: Path
) -> None:
    clean = tmp_path / "clean"
    shutil.copytree(odd_folder, clean)
    for b in BAD:
        (clean / b).unlink()
    with_bad, without = _split_paths(odd_folder, tmp_path), _split_paths(clean, tmp_path)
    assert with_bad == without
    assert sum(len(v) for k, v in without.items() if k != "database") > 0


def test_a_folder_with_nothing_readable_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "junk"
    (root / "x").mkdir(parents=True)
    (root / "x" / "a.jpg").write_text("no")
    (root / "x" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match="none of the 2 image files of image folder .*junk"):
        FolderDataset(root, options=_opts(tmp_path))


def test_a_class_whose_files_are_all_unreadable_is_dropped(
    odd_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (odd_folder / "d").mkdir()
    (odd_folder / "d" / "broken.jpg").write_text("not a jpeg")
    ds = FolderDataset(odd_folder, options=_opts(tmp_path))
    assert ds.class_names == ["a", "b", "c"] and ds.labels.shape[1] == 3
    assert ds.labels.sum(axis=1).min() == 1
    assert any(str(odd_folder / "d") in r.getMessage() for r in caplog.records)


# --- the commands over the folder -------------------------------------------------------


def test_commands_skip_bad_files_and_report_the_count(
    odd_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, codes = tmp_path / "teacher", tmp_path / "codes"
    kwargs = ",".join(f"{k}={v}" for k, v in TINY_VIT["backbone_kwargs"].items())
    common = ["--no-progress", "--cache-dir", str(tmp_path / "cache")]
    train = [
        "train-teacher",
        "--data",
        str(odd_folder),
        "--backbone",
        TINY_VIT["backbone"],
        "--backbone-kwargs",
        kwargs,
        "--bits",
        "16",
        "--img-size",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--out",
        str(teacher),
        *common,
    ]
    assert main(train) == 0
    err = capsys.readouterr().err
    assert "skipped 3 unreadable image files" in err

    assert (
        main(["encode", str(teacher), "--data", str(odd_folder), "--out", str(codes), *common]) == 0
    )
    out, err = capsys.readouterr()
    assert f"wrote {3 * 8 + len(ODD)} codes" in out and "skipped 3 unreadable image files" in err

    evaluate = ["evaluate", "--query-model", str(teacher), "--data", str(odd_folder)]
    assert main([*evaluate, "--no-progress", "--k", "10"]) == 0
    assert "| symmetric | 16 |" in capsys.readouterr().out

    # distill reads the folder through the same data layer (its default options: skip).
    student = ["distill", "--teacher", str(teacher), "--backbone", "resnet10t", "--epochs", "1"]
    student += [
        "--loss-opt",
        "brcd.k=4",
        "--batch-size",
        "8",
        "--data",
        str(odd_folder),
        "--out",
        str(tmp_path / "student"),
    ]
    assert main([*student, "--no-progress"]) == 0
    assert "student artifact" in capsys.readouterr().out

    # --strict: one line naming the first problem, non-zero exit.
    assert main([*train, "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty holds no images" in err[0]
