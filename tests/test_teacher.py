"""Teacher training: feature cache equivalence, artifact, resume, validation log."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hashkd.data.transforms import eval_transform
from hashkd.metrics import code_health, evaluate_codes
from hashkd.models import ModelConfig, build_model, load_artifact
from hashkd.models.artifact import read_config
from hashkd.training.cibhash import CIBHashLoss
from hashkd.training.common import Validation, end_epoch, validation_map
from hashkd.training.data_setup import prepare_data
from hashkd.training.distributed import DistInfo
from hashkd.training.run_dir import RunDir
from hashkd.training.teacher import TeacherConfig, cached_and_uncached_loss, train_teacher
from hashkd.training.views import ViewBank
from tests.conftest import TINY_VIT


def test_cached_and_uncached_paths_give_the_same_loss():
    torch.manual_seed(0)
    model = build_model(ModelConfig(bits=32, freeze_backbone=True, **TINY_VIT))
    x1, x2 = torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32)
    full, cached = cached_and_uncached_loss(model, x1, x2, CIBHashLoss())
    assert full == pytest.approx(cached, rel=1e-5)


def test_view_bank_pairs_are_distinct_views():
    bank = ViewBank(torch.zeros(10, 3, 3, 4, 4))
    pairs = bank.pick_pairs(torch.Generator().manual_seed(0))
    assert pairs.shape == (10, 2)
    assert bool((pairs[:, 0] != pairs[:, 1]).all())
    assert int(pairs.max()) < 3


def _cfg(tmp_path, **kw):
    base = dict(
        out=str(tmp_path / "teacher"),
        data="digits",
        backbone=TINY_VIT["backbone"],
        backbone_kwargs=dict(TINY_VIT["backbone_kwargs"]),
        bits=16,
        img_size=16,
        epochs=2,
        batch_size=32,
        max_train=100,
        progress=False,
    )
    base.update(kw)
    return TeacherConfig(**base)


def test_train_writes_artifact_log_and_resumes(tmp_path):
    cfg = _cfg(tmp_path, epochs=1)
    out = train_teacher(cfg)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1]
    assert 0.0 <= log[0]["val_map"] <= 1.0 and 0.0 <= log[0]["val_map_position"] <= 1.0
    health = log[0]["val_code_health"]
    assert health["num_codes"] == 100 and log[0]["val_collapsed"] == health["collapsed"]
    model = load_artifact(out)
    assert model.bits == 16 and model.config.role == "teacher"
    # resume to 2 epochs: one more record, starting from the saved epoch
    train_teacher(_cfg(tmp_path, epochs=2, resume=True))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    x = torch.randn(4, 3, 16, 16)
    codes = load_artifact(out).encode(x)
    assert codes.shape == (4, 2) and codes.dtype == np.uint8


def test_frozen_backbone_with_feature_cache_trains_only_the_head(tmp_path):
    cfg = _cfg(tmp_path, freeze_backbone=True, feature_cache_views=3, epochs=2)
    out = train_teacher(cfg)
    torch.manual_seed(cfg.seed)
    init = build_model(ModelConfig(bits=16, img_size=16, **TINY_VIT))
    trained = load_artifact(out)
    for k, v in init.backbone.state_dict().items():
        assert torch.equal(v, trained.backbone.state_dict()[k]), k
    assert not torch.equal(init.head.weight, trained.head.weight)


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="bits"):
        train_teacher(_cfg(tmp_path, bits=12))
    with pytest.raises(ValueError, match="freeze-backbone"):
        train_teacher(_cfg(tmp_path, feature_cache_views=4))
    with pytest.raises(ValueError, match="resume"):
        train_teacher(_cfg(tmp_path, resume=True))


class ConstantCodes(torch.nn.Module):
    """A fake hash model whose codes are the same for every image (fully collapsed)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], 16)


class PixelCodes(torch.nn.Module):
    """A fake hash model: the signs of 16 centred pixels (many distinct codes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)[:, ::37][:, :16]
        return flat - flat.mean(dim=0, keepdim=True)


def test_validation_is_tie_averaged_with_the_health_of_the_codes():
    data = prepare_data("digits", None, "digits", 0)
    tf = eval_transform(16)
    collapsed = validation_map(ConstantCodes(), data.val, data.train, tf, torch.device("cpu"))
    # oracle: constant codes rank every item equally, so the tie-averaged mAP@K of class-balanced
    # data is evaluate_codes' value on any order of the same labels (here sorted by class)
    labels = data.train.labels[np.argsort(data.train.labels.argmax(1), kind="stable")]
    zeros = np.zeros((len(data.val), 2), np.uint8), np.zeros((len(labels), 2), np.uint8)
    expected = evaluate_codes(*zeros, data.val.labels, labels, topk=500, curves=False)
    assert collapsed.map_tie_averaged == pytest.approx(expected["map_tie_averaged"])
    assert collapsed.map_tie_averaged != pytest.approx(expected["map"], abs=0.05)  # sorted: off
    assert collapsed.map == pytest.approx(collapsed.map_tie_averaged, abs=0.005)  # shuffled
    assert collapsed.collapsed and collapsed.health["distinct_codes"] == 1
    healthy = validation_map(PixelCodes(), data.val, data.train, tf, torch.device("cpu"))
    assert not healthy.collapsed and healthy.health["num_codes"] == len(data.train)
    given = validation_map(
        ConstantCodes(),
        data.val,
        data.train,
        tf,
        torch.device("cpu"),
        database_codes=np.arange(len(data.train) * 2, dtype=np.uint8).reshape(-1, 2),
    )
    assert given.health["num_codes"] == len(data.val)  # the model's own (query) codes


def _health(collapsed: bool) -> dict:
    codes = (
        np.zeros((200, 2), np.uint8)
        if collapsed
        else np.arange(400).astype(np.uint8).reshape(200, 2)
    )
    return code_health(codes)


def test_a_collapsed_epoch_is_never_kept_as_best(tmp_path):
    """Epoch 2 has the highest mAP, position-broken and tie-averaged, but collapsed codes."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(bits=16, img_size=16, **TINY_VIT))
    run = RunDir(tmp_path / "run")
    results = [
        Validation(map_tie_averaged=0.30, map=0.31, health=_health(False)),
        Validation(map_tie_averaged=0.50, map=0.90, health=_health(True)),
        Validation(map_tie_averaged=0.25, map=0.26, health=_health(False)),
    ]
    best, saved = -math.inf, []
    for epoch, result in enumerate(results, start=1):
        best = end_epoch(
            run,
            DistInfo(),
            model,
            {"epoch": epoch},
            3,
            1,
            best,
            validate=lambda r=result: r,
            checkpoint=lambda b: {"best_map": b},
        )
        saved.append(read_config(run.path)[0].meta["epoch"])
    assert saved == [1, 1, 1] and best == pytest.approx(0.30)
    log = run.read_log()
    assert [r["val_collapsed"] for r in log] == [False, True, False]
    assert [r["val_map"] for r in log] == [0.30, 0.50, 0.25]
    assert [r["val_map_position"] for r in log] == [0.31, 0.90, 0.26]
    assert log[1]["val_code_health"]["distinct_codes"] == 1

    # a run that starts collapsed: the first healthy epoch replaces it, even with a lower mAP
    run2 = RunDir(tmp_path / "run2")
    best, saved = -math.inf, []
    for epoch, result in enumerate([results[1], results[2]], start=1):
        best = end_epoch(
            run2,
            DistInfo(),
            model,
            {"epoch": epoch},
            2,
            1,
            best,
            validate=lambda r=result: r,
            checkpoint=lambda b: {"best_map": b},
        )
        saved.append(read_config(run2.path)[0].meta["epoch"])
    assert saved == [1, 2] and best == pytest.approx(0.25)


# ----------------------------------------------------------------------------- small images


@pytest.mark.parametrize(
    ("backbone", "img_size", "given", "expected"),
    [
        ("vit_tiny_patch16_224", 32, {"depth": 1}, {"depth": 1, "patch_size": 4}),
        ("vit_tiny_patch16_224", 63, {}, {"patch_size": 4}),
        ("vit_tiny_patch16_224", 64, {}, {}),
        ("vit_tiny_patch16_224", 32, {"patch_size": 8}, {"patch_size": 8}),
        ("vitc_micro", 32, {}, {"patch_size": 4}),  # the conv-stem ViT's own default, said
        ("vit_tiny_r_s16_p8_224", 32, {}, {}),  # ResNet-stem hybrid: the pretrain rule
        ("vit_base_r50_s16_224", 32, {}, {}),
        ("levit_128", 32, {}, {}),  # "vit" in the name, but its own patch embedding
        ("resnet18", 32, {}, {}),
    ],
)
def test_one_small_image_rule_for_both_trainers(backbone, img_size, given, expected):
    from hashkd.models.backbones import small_image_kwargs
    from hashkd.training.pretrain import PretrainConfig, build_ssl_model

    assert small_image_kwargs(backbone, img_size, given) == expected
    cfg = TeacherConfig(out="t", backbone=backbone, img_size=img_size, backbone_kwargs=given)
    assert cfg.model_config().backbone_kwargs == expected
    assert cfg.backbone_kwargs == given  # the config keeps what was asked
    if backbone == "vit_tiny_patch16_224" and given.get("depth") == 1:
        pre = PretrainConfig(out="w.safetensors", backbone=backbone, img_size=img_size)
        pre.backbone_kwargs = {"depth": 1}
        _, net = build_ssl_model(pre)
        assert net.patch_embed.patch_size == (4, 4)


def test_cli_and_library_train_the_same_small_image_teacher(tmp_path, capsys):
    """`hashkd train-teacher` and train_teacher(TeacherConfig) with the same inputs: one model."""
    from hashkd.cli import main

    kwargs = {"depth": 1, "embed_dim": 32, "num_heads": 2}  # no patch_size: the default applies
    lib = train_teacher(
        _cfg(tmp_path, out=str(tmp_path / "lib"), backbone_kwargs=kwargs, img_size=32, epochs=1)
    )
    argv = ["train-teacher", "--data", "digits", "--backbone", TINY_VIT["backbone"]]
    argv += ["--backbone-kwargs", "depth=1,embed_dim=32,num_heads=2", "--bits", "16"]
    argv += ["--img-size", "32", "--epochs", "1", "--batch-size", "32", "--max-train", "100"]
    assert main([*argv, "--no-progress", "--out", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    a, b = load_artifact(lib), load_artifact(tmp_path / "cli")
    assert a.config.backbone_kwargs == b.config.backbone_kwargs == {**kwargs, "patch_size": 4}
    assert a.backbone.patch_embed.grid_size == (8, 8)  # 32 px / 4 px patches
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
