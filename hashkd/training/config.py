"""The settings of the trainers: one definition of each, without importing torch.

:class:`TeacherConfig` (``hashkd train-teacher``), :class:`DistillConfig` (``hashkd distill``)
and :class:`PretrainConfig` (``hashkd pretrain``) are the single source of their stage's
settings: the flags, their help and defaults, the ``--config`` YAML keys and the
``config.yaml`` every run writes all come from the field metadata here
(:mod:`hashkd.settings`). A field's public name (flag and config key) is the field name unless
``name=`` says otherwise; the vocabulary is shared by every command (docs/cli.md).

The training modules re-export their config (``from hashkd.training.teacher import
TeacherConfig`` keeps working); this module stays import-light so that building the ``hashkd``
parser does not load PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hashkd.settings import (
    non_negative_int,
    parse_loss_options,
    positive_float,
    positive_int,
    setting,
)
from hashkd.training import PRETRAIN_METHODS

__all__ = ["DistillConfig", "PretrainConfig", "TeacherConfig", "pretrain_weights_file"]

LR_SCHEDULES = ("constant", "cosine")
#: what ``DistillConfig.kd_inputs`` may name
KD_INPUTS = ("codes", "logits")
HEADS = ("linear", "mlp")

# ----------------------------------------------------------------------------- shared settings
# The same setting in several stages has one help text: these.

_DATA = (
    "images: a folder with one sub-folder per class, a DeepHash list file ('path.jpg 0 1 0 ...'; "
    "see --root), 'digits' (embedded scikit-learn digits, no download) or 'cifar10[:PATH]'"
)
_ROOT = "root folder the paths of a list file are relative to (default: the list file's folder)"
_SPLIT_PROTOCOL = (
    "named split protocol: digits, cifar10 (50k database), cifar10-cpu (10k database); "
    "default: digits / cifar10-cpu for those data sets, else 50% train, 10% val, 10% query per class"
)
_SEED = "seed of every random choice: splits, augmentation, init"
_BACKBONE_KWARGS = (
    "extra timm.create_model arguments as key=value,... or JSON, e.g. 'patch_size=4,depth=6' "
    "(a plain ViT below 64 px gets patch_size=4 unless given)"
)
_BACKBONE_WEIGHTS = (
    "local backbone weights, loading the tensors that fit: a `hashkd pretrain` run folder or "
    ".safetensors file, or a timm/PyTorch checkpoint (read with weights_only=True)"
)
_NUM_WORKERS = "DataLoader worker processes"
_DEVICE = "auto, cpu or cuda[:N] (default auto: a GPU when there is one)"
_RESUME = "continue the run in --out from its last checkpoint"
_PROGRESS = "show progress bars"
_OUT = "output folder: the model artifact, checkpoint, training log and config.yaml"
_MAX_TRAIN = "use at most this many training images (class-balanced; for quick runs)"
_BATCH = "images per batch and process"
_VAL_EVERY = "validate every N epochs"
_TAU = "contrastive temperature"
_BETA = "weight of CIBHash's Bernoulli KL term"


def _positive(name: str, value: Any) -> None:
    if int(value) <= 0:
        raise ValueError(
            f"{name.replace('_', '-')}={value} is not valid: expected a positive integer"
        )


def pretrain_weights_file(path: str | Path | None) -> str | None:
    """The weights file of a ``hashkd pretrain`` run folder (``backbone.safetensors`` in it), or
    ``path`` itself for a file; ``None`` stays ``None``."""
    if path is None:
        return None
    path = Path(path)
    return str(path / "backbone.safetensors" if path.is_dir() else path)


# ----------------------------------------------------------------------------- teacher


@dataclass
class TeacherConfig:
    """Settings of one teacher run (written to ``run.json`` and ``config.yaml``)."""

    out: str = field(metadata=setting(_OUT, metavar="DIR"))
    data: str = field(default="digits", metadata=setting(_DATA))
    root: str | None = field(default=None, metadata=setting(_ROOT))
    protocol: str | None = field(
        default=None, metadata=setting(_SPLIT_PROTOCOL, name="split_protocol")
    )
    backbone: str = field(
        default="vit_tiny_patch16_224", metadata=setting("timm model name of the backbone")
    )
    backbone_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata=setting(_BACKBONE_KWARGS)
    )
    bits: int = field(
        default=64, metadata=setting("code length K, a multiple of 8", parse=positive_int)
    )
    img_size: int = field(
        default=32, metadata=setting("input image size in pixels", parse=positive_int)
    )
    head: str = field(default="linear", metadata=setting("hash head", choices=HEADS))
    pretrained: bool = field(
        default=False,
        metadata=setting("ask timm for its pretrained weights (needs internet or a cache)"),
    )
    weights: str | None = field(
        default=None, metadata=setting(_BACKBONE_WEIGHTS, name="backbone_weights", metavar="PATH")
    )
    freeze_backbone: bool = field(
        default=False, metadata=setting("train only the hash head (a linear probe)")
    )
    epochs: int = field(default=10, metadata=setting("training epochs", parse=positive_int))
    batch_size: int = field(default=64, metadata=setting(_BATCH, parse=positive_int))
    lr: float = field(default=5e-4, metadata=setting("Adam learning rate", parse=positive_float))
    weight_decay: float = field(default=0.0, metadata=setting("Adam weight decay"))
    tau: float = field(default=0.3, metadata=setting(_TAU, parse=positive_float))
    beta: float = field(default=0.001, metadata=setting(_BETA))
    seed: int = field(default=0, metadata=setting(_SEED))
    val_every: int = field(default=1, metadata=setting(_VAL_EVERY, parse=positive_int))
    feature_cache_views: int = field(
        default=0,
        metadata=setting(
            "with --freeze-backbone: augment each training image E times once, cache the backbone "
            "features and train the head on pairs of them (0 = off)",
            name="feature_cache",
            metavar="E",
            parse=non_negative_int,
        ),
    )
    num_workers: int = field(default=0, metadata=setting(_NUM_WORKERS, parse=non_negative_int))
    device: str = field(default="auto", metadata=setting(_DEVICE))
    resume: bool = field(default=False, metadata=setting(_RESUME))
    max_train: int | None = field(default=None, metadata=setting(_MAX_TRAIN, parse=positive_int))
    progress: bool = field(default=True, metadata=setting(_PROGRESS))

    def model_config(self):
        """The teacher's :class:`ModelConfig`: ``backbone_kwargs`` with the small-image default.

        A plain ViT below 64 px without a ``patch_size`` gets 4 px patches
        (:func:`hashkd.models.backbones.small_image_kwargs`, the rule ``hashkd pretrain`` uses).
        """
        from hashkd.models import ModelConfig
        from hashkd.models.backbones import small_image_kwargs

        return ModelConfig(
            backbone=self.backbone,
            bits=self.bits,
            img_size=self.img_size,
            head=self.head,
            backbone_kwargs=small_image_kwargs(self.backbone, self.img_size, self.backbone_kwargs),
            role="teacher",
            freeze_backbone=self.freeze_backbone,
        )

    def validate(self) -> None:
        from hashkd.codes import check_bits

        check_bits(self.bits)
        for name in ("epochs", "batch_size", "val_every"):
            _positive(name, getattr(self, name))
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} is not valid: expected a positive learning rate")
        if self.feature_cache_views and not self.freeze_backbone:
            raise ValueError(
                "--feature-cache needs --freeze-backbone: features can only be cached for a frozen backbone"
            )
        if self.feature_cache_views == 1 or self.feature_cache_views < 0:
            raise ValueError(
                f"feature-cache={self.feature_cache_views} is not valid: expected 0 (off) or at least 2 views"
            )


# ----------------------------------------------------------------------------- distill


def _loss_list(text: str) -> list[str]:
    return (
        [] if text.strip().lower() == "none" else [s.strip() for s in text.split(",") if s.strip()]
    )


def _render_losses(value: list[str]) -> list[str]:
    return [",".join(value) if value else "none"]


def _render_loss_options(options: dict[str, dict[str, Any]]) -> list[str]:
    from hashkd.settings import plain, scalar_text

    out = []
    for loss, opts in options.items():
        for key, value in opts.items():
            if not plain(value) or "=" in key:
                raise ValueError(
                    f"loss option {loss}.{key}={value!r} cannot be written as --loss-opt: "
                    "expected a number, a boolean or a string without commas"
                )
            out.append(f"{loss}.{key}={scalar_text(value)}")
    return out


@dataclass
class DistillConfig:
    """Settings of one distillation run (written to ``run.json`` and ``config.yaml``)."""

    out: str = field(metadata=setting(_OUT, metavar="DIR"))
    teacher: str = field(
        metadata=setting("teacher model artifact (hashkd train-teacher)", metavar="MODEL_DIR")
    )
    student: str = field(
        default="mobilenetv3_small_100",
        metadata=setting(
            "timm model name of the student's backbone (e.g. efficientnet_b0, resnet18)",
            name="backbone",
        ),
    )
    student_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata=setting(_BACKBONE_KWARGS, name="backbone_kwargs")
    )
    losses: list[str] = field(
        default_factory=lambda: ["brcd"],
        metadata=setting(
            "KD losses, comma-separated; 'none' for CIBHash only",
            name="loss",
            parse=_loss_list,
            render=_render_losses,
        ),
    )
    weights: list[float] | None = field(
        default=None,
        metadata=setting(
            "one weight per loss, comma-separated (default: each loss's documented default "
            "weight, listed under --loss and written to the run's metadata)",
            name="loss_weights",
        ),
    )
    loss_options: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata=setting(
            "a loss option, repeatable: e.g. brcd.alpha=0.8, brcd.k=10, brcd.margin=0.3, "
            "brcd.mask_mode=own, brcd.use_bit_mask=false",
            name="loss_opt",
            metavar="LOSS.OPTION=VALUE",
            append=True,
            parse=parse_loss_options,
            render=_render_loss_options,
        ),
    )
    student_cib: bool = field(
        default=True,
        metadata=setting(
            "keep the student's own CIBHash term (--no-cib: KD losses only)", name="cib"
        ),
    )
    #: what the KD losses compare: "codes" (the teacher's ±1 codes and the student's
    #: straight-through codes) or "logits" (both networks' continuous pre-sign hash logits, the
    #: embeddings the relational baselines' papers distil; the student's CIBHash term still
    #: trains its codes)
    kd_inputs: str = field(
        default="codes",
        metadata=setting(
            "what the KD losses compare: both networks' ±1 codes (default) or their continuous "
            "pre-sign logits (the embeddings sp, rkd, crd... distil in their papers)",
            choices=KD_INPUTS,
        ),
    )
    bits: int | None = field(
        default=None,
        metadata=setting("student code length (default: the teacher's)", parse=positive_int),
    )
    img_size: int | None = field(
        default=None,
        metadata=setting("student input size (default: the teacher's)", parse=positive_int),
    )
    head: str = field(
        default="mlp", metadata=setting("student hash head (default mlp, as BRCD)", choices=HEADS)
    )
    pretrained: bool = field(
        default=False, metadata=setting("timm pretrained weights for the student backbone")
    )
    backbone_weights: str | None = field(
        default=None, metadata=setting(_BACKBONE_WEIGHTS, metavar="PATH")
    )
    student_weights: str | None = field(
        default=None,
        metadata=setting(
            "start the student's backbone from `hashkd pretrain` weights (a run folder or its "
            ".safetensors file); every tensor must match --backbone and --backbone-kwargs "
            "(unlike --backbone-weights, which loads what fits)",
            name="pretrain_weights",
            metavar="PATH",
        ),
    )
    freeze_backbone: bool = field(default=False, metadata=setting("train only the student's head"))
    data: str = field(default="digits", metadata=setting(_DATA))
    pool: str | None = field(
        default=None,
        metadata=setting(
            "distil on an unlabeled pool instead of the training split: 'all', a group of --data "
            "('train': CIFAR-10's 50,000 training images), or an image source ('digits', "
            "'cifar10[:PATH]', a folder of images, a list file) with an optional '@GROUP'; the "
            "validation images and queries are always left out (docs/distill.md)",
            metavar="SPEC",
        ),
    )
    root: str | None = field(default=None, metadata=setting(_ROOT))
    protocol: str | None = field(
        default=None, metadata=setting(_SPLIT_PROTOCOL, name="split_protocol")
    )
    seed: int = field(default=0, metadata=setting(_SEED))
    epochs: int = field(default=10, metadata=setting("training epochs", parse=positive_int))
    batch_size: int = field(default=64, metadata=setting(_BATCH, parse=positive_int))
    lr: float = field(default=1e-3, metadata=setting("Adam learning rate", parse=positive_float))
    lr_schedule: str = field(
        default="constant",
        metadata=setting(
            "learning rate per step: constant, or cosine decay to 0 at the last step",
            choices=LR_SCHEDULES,
        ),
    )
    warmup_epochs: float = field(
        default=0.0,
        metadata=setting("linear warm-up over the first N epochs (fractions allowed)", metavar="N"),
    )
    tau: float = field(default=0.3, metadata=setting(_TAU, parse=positive_float))
    beta: float = field(default=0.001, metadata=setting(_BETA))
    view_bank: int = field(
        default=0,
        metadata=setting(
            "augment each training image E times once and code the views with the teacher once "
            "(0 = augment online and run the teacher every step)",
            metavar="E",
            parse=non_negative_int,
        ),
    )
    teacher_cache: str | None = field(
        default=None,
        metadata=setting(
            "keep the teacher's logits of the training images and of the view bank in this "
            "folder, found by content (teacher tensors, pixels, transform, views, seed), and read "
            "them back in later runs and resumes instead of coding again (docs/distill.md)",
            metavar="DIR",
        ),
    )
    val_every: int = field(default=1, metadata=setting(_VAL_EVERY, parse=positive_int))
    num_workers: int = field(default=0, metadata=setting(_NUM_WORKERS, parse=non_negative_int))
    device: str = field(default="auto", metadata=setting(_DEVICE))
    resume: bool = field(default=False, metadata=setting(_RESUME))
    max_train: int | None = field(default=None, metadata=setting(_MAX_TRAIN, parse=positive_int))
    progress: bool = field(default=True, metadata=setting(_PROGRESS))

    def validate(self) -> None:
        from hashkd.codes import check_bits
        from hashkd.losses import get_loss_class

        if self.bits is not None:
            check_bits(self.bits)
        if not self.losses and not self.student_cib:
            raise ValueError(
                "no loss to train with: give --loss NAME or keep the student's CIBHash term"
            )
        if self.weights is not None and len(self.weights) != len(self.losses):
            raise ValueError(
                f"--loss-weights has {len(self.weights)} values for {len(self.losses)} losses: expected one weight per loss"
            )
        for name in self.losses:
            get_loss_class(name)  # unknown names raise with the list of known ones
        if self.kd_inputs not in KD_INPUTS:
            raise ValueError(
                f"kd-inputs={self.kd_inputs!r} is not valid: expected one of {', '.join(KD_INPUTS)}"
            )
        for name in ("epochs", "batch_size", "val_every"):
            _positive(name, getattr(self, name))
        if self.view_bank == 1 or self.view_bank < 0:
            raise ValueError(
                f"view-bank={self.view_bank} is not valid: expected 0 (off) or at least 2 views"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr-schedule={self.lr_schedule!r} is not valid: expected one of {', '.join(LR_SCHEDULES)}"
            )
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(
                f"warmup-epochs={self.warmup_epochs} is not valid: expected 0 to epochs={self.epochs}"
            )
        if self.student_weights and (self.backbone_weights or self.pretrained):
            raise ValueError(
                f"pretrain-weights={self.student_weights!r} cannot be combined with backbone-weights "
                "or pretrained: expected one source of initial weights"
            )


# ----------------------------------------------------------------------------- pretrain


@dataclass
class PretrainConfig:
    """Settings of one pretraining run (kept in the checkpoint, the weights' JSON and ``config.yaml``)."""

    out: str = field(
        metadata=setting(
            "output folder: backbone.safetensors (the backbone's state dict, read by "
            "`--backbone-weights OUT`), its description backbone.safetensors.json, checkpoint.pt "
            "(resume), train_log.jsonl and config.yaml",
            metavar="DIR",
        )
    )
    data: str = field(default="digits", metadata=setting(_DATA + " (labels are ignored)"))
    root: str | None = field(default=None, metadata=setting(_ROOT))
    group: str | None = field(
        default=None,
        metadata=setting(
            "named part of the data to use (default: 'train' when the data has one, e.g. "
            "CIFAR-10's 50,000 training images; else every image)"
        ),
    )
    backbone: str = field(
        default="vit_tiny_patch16_224", metadata=setting("timm model name of the backbone")
    )
    backbone_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata=setting(_BACKBONE_KWARGS)
    )
    img_size: int = field(
        default=32, metadata=setting("input image size in pixels", parse=positive_int)
    )
    method: str = field(
        default="simclr", metadata=setting("SSL method", choices=tuple(PRETRAIN_METHODS))
    )
    epochs: int = field(default=100, metadata=setting("epochs over the images", parse=positive_int))
    batch_size: int = field(default=256, metadata=setting(_BATCH, parse=positive_int))
    lr: float = field(
        default=1e-3, metadata=setting("peak AdamW learning rate", parse=positive_float)
    )
    weight_decay: float = field(default=0.05, metadata=setting("AdamW weight decay"))
    warmup_epochs: float = field(
        default=1.0,
        metadata=setting("linear warm-up over the first N epochs (fractions allowed)", metavar="N"),
    )
    tau: float = field(default=0.2, metadata=setting(_TAU, parse=positive_float))
    proj_dim: int = field(
        default=128, metadata=setting("projection output size", parse=positive_int)
    )
    proj_hidden: int = field(
        default=512, metadata=setting("projection hidden size", parse=positive_int)
    )
    momentum: float = field(default=0.99, metadata=setting("MoCo v3 initial EMA momentum"))
    max_images: int | None = field(
        default=None,
        metadata=setting(
            "use at most this many training images (a seeded random subset)",
            name="max_train",
            parse=positive_int,
        ),
    )
    seed: int = field(default=0, metadata=setting(_SEED))
    knn_eval: bool = field(
        default=False,
        metadata=setting(
            "after the last epoch (and every --knn-every epochs), kNN accuracy of the features: "
            "the protocol's labeled train split votes for its queries"
        ),
    )
    knn_every: int = field(
        default=0,
        metadata=setting(
            "kNN accuracy every N epochs (0: only at the end)", parse=non_negative_int
        ),
    )
    knn_k: int = field(
        default=20, metadata=setting("neighbours of the kNN classifier", parse=positive_int)
    )
    protocol: str | None = field(
        default=None,
        metadata=setting(
            "split protocol (default: the data's own): its validation images and queries, drawn "
            "with --seed, are never trained on; also the splits of --knn-eval",
            name="split_protocol",
        ),
    )
    checkpoint_every: int = field(
        default=0,
        metadata=setting(
            "also checkpoint (and write the weights) every N steps inside an epoch (0: per epoch)",
            metavar="N",
            parse=non_negative_int,
        ),
    )
    keep_every: int = field(
        default=0,
        metadata=setting(
            "also keep the weights of every N-th epoch as backbone-epochNNN.safetensors (+ .json), "
            "e.g. to plot hashing mAP against pretraining time (0: only the latest)",
            metavar="N",
            parse=non_negative_int,
        ),
    )
    time_limit_min: float | None = field(
        default=None,
        metadata=setting(
            "stop after this many minutes, writing the weights and a checkpoint that --resume "
            "continues",
            name="time_limit_minutes",
            metavar="MINUTES",
            parse=positive_float,
        ),
    )
    num_workers: int = field(default=0, metadata=setting(_NUM_WORKERS, parse=non_negative_int))
    device: str = field(default="auto", metadata=setting(_DEVICE))
    resume: bool = field(default=False, metadata=setting(_RESUME))
    progress: bool = field(default=True, metadata=setting(_PROGRESS))

    def validate(self) -> None:
        if self.method not in PRETRAIN_METHODS:
            raise ValueError(
                f"method={self.method!r} is not valid: expected one of {', '.join(PRETRAIN_METHODS)}"
            )
        for name in ("epochs", "batch_size", "proj_dim", "proj_hidden", "knn_k", "img_size"):
            _positive(name, getattr(self, name))
        if self.batch_size < 2:
            raise ValueError(
                f"batch-size={self.batch_size} is not valid: contrastive learning needs at least 2 images"
            )
        for name in ("knn_every", "checkpoint_every", "keep_every", "num_workers"):
            if int(getattr(self, name)) < 0:
                raise ValueError(
                    f"{name.replace('_', '-')}={getattr(self, name)} is not valid: expected 0 or more"
                )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr={self.lr} is not valid: expected a positive learning rate")
        if not (self.tau > 0 and math.isfinite(self.tau)):
            raise ValueError(f"tau={self.tau} is not valid: expected a positive temperature")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum={self.momentum} is not valid: expected a value in [0, 1)")
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError(
                f"weight-decay={self.weight_decay} / warmup-epochs={self.warmup_epochs} are not valid: "
                "expected values >= 0"
            )
        if self.max_images is not None and self.max_images < 2:
            raise ValueError(
                f"max-train={self.max_images} is not valid: expected at least 2 images"
            )
        if self.time_limit_min is not None and not self.time_limit_min > 0:
            raise ValueError(
                f"time-limit-minutes={self.time_limit_min} is not valid: expected a positive number"
            )
