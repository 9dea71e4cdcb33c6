"""Distillation trainer: a short BRCD run on the embedded digits improves the student."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hashkd.metrics import mean_average_precision
from hashkd.models import ModelConfig, build_model, load_artifact, save_artifact
from hashkd.training.common import encode_split
from hashkd.training.data_setup import prepare_data
from hashkd.training.distill import DistillConfig, distill
from tests.conftest import TINY_CNN, TINY_VIT


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    """A tiny ViT teacher whose codes are LSH of pixels: a fixed, informative teacher."""
    out = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    model = build_model(ModelConfig(bits=32, img_size=16, **TINY_VIT))
    save_artifact(model, out)
    return out


def _student_map(model, data, cfg) -> float:
    from hashkd.data.transforms import eval_transform

    tf = eval_transform(cfg.img_size, cfg.mean, cfg.std)
    q = encode_split(model, data.query, tf, torch.device("cpu"))
    d = encode_split(model, data.database, tf, torch.device("cpu"))
    return mean_average_precision(q, d, data.query.labels, data.database.labels, topk=200)


def _cfg(tmp_path, teacher, **kw):
    base = dict(
        out=str(tmp_path / "student"),
        teacher=str(teacher),
        student=TINY_CNN["backbone"],
        data="digits",
        epochs=3,
        batch_size=32,
        max_train=200,
        view_bank=3,
        progress=False,
        losses=["brcd"],
        loss_options={"brcd": {"k": 10}},
    )
    base.update(kw)
    return DistillConfig(**base)


def test_short_brcd_run_moves_student_codes_toward_teacher(tmp_path, digits_teacher):
    cfg = _cfg(tmp_path, digits_teacher)
    data = prepare_data("digits", None, None, 0)
    teacher = load_artifact(digits_teacher)
    from hashkd.data.transforms import eval_transform

    tf = eval_transform(16, teacher.config.mean, teacher.config.std)
    t_codes = encode_split(teacher, data.database, tf, torch.device("cpu"))

    def agreement(model) -> float:
        s = encode_split(model, data.database, tf, torch.device("cpu"))
        return float((np.unpackbits(s, axis=1) == np.unpackbits(t_codes, axis=1)).mean())

    torch.manual_seed(cfg.seed)
    untrained = build_model(
        ModelConfig(bits=32, img_size=16, head="mlp", role="student", **TINY_CNN)
    )
    before_agree, before_map = agreement(untrained), _student_map(untrained, data, untrained.config)
    out = distill(cfg)
    student = load_artifact(out)
    assert student.config.role == "student" and student.bits == 32
    after_agree, after_map = agreement(student), _student_map(student, data, student.config)
    assert after_agree > before_agree + 0.05
    assert after_map > before_map
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert {"cibhash", "brcd", "val_map"} <= set(log[-1])


def test_distill_resume_and_bad_settings(tmp_path, digits_teacher):
    cfg = _cfg(
        tmp_path, digits_teacher, epochs=1, view_bank=0, losses=["align", "sp"], weights=[1.0, 1.0]
    )
    out = distill(cfg)
    distill(
        _cfg(
            tmp_path,
            digits_teacher,
            epochs=2,
            view_bank=0,
            losses=["align", "sp"],
            weights=[1.0, 1.0],
            resume=True,
        )
    )
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="weights"):
        distill(_cfg(tmp_path, digits_teacher, losses=["align"], weights=[1.0, 2.0]))
    with pytest.raises(ValueError, match="nope"):
        distill(_cfg(tmp_path, digits_teacher, losses=["nope"]))


# --------------------------------------------------------------------------- student weights


def _pretrained_backbone(tmp_path, backbone: str = TINY_CNN["backbone"]):
    """Backbone weights as `hashkd pretrain` writes them (its own writer), and the tensors."""
    from hashkd.training.pretrain import PretrainConfig, save_backbone

    torch.manual_seed(7)
    model = build_model(ModelConfig(backbone=backbone, bits=32, img_size=16))
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "ssl.safetensors"
    save_backbone(model.backbone, PretrainConfig(out=str(path), backbone=backbone), extra={})
    return path, model.backbone.state_dict()


def test_student_weights_from_pretrain_load_every_tensor(tmp_path):
    path, state = _pretrained_backbone(tmp_path)
    torch.manual_seed(0)
    cfg = ModelConfig(bits=32, img_size=16, head="mlp", role="student", **TINY_CNN)
    student = build_model(cfg, weights=path, strict_weights=True)
    own = student.backbone.state_dict()
    assert set(own) == set(state)
    for key, value in state.items():
        assert torch.equal(own[key], value), key


def test_student_weights_mismatch_names_the_keys(tmp_path, digits_teacher, capsys):
    from safetensors.torch import save_file

    from hashkd.cli import main
    from hashkd.models.hash_model import ModelError

    _, state = _pretrained_backbone(tmp_path)
    broken = dict(state)
    dropped = sorted(broken)[0]
    del broken[dropped]
    broken["extra.weight"] = torch.zeros(2)
    reshaped = "fc.weight" if "fc.weight" in broken else sorted(k for k in broken if "conv" in k)[0]
    broken[reshaped] = torch.zeros(1, 1)
    path = tmp_path / "broken.safetensors"
    save_file({k: v.contiguous() for k, v in broken.items()}, str(path))
    cfg = ModelConfig(bits=32, img_size=16, head="mlp", role="student", **TINY_CNN)
    with pytest.raises(ModelError) as err:
        build_model(cfg, weights=path, strict_weights=True)
    text = str(err.value)
    assert dropped in text and "extra.weight" in text and reshaped in text and "\n" not in text
    build_model(cfg, weights=path)  # the lenient --backbone-weights path loads what fits

    # the CLI: one line naming the keys, non-zero exit, before any training
    code = main(
        [
            "distill",
            "--teacher",
            str(digits_teacher),
            "--backbone",
            TINY_CNN["backbone"],
            "--pretrain-weights",
            str(path),
            "--max-train",
            "100",
            "--no-progress",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err_lines) == 1 and dropped in err_lines[0]
    assert not (tmp_path / "s" / "checkpoint.pt").exists()

    # weights written for another backbone (pretrain's description says which)
    other, _ = _pretrained_backbone(tmp_path / "other", backbone="resnet14t")
    with pytest.raises(ModelError, match="resnet14t"):
        build_model(cfg, weights=other, strict_weights=True)


# --------------------------------------------------------------------------- FLOPs


def test_flops_of_a_tiny_conv_net_against_a_hand_count():
    from torch import nn

    from hashkd.models import count_flops, count_parameters

    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 8x8 out: 4*3*9 MACs per pixel * 64 = 6912
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False),  # 4x4 out: 4*9*16 = 576
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),  # 8 MACs
    )
    assert count_flops(net, 8) == 2 * (6912 + 576 + 8)
    assert count_parameters(net) == (4 * 3 * 9 + 4) + 4 * 9 + (4 * 2 + 2)
    net[0].requires_grad_(False)
    assert count_parameters(net, trainable_only=True) == 4 * 9 + 10


def test_flops_count_cpu_attention():
    from torch import nn

    from hashkd.models import count_flops

    class Attention(nn.Module):
        def forward(self, x):  # x: 1 x 3 x n x n images as 2 heads of n tokens x d=8
            q = x.reshape(1, 2, -1, 8)
            return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    # n = 3*4*4/(2*8) = 3 tokens per head: QK^T and AV, each 2*heads*n*n*d FLOPs
    assert count_flops(Attention(), 4) == 2 * (2 * 2 * 3 * 3 * 8)


def test_model_cost_of_an_artifact(tmp_path):
    from hashkd.models import artifact_cost

    torch.manual_seed(0)
    cfg = ModelConfig(bits=16, img_size=16, head="linear", role="student", **TINY_CNN)
    model = build_model(cfg)
    save_artifact(model, tmp_path / "m")
    cost = artifact_cost(tmp_path / "m")
    head = model.head
    assert cost["params"] == sum(p.numel() for p in model.parameters())
    assert cost["backbone_params"] == cost["params"] - head.weight.numel() - head.bias.numel()
    assert cost["img_size"] == 16
    # the linear head's share: 2 * features * bits FLOPs on top of the backbone's
    from hashkd.models import count_flops

    assert cost["flops"] == count_flops(model.backbone, 16) + 2 * head.in_features * 16
