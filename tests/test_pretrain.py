"""``hashkd pretrain``: weights the teacher loads, exact resume, SSL losses against oracles, bad input."""

from __future__ import annotations

import json
import math
import stat

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hashkd.cli import main
from hashkd.training.cibhash import nt_xent
from hashkd.training.pretrain import (
    PretrainConfig,
    build_ssl_model,
    knn_accuracy,
    lr_at,
    read_log,
)
from hashkd.training.ssl import moco_contrastive, simclr_loss
from tests.conftest import TINY_VIT

KW = "depth=1,embed_dim=48,num_heads=2"  # patch_size=4 is added by the CLI below 64 px
TINY = [
    "--data",
    "digits",
    "--backbone",
    TINY_VIT["backbone"],
    "--backbone-kwargs",
    KW,
    "--max-train",
    "96",
    "--batch-size",
    "32",
    "--no-progress",
    "--seed",
    "3",
]


def _pretrain(out, *extra: str) -> int:
    return main(["pretrain", *TINY, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "w"
    assert _pretrain(out, "--epochs", "1") == 0
    return out / "backbone.safetensors"


def test_weights_and_description_load_into_frozen_teacher(weights, tmp_path):
    from importlib.metadata import version

    desc = json.loads(weights.with_name("backbone.safetensors.json").read_text())
    assert desc["hashkd_version"] == version("hashkd")  # the installed package's own version
    assert desc["backbone"] == TINY_VIT["backbone"]
    assert desc["backbone_kwargs"] == {"depth": 1, "embed_dim": 48, "num_heads": 2, "patch_size": 4}
    assert (
        desc["method"] == "simclr"
        and desc["seed"] == 3
        and desc["img_size"] == 32
        and desc["epochs"] == 1
    )
    saved = load_file(str(weights))
    assert all(
        not k.startswith(("backbone.", "projector.", "module.")) for k in saved
    )  # timm's own keys

    out = tmp_path / "teacher"
    code = main(
        [
            "train-teacher",
            "--data",
            "digits",
            "--backbone",
            TINY_VIT["backbone"],
            "--backbone-weights",
            str(weights.parent),  # the run folder stands for its backbone.safetensors
            "--freeze-backbone",
            "--feature-cache",
            "2",
            "--epochs",
            "1",
            "--bits",
            "16",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    from hashkd.models import load_artifact

    teacher = load_artifact(out)
    import hashlib

    # the teacher records what its initial backbone was, not only where
    assert teacher.config.meta["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    run = json.loads((out / "run.json").read_text())
    assert run["weights_sha256"] == teacher.config.meta["weights_sha256"]
    own = teacher.backbone.state_dict()
    assert set(saved) == set(own)  # every backbone tensor was written ...
    for k, v in saved.items():  # ... and loaded unchanged (the frozen backbone is not trained)
        assert torch.equal(own[k], v), k
    fresh = build_ssl_model(
        PretrainConfig(
            out="x",
            backbone=TINY_VIT["backbone"],
            backbone_kwargs=desc["backbone_kwargs"],
        )
    )[1].state_dict()
    assert any(
        not torch.equal(fresh[k], saved[k]) for k in saved
    )  # and they are not the random init


def test_resume_logs_epoch_1_then_2(tmp_path):
    out = tmp_path / "r"
    assert _pretrain(out, "--epochs", "1") == 0
    assert [r["epoch"] for r in read_log(out)] == [1]
    assert _pretrain(out, "--epochs", "2", "--resume") == 0
    log = read_log(out)
    assert [r["epoch"] for r in log] == [1, 2]
    assert log[1]["step"] == 2 * log[0]["step"] == 2 * (96 // 32)
    assert json.loads((out / "backbone.safetensors.json").read_text())["steps"] == 6


def test_keep_every_snapshots_the_weights_of_those_epochs(tmp_path):
    from hashkd.training.pretrain import snapshot_path

    out = tmp_path / "k"
    assert _pretrain(out, "--epochs", "3", "--keep-every", "2") == 0
    assert snapshot_path(out, 2) == out / "backbone-epoch002.safetensors"
    kept = sorted(p.name for p in out.glob("backbone-epoch*.safetensors"))
    assert kept == ["backbone-epoch002.safetensors"]  # epochs 1 and 3 are not multiples of 2
    desc = json.loads((out / "backbone-epoch002.safetensors.json").read_text())
    assert desc["steps"] == 2 * (96 // 32) and desc["backbone"] == TINY_VIT["backbone"]
    final = load_file(str(out / "backbone.safetensors"))
    two = load_file(str(out / "backbone-epoch002.safetensors"))
    assert set(two) == set(final) and any(
        not torch.equal(two[k], final[k]) for k in final
    )  # epoch 2 != epoch 3
    # a snapshot is a weights file like the final one: it loads as a frozen teacher backbone
    assert (
        main(
            [
                "train-teacher",
                "--data",
                "digits",
                "--backbone",
                TINY_VIT["backbone"],
                "--backbone-weights",
                str(out / "backbone-epoch002.safetensors"),
                "--freeze-backbone",
                "--feature-cache",
                "2",
                "--epochs",
                "1",
                "--bits",
                "16",
                "--no-progress",
                "--out",
                str(tmp_path / "t"),
            ]
        )
        == 0
    )


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    """A run stopped by --time-limit-minutes mid-epoch and resumed ends with the weights of a straight run."""
    straight, stopped = tmp_path / "a", tmp_path / "b"
    assert _pretrain(straight, "--epochs", "2", "--method", "mocov3") == 0
    assert (
        _pretrain(stopped, "--epochs", "2", "--method", "mocov3", "--time-limit-minutes", "1e-9")
        == 0
    )
    first = read_log(stopped)
    assert first[-1]["event"] == "stopped" and first[-1]["step"] == 1
    assert _pretrain(stopped, "--epochs", "2", "--method", "mocov3", "--resume") == 0
    assert [r["epoch"] for r in read_log(stopped) if r["event"] == "epoch"] == [1, 2]
    a, b = (
        load_file(str(straight / "backbone.safetensors")),
        load_file(str(stopped / "backbone.safetensors")),
    )
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


#: The checkpoint format written by every version of ``hashkd pretrain`` so far (kept stable so
#: that a running job's checkpoint resumes after an upgrade).
OLD_CHECKPOINT_KEYS = {
    "model",
    "optimizer",
    "step",
    "steps_per_epoch",
    "elapsed_s",
    "rng",
    "config",
}


def test_checkpoint_of_the_earlier_format_resumes_exactly(tmp_path):
    """A checkpoint built by hand as the earlier trainer wrote it (step 0) resumes to a straight run."""
    straight, resumed = tmp_path / "a", tmp_path / "b"
    assert _pretrain(straight, "--epochs", "2") == 0
    written = torch.load(straight / "checkpoint.pt", weights_only=True)
    assert set(written) == OLD_CHECKPOINT_KEYS
    assert {k.split(".")[0] for k in written["model"]} == {"backbone", "projector"}

    # The earlier trainer's state at its first step: seeded init, AdamW with decay on matrices
    # only (two groups, in named_parameters order), the global RNG that draws the augmentations.
    cfg = PretrainConfig(
        out=str(resumed),
        backbone=TINY_VIT["backbone"],
        backbone_kwargs={"depth": 1, "embed_dim": 48, "num_heads": 2, "patch_size": 4},
        seed=3,
    )
    torch.manual_seed(3)
    model = build_ssl_model(cfg)[0]
    rng = torch.get_rng_state()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for _, p in named if p.ndim > 1], "weight_decay": 0.05},
            {"params": [p for _, p in named if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=1e-3,
    )
    old = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": 0,
        "steps_per_epoch": 96 // 32,
        "elapsed_s": 0.0,
        "rng": rng,
        "config": {"backbone": TINY_VIT["backbone"], "method": "simclr"},
    }
    resumed.mkdir()
    torch.save(old, resumed / "checkpoint.pt")
    assert _pretrain(resumed, "--epochs", "2", "--resume") == 0
    assert [r["epoch"] for r in read_log(resumed)] == [1, 2]
    a, b = (
        load_file(str(straight / "backbone.safetensors")),
        load_file(str(resumed / "backbone.safetensors")),
    )
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_outputs_have_the_permissions_of_a_plain_write(weights):
    reference = weights.with_name("plain.txt")
    reference.write_text("x")
    mode = stat.S_IMODE(reference.stat().st_mode)
    for name in (
        "backbone.safetensors",
        "backbone.safetensors.json",
        "checkpoint.pt",
        "train_log.jsonl",
        "config.yaml",
    ):
        assert stat.S_IMODE(weights.with_name(name).stat().st_mode) == mode, name
    assert sorted(p.name for p in weights.parent.iterdir() if p.name.startswith(".")) == []


def test_the_earlier_weights_file_layout_still_runs_with_a_warning(tmp_path, capsys):
    """`--out W.safetensors` (the previous release) warns and writes its files beside W."""
    out = tmp_path / "w.safetensors"
    assert _pretrain(out, "--epochs", "1") == 0
    err = capsys.readouterr().err
    assert "is deprecated" in err and "--out FOLDER" in err
    names = {"w.safetensors", "w.safetensors.json", "w.safetensors.ckpt.pt"}
    names |= {"w.safetensors.log.jsonl", "w.safetensors.config.yaml"}
    assert {p.name for p in tmp_path.iterdir()} == names
    assert read_log(out)[-1]["epoch"] == 1


def test_small_images_get_4_pixel_patches_on_plain_vits_only():
    from hashkd.training.pretrain import small_image_kwargs

    assert small_image_kwargs("vit_tiny_patch16_224", 32, {"depth": 1}) == {
        "depth": 1,
        "patch_size": 4,
    }
    assert small_image_kwargs("vit_tiny_patch16_224", 32, {"patch_size": 8}) == {"patch_size": 8}
    assert small_image_kwargs("vit_tiny_patch16_224", 64, {}) == {}
    assert small_image_kwargs("vit_tiny_r_s16_p8_224", 32, {}) == {}  # ResNet-stem hybrid
    assert small_image_kwargs("resnet18", 32, {}) == {}


def test_cli_method_names_are_the_ssl_methods():
    from hashkd.training import PRETRAIN_METHODS
    from hashkd.training.ssl import SSL_METHODS

    assert tuple(SSL_METHODS) == PRETRAIN_METHODS


@pytest.mark.parametrize("method", ["simclr", "mocov3"])
def test_ssl_loss_decreases_on_a_fixed_batch(method):
    torch.manual_seed(0)
    cfg = PretrainConfig(
        out="x.safetensors",
        method=method,
        backbone=TINY_VIT["backbone"],
        backbone_kwargs=TINY_VIT["backbone_kwargs"],
        proj_hidden=64,
        proj_dim=32,
    )
    model, _ = build_ssl_model(cfg)
    x = torch.randn(16, 3, 32, 32)
    x1, x2 = x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(8):
        loss = model(x1, x2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if method == "mocov3":
            model.update_momentum(0.9)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0]


def test_simclr_loss_equals_nt_xent_and_a_loop_oracle():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    ours = float(simclr_loss(z1, z2, 0.3))
    assert ours == pytest.approx(float(nt_xent(z1, z2, 0.3)), rel=1e-6)
    z = np.concatenate([z1.numpy(), z2.numpy()])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    total = 0.0
    for i in range(10):
        j = (i + 5) % 10
        den = sum(math.exp(z[i] @ z[k] / 0.3) for k in range(10) if k != i)
        total += -math.log(math.exp(z[i] @ z[j] / 0.3) / den)
    assert ours == pytest.approx(total / 10, rel=1e-5)


def test_moco_contrastive_loop_oracle():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    qn = (q / q.norm(dim=1, keepdim=True)).numpy()
    kn = (k / k.norm(dim=1, keepdim=True)).numpy()
    ce = np.mean(
        [
            -math.log(
                math.exp(qn[i] @ kn[i] / 0.2) / sum(math.exp(qn[i] @ kn[m] / 0.2) for m in range(4))
            )
            for i in range(4)
        ]
    )
    assert float(moco_contrastive(q, k, 0.2)) == pytest.approx(2 * 0.2 * ce, rel=1e-5)


def test_knn_accuracy_matches_brute_force(rng):
    tr, te = rng.standard_normal((40, 5)), rng.standard_normal((15, 5))
    ytr, yte = rng.integers(0, 3, 40), rng.integers(0, 3, 15)
    trn = tr / np.linalg.norm(tr, axis=1, keepdims=True)
    correct = 0
    for i in range(15):
        t = te[i] / np.linalg.norm(te[i])
        sims = trn @ t
        votes = np.zeros(3)
        for j in np.argsort(-sims)[:7]:
            votes[ytr[j]] += math.exp(sims[j] / 0.07)
        correct += int(np.argmax(votes) == yte[i])
    assert knn_accuracy(tr, ytr, te, yte, k=7) == pytest.approx(correct / 15)
    assert knn_accuracy(tr, ytr, tr, ytr, k=1) == 1.0  # each point is its own nearest neighbour


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_mismatched_backbone_is_refused(weights, tmp_path, capsys):
    code = main(
        [
            "train-teacher",
            "--data",
            "digits",
            "--backbone",
            "resnet10t",
            "--backbone-weights",
            str(weights),
            "--freeze-backbone",
            "--epochs",
            "1",
            "--bits",
            "16",
            "--no-progress",
            "--out",
            str(tmp_path / "t"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1
    assert "vit_tiny_patch16_224" in err and "resnet10t" in err


def test_conflicting_backbone_kwargs_are_refused(weights, tmp_path, capsys):
    code = main(
        [
            "train-teacher",
            "--data",
            "digits",
            "--backbone",
            TINY_VIT["backbone"],
            "--backbone-kwargs",
            "depth=2",
            "--backbone-weights",
            str(weights),
            "--freeze-backbone",
            "--epochs",
            "1",
            "--bits",
            "16",
            "--no-progress",
            "--out",
            str(tmp_path / "t"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "depth=2" in err and "depth=1" in err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ([], "--out is required"),
        (["--out", "X", "--max-train", "1"], "max-train=1"),
        (["--out", "X", "--batch-size", "5000"], "batch-size=5000"),
        (["--out", "X", "--momentum", "1.5"], "momentum=1.5"),
        (["--out", "X", "--group", "nope"], "nope"),
        (["--out", "X", "--resume"], "--resume"),
    ],
)
def test_bad_values_exit_non_zero_with_one_line(extra, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "pretrain",
        "--data",
        "digits",
        "--backbone",
        TINY_VIT["backbone"],
        "--backbone-kwargs",
        KW,
        "--no-progress",
        *extra,
    ]
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


@pytest.mark.parametrize("extra", [["--tau", "0"], ["--epochs", "0"], ["--method", "byol"]])
def test_bad_cli_values_are_usage_errors(extra, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--out", "x", *extra])
    assert exc.value.code != 0
    assert extra[1] in capsys.readouterr().err


def _ddp_worker(
    rank: int, world: int, init: str, z1: torch.Tensor, z2: torch.Tensor, out: str
) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    n = z1.shape[0] // world
    a = z1[rank * n : (rank + 1) * n].clone().requires_grad_(True)
    b = z2[rank * n : (rank + 1) * n].clone().requires_grad_(True)
    loss = simclr_loss(a, b, 0.5)
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    torch.save({"loss": total / world, "ga": a.grad / world, "gb": b.grad / world}, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_simclr_gathered_negatives_equal_one_process_with_the_global_batch(tmp_path):
    """Two gloo processes with half the batch each: the loss and gradients of the global-batch NT-Xent."""
    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    init = f"file://{tmp_path / 'rdzv'}"
    mp.spawn(_ddp_worker, args=(2, init, z1, z2, str(tmp_path / "r")), nprocs=2, join=True)
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    ref = nt_xent(a, b, 0.5)
    ref.backward()
    parts = [torch.load(tmp_path / f"r.{r}", weights_only=True) for r in range(2)]
    assert float(parts[0]["loss"]) == pytest.approx(float(ref.detach()), rel=1e-5)
    torch.testing.assert_close(torch.cat([p["ga"] for p in parts]), a.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.cat([p["gb"] for p in parts]), b.grad, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- held-out images


def _held_out_ids(data) -> set[int]:
    """Root-dataset ids of the validation images and queries (what pretraining must never see)."""
    return {
        int(i)
        for split in (data.val, data.query)
        for i in np.asarray(split.source.source_indices)[split.indices]
    }


def test_pretraining_on_data_without_groups_excludes_validation_and_queries():
    from hashkd.data.splits import make_splits
    from hashkd.training.pretrain import pretrain_pool

    cfg = PretrainConfig(out="w.safetensors", data="digits", seed=3)
    ds, idx, pool = pretrain_pool(cfg)
    # oracle: the digits protocol's own splits, drawn independently with the same seed
    splits = make_splits("digits", ds, 3)
    held = set(splits.indices["val"].tolist()) | set(splits.indices["query"].tolist())
    assert len(held) == 10 * (10 + 20)  # 10 classes x (10 val + 20 queries)
    assert set(idx.tolist()) == set(range(len(ds))) - held
    assert pool.excluded == len(held) and len(idx) == len(ds) - len(held)
    # another seed draws other held-out images, and removes those
    _, idx4, _ = pretrain_pool(PretrainConfig(out="w.safetensors", data="digits", seed=4))
    assert set(idx4.tolist()) != set(idx.tolist()) and len(idx4) == len(idx)


def test_pretraining_on_a_train_group_excludes_the_validation_images(tmp_path):
    from hashkd.data.splits import Protocol
    from hashkd.training.data_setup import prepare_data
    from hashkd.training.pretrain import pretrain_pool
    from tests.test_pool import CLASSES, _write_images

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
    ds, idx, pool = pretrain_pool(PretrainConfig(out="w.safetensors", data=spec, protocol=proto))
    data = prepare_data(spec, None, proto, 0)
    train_ids = set(ds.groups["train"].tolist())
    assert set(idx.tolist()) == train_ids - _held_out_ids(data)
    assert len(idx) == CLASSES * (6 - 1) and pool.excluded == CLASSES  # one val image per class
    # --max-images draws its subset from what is left
    sub = pretrain_pool(
        PretrainConfig(out="w.safetensors", data=spec, protocol=proto, max_images=7)
    )[1]
    assert len(sub) == 7 and set(sub.tolist()) <= set(idx.tolist())


def test_weights_description_records_the_removed_images(weights):
    desc = json.loads(weights.with_name("backbone.safetensors.json").read_text())
    assert desc["pool"]["excluded_val_query"] == 300  # digits: 100 val + 200 query images
    assert desc["pool"]["size"] == desc["pool_images"] == 96
