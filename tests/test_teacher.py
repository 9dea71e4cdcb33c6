"""Teacher training: feature cache equivalence, artifact, resume, validation log."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hashkd.models import ModelConfig, build_model, load_artifact
from hashkd.training.cibhash import CIBHashLoss
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
    assert 0.0 <= log[0]["val_map"] <= 1.0
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
