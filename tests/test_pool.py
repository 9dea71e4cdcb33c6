"""``hashkd distill --pool``: pool selection, streamed view bank, pooled runs and their resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from hashkd.data.splits import Protocol
from hashkd.data.transforms import eval_transform, train_transform
from hashkd.losses.brcd import BRCDLoss
from hashkd.models import load_artifact
from hashkd.training import distill as distill_module
from hashkd.training.common import encode_split
from hashkd.training.data_setup import prepare_data
from hashkd.training.distill import DistillConfig, distill
from hashkd.training.pool import image_folder, select_pool
from hashkd.training.schedule import StepSchedule
from hashkd.training.views import SeededViews, StreamedViewBank, view_seed
from tests.conftest import TINY_CNN, save_tiny_teacher

CLASSES, PER_CLASS = 3, 8


def _write_images(folder, classes=CLASSES, per_class=PER_CLASS, seed=0) -> list[str]:
    rng = np.random.default_rng(seed)
    paths = []
    for c in range(classes):
        (folder / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            # class-dependent colour plus noise: something for codes to separate
            base = np.zeros((16, 16, 3)) + 80 * c
            pixels = np.clip(base + rng.integers(0, 120, (16, 16, 3)), 0, 255).astype(np.uint8)
            path = folder / f"c{c}" / f"{i:02d}.png"
            Image.fromarray(pixels).save(path)
            paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pool") / "images"
    _write_images(folder)
    return folder


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = save_tiny_teacher(tmp_path_factory.mktemp("teacher"), bits=32)
    return out


def _held_out_paths(data) -> set[str]:
    return {os.path.realpath(p) for s in (data.val, data.query) for p in s.source.paths}


# --------------------------------------------------------------------------- selection


def test_pool_all_is_every_image_but_validation_and_queries(image_dir):
    data = prepare_data(str(image_dir), None, None, 0)
    pool = select_pool("all", data, str(image_dir))
    every = {os.path.realpath(p) for p in data.dataset.paths}
    held = _held_out_paths(data)
    assert len(held) == len(data.val) + len(data.query) == 2 * CLASSES
    got = {os.path.realpath(pool.split.source.paths[i]) for i in pool.split.indices}
    assert got == every - held
    assert len(pool) == CLASSES * PER_CLASS - 2 * CLASSES
    assert pool.excluded == 2 * CLASSES and pool.candidates == CLASSES * PER_CLASS
    # the same folder named again is the same pool
    again = select_pool(str(image_dir), data, str(image_dir))
    assert np.array_equal(again.split.indices, pool.split.indices)


def test_pool_excludes_held_out_images_by_resolved_path(image_dir, tmp_path):
    data = prepare_data(str(image_dir), None, None, 0)
    link = tmp_path / "same_images"
    link.symlink_to(image_dir, target_is_directory=True)
    pool = select_pool(str(link), data, str(image_dir))  # another spelling: a flat image folder
    got = {os.path.realpath(pool.split.source.paths[i]) for i in pool.split.indices}
    assert got.isdisjoint(_held_out_paths(data))
    assert len(got) == CLASSES * PER_CLASS - 2 * CLASSES and pool.excluded == 2 * CLASSES


def test_pool_of_another_folder_keeps_all_its_images(image_dir, tmp_path):
    data = prepare_data(str(image_dir), None, None, 0)
    other = tmp_path / "unlabeled"
    (other / "deep" / "er").mkdir(parents=True)
    for k, where in enumerate([other, other / "deep", other / "deep" / "er"]):
        Image.new("RGB", (20, 12), (k * 50, 0, 0)).save(where / f"x{k}.jpg")
    (other / ".hidden.png").write_bytes(b"not read")
    (other / "notes.txt").write_text("not an image")
    pool = select_pool(str(other), data, str(image_dir))
    assert len(pool) == 3 and pool.excluded == 0
    assert len(image_folder(other)) == 3


def test_pool_group_of_a_split_folder_dataset(tmp_path):
    root = tmp_path / "c10"
    _write_images(root / "train", per_class=6)
    _write_images(root / "test", per_class=4, seed=1)
    proto = Protocol(
        name="tiny",
        train=2,
        val=1,
        query=1,
        database="rest+train",
        pool_group="train",
        query_group="test",
    )
    spec = f"cifar10:{root}"
    data = prepare_data(spec, None, proto, 0)
    train_ids = set(data.dataset.groups["train"].tolist())
    val_ids = set(data.val.source.source_indices.tolist())
    for name in ("train", f"{spec}@train"):
        pool = select_pool(name, data, spec)
        assert set(pool.split.indices.tolist()) == train_ids - val_ids, name
        assert pool.excluded == CLASSES  # the validation images; the queries are test images
    everything = select_pool("all", data, spec)
    query_ids = set(data.query.source.source_indices.tolist())
    assert (
        set(everything.split.indices.tolist())
        == set(range(len(data.dataset))) - val_ids - query_ids
    )
    with pytest.raises(ValueError, match="'nope'"):
        select_pool("nope", data, spec)
    with pytest.raises(ValueError, match="group 'test2'"):
        select_pool(f"{spec}@test2", data, spec)


def test_pool_of_in_memory_digits_excludes_by_index():
    data = prepare_data("digits", None, None, 0)
    pool = select_pool("digits", data, "digits")
    held = np.concatenate([data.val.source.source_indices, data.query.source.source_indices])
    expected = np.setdiff1d(np.arange(len(data.dataset)), held)
    assert np.array_equal(pool.split.indices, expected)
    assert pool.excluded == len(held) == 300


def test_pool_with_only_held_out_images_is_an_error(image_dir, tmp_path):
    data = prepare_data(str(image_dir), None, None, 0)
    lonely = tmp_path / "held"
    lonely.mkdir()
    for p in sorted(_held_out_paths(data)):
        (lonely / os.path.basename(os.path.dirname(p)) / "").mkdir(exist_ok=True)
        os.symlink(p, lonely / os.path.basename(os.path.dirname(p)) / os.path.basename(p))
    with pytest.raises(ValueError, match="no image left"):
        select_pool(str(lonely), data, str(image_dir))


# --------------------------------------------------------------------------- streamed views


def test_seeded_views_are_reproducible_and_leave_the_global_rng_alone(image_dir):
    ds = image_folder(image_dir)
    views = SeededViews(ds, np.arange(len(ds)), train_transform(16), seed=3)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = views.views(5, [0, 1, 2])
    assert torch.equal(torch.get_rng_state(), state)
    b = views.views(5, [2, 0])
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])
    assert not torch.equal(a[0], a[1])  # distinct views of one image
    other_seed = SeededViews(ds, np.arange(len(ds)), train_transform(16), seed=4).views(5, [0])
    assert not torch.equal(a[0], other_seed[0])


def test_seeded_view_is_the_transform_drawn_after_seeding_with_its_view_seed(image_dir):
    """The definition, by hand: seed torch's CPU generator with view_seed, apply the transform."""
    ds = image_folder(image_dir)
    tf = train_transform(16)
    views = SeededViews(ds, np.arange(len(ds)), tf, seed=3)
    for image, view in [(5, 0), (5, 2), (0, 1)]:
        torch.manual_seed(view_seed(3, image, view))
        expected = tf(ds.load_image(image))
        assert torch.equal(views.views(image, [view])[0], expected)


def test_streamed_bank_codes_once_and_workers_stream_the_coded_views(image_dir):
    ds = image_folder(image_dir)
    idx = np.arange(0, len(ds), 2)
    bank = StreamedViewBank(ds, idx, train_transform(16), num_views=3, seed=0)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 16))
    seen = []

    def fn(x):
        seen.append(x.shape[0])
        return net(x)

    codes = bank.code(fn, batch_size=7, num_workers=2, progress=False)
    assert codes.shape == (len(idx), 3, 2) and codes.dtype == np.uint8
    assert sum(seen) == len(idx) * 3  # every view coded exactly once
    pairs = bank.pick_pairs(torch.Generator().manual_seed(0))
    assert (pairs[:, 0] != pairs[:, 1]).all()
    loader = DataLoader(bank.epoch_dataset(pairs), batch_size=5, num_workers=2)
    for x1, x2, i, a, b in loader:
        with torch.no_grad():
            # the views streamed by the workers are the views the network coded
            assert torch.equal(bank.signs(i, a), torch.where(net(x1) > 0, 1.0, -1.0))
            assert torch.equal(bank.signs(i, b), torch.where(net(x2) > 0, 1.0, -1.0))


# --------------------------------------------------------------------------- pooled runs


def _cfg(tmp_path, teacher, image_dir, name="student", **kw) -> DistillConfig:
    base = dict(
        out=str(tmp_path / name),
        teacher=str(teacher),
        student=TINY_CNN["backbone"],
        data=str(image_dir),
        pool="all",
        epochs=2,
        batch_size=4,
        view_bank=3,
        progress=False,
        losses=["brcd"],
        loss_options={"brcd": {"k": 3}},
    )
    base.update(kw)
    return DistillConfig(**base)


def test_pooled_run_codes_the_pool_once_and_trains_only_on_it(
    tmp_path, teacher_dir, image_dir, monkeypatch
):
    cfg = _cfg(tmp_path, teacher_dir, image_dir)
    data = prepare_data(str(image_dir), None, None, 0)
    pool = select_pool("all", data, str(image_dir))
    teacher_images, trained_on, fitted = [], set(), []
    forward = distill_module.HashModel.forward

    def counting_forward(self, x):
        if self.config.role == "teacher":
            teacher_images.append(x.shape[0])
        return forward(self, x)

    views = SeededViews.views

    def recording_views(self, i, numbers):
        trained_on.add(int(self.indices[i]))
        return views(self, i, numbers)

    fit = BRCDLoss.fit

    def recording_fit(self, codes, *args):
        fitted.append(codes.clone())
        return fit(self, codes, *args)

    monkeypatch.setattr(distill_module.HashModel, "forward", counting_forward)
    monkeypatch.setattr(SeededViews, "views", recording_views)
    monkeypatch.setattr(BRCDLoss, "fit", recording_fit)
    out = distill(cfg)

    n = len(pool)
    # the pool's codes (n), its n x 3 views, and one image for the FLOPs count; never per epoch
    assert sum(teacher_images) == n + 3 * n + 1
    assert trained_on == set(pool.split.indices.tolist())
    assert trained_on.isdisjoint(
        set(data.val.source.source_indices.tolist())
        | set(data.query.source.source_indices.tolist())
    )
    # BRCD's clusters come from the teacher's codes of the pool, row i = pool image i
    teacher = load_artifact(teacher_dir)
    tf = eval_transform(16, teacher.config.mean, teacher.config.std)
    expected = encode_split(teacher, pool.split, tf, torch.device("cpu"))
    assert len(fitted) == 1 and fitted[0].shape == (n, 32)
    assert np.array_equal(np.packbits(fitted[0].numpy() > 0, axis=1), expected)
    run = json.loads((out / "run.json").read_text())
    assert run["pool"]["size"] == n and run["pool"]["excluded_val_query"] == 2 * CLASSES
    student = load_artifact(out)
    assert student.config.meta["pool"]["size"] == n
    assert student.config.meta["cost"]["flops"] > 0
    assert student.config.meta["teacher_cost"]["params"] == sum(
        p.numel() for p in teacher.parameters()
    )


def test_resumed_pooled_cosine_run_matches_an_uninterrupted_one(
    tmp_path, teacher_dir, image_dir, monkeypatch
):
    settings = dict(epochs=4, lr_schedule="cosine", warmup_epochs=1, lr=2e-3)
    lrs: list[float] = []
    step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)

    whole = distill(_cfg(tmp_path, teacher_dir, image_dir, "whole", **settings))
    whole_lrs, lrs[:] = list(lrs), []

    class Stop(Exception):
        pass

    end_epoch = distill_module.end_epoch

    def stop_after_two(*args, **kwargs):
        best = end_epoch(*args, **kwargs)
        if args[3]["epoch"] == 2:
            raise Stop
        return best

    monkeypatch.setattr(distill_module, "end_epoch", stop_after_two)
    with pytest.raises(Stop):
        distill(_cfg(tmp_path, teacher_dir, image_dir, "split", **settings))
    monkeypatch.setattr(distill_module, "end_epoch", end_epoch)
    split = distill(_cfg(tmp_path, teacher_dir, image_dir, "split", resume=True, **settings))

    # 18 pool images, batches of 4 (last partial batch dropped): 4 steps per epoch
    steps, warmup = 16, 4
    expected = [2e-3 * (s + 1) / warmup for s in range(warmup)] + [
        2e-3 * 0.5 * (1 + np.cos(np.pi * (s - warmup) / (steps - warmup)))
        for s in range(warmup, steps)
    ]
    assert np.allclose(whole_lrs, expected, rtol=1e-12, atol=0)
    assert lrs == whole_lrs
    a = torch.load(whole / "checkpoint.pt", weights_only=True)
    b = torch.load(split / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4 and a["lr_schedule"] == b["lr_schedule"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    log = [json.loads(x) for x in (split / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    # a resume with another schedule is refused with the value that changed
    with pytest.raises(ValueError, match="total_steps"):
        distill(
            _cfg(
                tmp_path, teacher_dir, image_dir, "split", resume=True, **{**settings, "epochs": 6}
            )
        )


def test_step_schedule_against_hand_values():
    s = StepSchedule("cosine", 1.0, total_steps=10, warmup_steps=2)
    assert [s.lr_at(k) for k in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert s.lr_at(6) == pytest.approx(0.5)  # half-way through the 8 decay steps
    assert s.lr_at(10) == pytest.approx(0.0)
    const = StepSchedule("constant", 0.1, total_steps=10, warmup_steps=4)
    assert [const.lr_at(k) for k in (0, 3, 4, 9)] == pytest.approx([0.025, 0.1, 0.1, 0.1])
    other = StepSchedule("cosine", 1.0, total_steps=12, warmup_steps=2)
    with pytest.raises(ValueError, match="total_steps=10"):
        other.load_state_dict({**s.state_dict(), "step": 4})
    with pytest.raises(ValueError, match="warm-up"):
        StepSchedule("cosine", 1.0, total_steps=3, warmup_steps=4)


def test_a_constant_schedule_may_be_resumed_for_more_epochs():
    short = StepSchedule("constant", 0.1, total_steps=10, warmup_steps=2, step=10)
    longer = StepSchedule("constant", 0.1, total_steps=20, warmup_steps=2)
    longer.load_state_dict(short.state_dict())
    assert longer.step == 10 and longer.lr_at(longer.step) == 0.1
    with pytest.raises(ValueError, match="base_lr=0.1"):
        StepSchedule("constant", 0.2, total_steps=20).load_state_dict(short.state_dict())


# --------------------------------------------------------------------------- teacher logits


def test_streamed_bank_keeps_the_logits_it_coded_when_asked(image_dir):
    ds = image_folder(image_dir)
    idx = np.arange(len(ds))
    bank = StreamedViewBank(ds, idx, train_transform(16), num_views=2, seed=1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 8))
    with pytest.raises(RuntimeError, match="no logits"):
        bank.outputs(torch.tensor([0]), torch.tensor([0]))
    bank.code(net, batch_size=5, progress=False, keep_logits=True)
    assert bank.logits.shape == (len(idx), 2, 8) and bank.logits.dtype == torch.float32
    pairs = bank.pick_pairs(torch.Generator().manual_seed(0))
    for x1, _, i, a, _ in DataLoader(bank.epoch_dataset(pairs), batch_size=4):
        with torch.no_grad():
            want = net(x1)  # the oracle: the network run again on the re-drawn view
        np.testing.assert_allclose(bank.outputs(i, a).numpy(), want.numpy(), atol=1e-5)
        assert torch.equal(bank.signs(i, a), torch.where(want > 0, 1.0, -1.0))


@pytest.mark.parametrize("view_bank, pool", [(0, None), (3, None), (3, "all")])
def test_kd_inputs_logits_gives_the_losses_both_networks_continuous_outputs(
    tmp_path, teacher_dir, image_dir, monkeypatch, view_bank, pool
):
    """With kd_inputs="logits" the loss reads the student's pre-sign logits (with grad) and the
    teacher's logits of the same views: the oracle reruns the teacher on the student's input."""
    from hashkd.losses.sp import SimilarityPreservingLoss as SPLoss

    teacher = load_artifact(teacher_dir).eval()
    last: dict[str, torch.Tensor] = {}
    forward = distill_module.HashModel.forward

    def recording_forward(self, x):
        out = forward(self, x)
        if self.config.role == "student" and self.training:
            last["x"], last["u"] = x.detach(), out
        return out

    seen = []
    sp_forward = SPLoss.forward

    def recording_loss(self, batch):
        b = batch.s1.shape[0]
        with torch.no_grad():
            t = teacher(last["x"][:b])
        seen.append(
            (
                float((batch.t1 - t).abs().max()),
                float((batch.s1 - last["u"][:b]).detach().abs().max()),
                batch.s1.requires_grad,
                bool(((batch.t1 == 1) | (batch.t1 == -1)).all()),
            )
        )
        return sp_forward(self, batch)

    monkeypatch.setattr(distill_module.HashModel, "forward", recording_forward)
    monkeypatch.setattr(SPLoss, "forward", recording_loss)
    cfg = _cfg(
        tmp_path,
        teacher_dir,
        image_dir,
        epochs=1,
        losses=["sp"],
        loss_options={},
        kd_inputs="logits",
        view_bank=view_bank,
        pool=pool,
    )
    out = distill(cfg)
    assert seen
    for t_err, s_err, grad, binary in seen:
        assert t_err < 1e-4 and s_err == 0.0 and grad and not binary
    meta = load_artifact(out).config.meta
    assert meta["kd_inputs"] == "logits"
    from hashkd.encoding import artifact_digest

    assert meta["teacher_digest"] == artifact_digest(teacher_dir)
    # the default reads ±1 codes on both sides
    seen.clear()
    distill(_cfg(tmp_path, teacher_dir, image_dir, name="codes", epochs=1, losses=["sp"],
                 loss_options={}, view_bank=view_bank, pool=pool))  # fmt: skip
    assert seen and all(binary for *_, binary in seen)


def test_kd_inputs_unknown_kind_is_refused(tmp_path, teacher_dir, image_dir):
    with pytest.raises(ValueError, match="kd-inputs='features' is not valid"):
        _cfg(tmp_path, teacher_dir, image_dir, kd_inputs="features").validate()


def test_brcd_on_logits_reads_logits_and_clusters_the_teachers_codes(
    tmp_path, teacher_dir, image_dir, monkeypatch
):
    """BRCD with kd_inputs="logits": its batches hold continuous teacher outputs, while its
    clusters and masks are those of the same run on ±1 codes (oracle: that run's report)."""
    from hashkd.losses.brcd import BRCDLoss

    seen = []
    row_losses = BRCDLoss.row_losses

    def recording(self, batch):
        seen.append(bool(((batch.t1 == 1) | (batch.t1 == -1)).all()))
        return row_losses(self, batch)

    monkeypatch.setattr(BRCDLoss, "row_losses", recording)
    reports = {}
    for kind in ("codes", "logits"):
        seen.clear()
        out = distill(_cfg(tmp_path, teacher_dir, image_dir, name=kind, epochs=1, kd_inputs=kind))
        meta = load_artifact(out).config.meta
        assert meta["kd_inputs"] == kind and seen
        assert all(seen) if kind == "codes" else not any(seen)
        reports[kind] = meta["losses"][0]["report"]
    for key in ("k", "cluster_sizes", "kept_fraction"):
        assert reports["logits"][key] == reports["codes"][key]


def test_cli_kd_inputs(tmp_path, teacher_dir, capsys):
    from hashkd.cli import main

    base = ["distill", "--teacher", str(teacher_dir), "--data", "digits", "--no-progress",
            "--out", str(tmp_path / "s")]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main([*base, "--kd-inputs", "features"])
    assert exc.value.code == 2 and "features" in capsys.readouterr().err
    assert not (tmp_path / "s" / "checkpoint.pt").exists()


@pytest.mark.parametrize("kd_inputs", ["codes", "logits"])
def test_losses_are_fitted_on_what_they_will_read(
    tmp_path, teacher_dir, image_dir, monkeypatch, kd_inputs
):
    """LSH's median bias comes from the teacher's outputs of the training split: its ±1 codes
    by default, its logits with kd_inputs="logits" (oracle: the teacher run image by image)."""
    from hashkd.losses.lsh import LSHLoss

    fitted = []
    fit = LSHLoss.fit

    def recording_fit(self, codes, *args):
        fitted.append(torch.as_tensor(codes).clone())
        return fit(self, codes, *args)

    monkeypatch.setattr(LSHLoss, "fit", recording_fit)
    cfg = _cfg(tmp_path, teacher_dir, image_dir, epochs=1, losses=["lsh"], loss_options={},
               kd_inputs=kd_inputs, pool=None, view_bank=0)  # fmt: skip
    distill(cfg)
    teacher = load_artifact(teacher_dir).eval()
    data = prepare_data(str(image_dir), None, None, 0)
    tf = eval_transform(16, teacher.config.mean, teacher.config.std)
    with torch.no_grad():
        want = torch.cat(
            [teacher(tf(data.train.source.load_image(int(i)))[None]) for i in data.train.indices]
        )
    if kd_inputs == "codes":
        want = torch.where(want > 0, 1.0, -1.0)
    (got,) = fitted
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- teacher cache


def _checkpoint_model(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


@pytest.mark.parametrize("kd_inputs, loss", [("codes", "brcd"), ("logits", "sp")])
def test_teacher_cache_reads_back_what_the_run_would_compute(
    tmp_path, teacher_dir, image_dir, monkeypatch, kd_inputs, loss
):
    """A pooled run with --teacher-cache: the first run codes the pool and its views and writes
    them, the next one codes nothing (only the FLOPs count's one image) and trains the same
    student, tensor for tensor, as a run without the cache. The files hold logits, so a codes
    run's cache also serves a logits run (and the other way round)."""
    settings = dict(kd_inputs=kd_inputs, losses=[loss], loss_options={"brcd": {"k": 3}})
    if loss != "brcd":
        settings["loss_options"] = {}
    plain = distill(_cfg(tmp_path, teacher_dir, image_dir, "plain", **settings))
    cache = tmp_path / "teacher-cache"
    teacher_images: list[int] = []
    forward = distill_module.HashModel.forward

    def counting_forward(self, x):
        if self.config.role == "teacher":
            teacher_images.append(x.shape[0])
        return forward(self, x)

    monkeypatch.setattr(distill_module.HashModel, "forward", counting_forward)
    cold = distill(
        _cfg(tmp_path, teacher_dir, image_dir, "cold", teacher_cache=str(cache), **settings)
    )
    n = 3 * 8 - 2 * 3  # the pool: every image but the validation images and queries
    assert sum(teacher_images) == n + 3 * n + 1
    assert len(list(cache.glob("*.safetensors"))) == 2
    teacher_images.clear()
    warm = distill(
        _cfg(tmp_path, teacher_dir, image_dir, "warm", teacher_cache=str(cache), **settings)
    )
    assert sum(teacher_images) == 1
    reference = _checkpoint_model(plain)
    for out in (cold, warm):
        trained = _checkpoint_model(out)
        for key, value in reference.items():
            assert torch.equal(value, trained[key]), (out.name, key)


def test_teacher_cache_misses_on_another_seed_and_rewrites_a_broken_file(
    tmp_path, teacher_dir, image_dir
):
    cache = tmp_path / "teacher-cache"
    distill(_cfg(tmp_path, teacher_dir, image_dir, "a", epochs=1, teacher_cache=str(cache)))
    first = sorted(cache.glob("*.safetensors"))
    assert len(first) == 2
    # another seed: other held-out images, so another pool, and other views: two new files
    distill(_cfg(tmp_path, teacher_dir, image_dir, "b", epochs=1, seed=1, teacher_cache=str(cache)))
    assert len(list(cache.glob("*.safetensors"))) == 4
    # a truncated file is a miss: the run codes again and writes it whole
    for path in first:
        path.write_bytes(path.read_bytes()[:20])
    distill(_cfg(tmp_path, teacher_dir, image_dir, "c", epochs=1, teacher_cache=str(cache)))
    from safetensors.torch import load_file

    for path in first:
        assert load_file(str(path))["logits"].ndim in (2, 3)
