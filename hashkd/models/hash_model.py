"""A hashing network: any timm backbone (``num_classes=0``) followed by a hash head.

The head maps backbone features to K real-valued logits ``u``; ``p = sigmoid(u)`` and the
binary code is ``b = sign(p - 0.5)`` with a straight-through estimator (forward: sign,
backward: identity with respect to ``p``), as in CIBHash (Qiu et al., IJCAI 2021). The
stored code bit is 1 where ``u > 0`` (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from hashkd.codes import check_bits, pack_codes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_KINDS = ("linear", "mlp", "linear2")


class ModelError(ValueError):
    """A model cannot be built as asked (unknown backbone, bad weights file, ...)."""


@dataclass
class ModelConfig:
    """Everything needed to rebuild a hash model and feed it images (saved as config.json)."""

    backbone: str
    bits: int
    img_size: int = 32
    head: str = "linear"
    head_hidden: int = 1024
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    role: str = "teacher"
    freeze_backbone: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.head not in HEAD_KINDS:
            raise ModelError(
                f"head={self.head!r} is not valid: expected one of {', '.join(HEAD_KINDS)}"
            )
        if self.role not in ("teacher", "student"):
            raise ModelError(f"role={self.role!r} is not valid: expected 'teacher' or 'student'")
        if int(self.img_size) < 8:
            raise ModelError(f"img_size={self.img_size!r} is too small: expected at least 8 pixels")
        self.mean = tuple(float(x) for x in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(x) for x in self.std)  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def sign_ste(p: torch.Tensor, threshold: torch.Tensor | float = 0.5) -> torch.Tensor:
    """``sign(p - threshold)`` in the forward pass, identity w.r.t. ``p`` in the backward pass."""
    hard = torch.where(p > threshold, 1.0, -1.0).to(p.dtype)
    return p + (hard - p).detach()


def _timm_backbone(cfg: ModelConfig, pretrained: bool) -> nn.Module:
    if not timm.list_models(cfg.backbone) and cfg.backbone not in timm.list_models(pretrained=True):
        raise ModelError(
            f"backbone={cfg.backbone!r} is not a timm model: expected a name listed by timm.list_models()"
        )
    kwargs = dict(cfg.backbone_kwargs)
    kwargs.setdefault("num_classes", 0)
    try:
        # Transformers need the input size at construction; CNNs do not accept it.
        return timm.create_model(
            cfg.backbone, pretrained=pretrained, img_size=cfg.img_size, **kwargs
        )
    except TypeError:
        return timm.create_model(cfg.backbone, pretrained=pretrained, **kwargs)


def _key_list(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def check_exact_match(
    own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: str | Path
) -> None:
    """Raise :class:`ModelError` naming the keys where ``state`` and ``own`` differ.

    Keys missing from the file, keys the backbone does not have, and keys whose shapes
    differ are all named (the first few of each kind, with the count of the rest).
    """
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    problems = [
        f"missing {_key_list(missing)}" if missing else "",
        f"unexpected {_key_list(unexpected)}" if unexpected else "",
        f"shape mismatch {_key_list(shapes)}" if shapes else "",
    ]
    problems = [p for p in problems if p]
    if problems:
        raise ModelError(
            f"weights file {str(path)!r} does not match the backbone: {'; '.join(problems)}: "
            "expected weights written for this backbone and these backbone arguments"
        )


def load_backbone_weights(
    backbone: nn.Module, path: str | Path, strict: bool = False
) -> dict[str, list[str]]:
    """Load a local weights file into ``backbone`` (classifier weights are ignored).

    Accepts safetensors, or a PyTorch/timm checkpoint read with ``weights_only=True``
    (a bare state dict, or one under ``state_dict`` / ``model`` / ``backbone``).
    Returns the missing and unexpected keys; raises :class:`ModelError` when nothing matches,
    or, with ``strict``, when any key is missing, unexpected or of another shape
    (:func:`check_exact_match`).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling refusal is a user error here
            raise ModelError(
                f"weights file {str(path)!r} could not be read safely: {exc}"
            ) from None
        for key in ("state_dict", "model", "backbone"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
    if not isinstance(state, dict):
        raise ModelError(f"weights file {str(path)!r} does not hold a state dict")
    cleaned = {}
    for k, v in state.items():
        for prefix in ("module.", "backbone.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        cleaned[k] = v
    own = backbone.state_dict()
    if strict:
        check_exact_match(own, cleaned, path)
    usable = {k: v for k, v in cleaned.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ModelError(
            f"weights file {str(path)!r} has no tensor matching the backbone's parameters: expected weights for this architecture"
        )
    result = backbone.load_state_dict(usable, strict=False)
    return {"missing": list(result.missing_keys), "unexpected": sorted(set(cleaned) - set(usable))}


class HashModel(nn.Module):
    """timm backbone + hash head. ``forward`` returns the K real-valued logits."""

    def __init__(
        self,
        config: ModelConfig,
        pretrained: bool = False,
        weights: str | Path | None = None,
        strict_weights: bool = False,
    ):
        super().__init__()
        self.config = config
        self.backbone = _timm_backbone(config, pretrained)
        if weights is not None:
            self.weights_report = load_backbone_weights(
                self.backbone, weights, strict=strict_weights
            )
        dim = self.feature_dim
        if config.head == "linear":
            self.head: nn.Module = nn.Linear(dim, config.bits)
        elif (
            config.head == "linear2"
        ):  # two linear layers, no activation: foldable into one (export)
            self.head = nn.Sequential(
                nn.Linear(dim, config.head_hidden), nn.Linear(config.head_hidden, config.bits)
            )
        else:
            self.head = nn.Sequential(
                nn.Linear(dim, config.head_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(config.head_hidden, config.bits),
            )
        if config.freeze_backbone:
            self.freeze_backbone()

    @property
    def bits(self) -> int:
        return self.config.bits

    @property
    def feature_dim(self) -> int:
        # timm models with a pre-logits stage (MobileNetV3) output head_hidden_size features.
        return int(getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features)

    def freeze_backbone(self) -> None:
        self.config.freeze_backbone = True
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> HashModel:
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()  # a frozen backbone keeps its BatchNorm statistics and no dropout
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.freeze_backbone:
            with torch.no_grad():
                return self.backbone(x)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def hash_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(u, p, b)``: logits, bit probabilities and straight-through ±1 codes."""
        u = self(x)
        p = torch.sigmoid(u)
        return u, p, sign_ste(p)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 256) -> Any:
        """Packed uint8 codes (n x K/8) for a batch of normalised image tensors."""
        was_training = self.training
        self.eval()
        try:
            outs = [self(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)]
        finally:
            self.train(was_training)
        return pack_codes(torch.cat(outs) if outs else torch.empty(0, self.bits))


def build_model(
    config: ModelConfig,
    pretrained: bool = False,
    weights: str | Path | None = None,
    strict_weights: bool = False,
) -> HashModel:
    """Build a :class:`HashModel`; ``weights`` is a local backbone weights file.

    ``strict_weights``: every backbone tensor must come from the file, with the same names
    and shapes (e.g. the backbone written by ``hashkd pretrain``), else :class:`ModelError`.
    """
    if weights is not None:
        desc = Path(str(weights) + ".json")
        if desc.is_file():  # written by `hashkd pretrain`: the backbone it was trained as
            info = json.loads(desc.read_text())
            if info.get("backbone") and info["backbone"] != config.backbone:
                raise ModelError(
                    f"weights file {str(weights)!r} is for backbone {info['backbone']!r}, not {config.backbone!r}"
                )
            for k, v in info.get("backbone_kwargs", {}).items():
                if k in config.backbone_kwargs and config.backbone_kwargs[k] != v:
                    raise ModelError(
                        f"backbone argument {k}={config.backbone_kwargs[k]!r} does not match the weights file "
                        f"{str(weights)!r}, made with {k}={v!r}: expected the same value (or none)"
                    )
                config.backbone_kwargs.setdefault(k, v)
    return HashModel(config, pretrained=pretrained, weights=weights, strict_weights=strict_weights)
