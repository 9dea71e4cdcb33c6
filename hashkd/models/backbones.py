"""ViT-family backbones registered with timm, so they are created by name like any other.

``vitc_*``: a Vision Transformer whose patch embedding is a small convolutional stem
(stride-2 3x3 convolutions, BatchNorm, ReLU, then a 1x1 projection) instead of one
``patch x patch`` convolution -- "Early Convolutions Help Transformers See Better"
(Xiao et al., NeurIPS 2021). On small images and little data a plain ViT trained from
scratch learns slowly (it has no locality prior); the convolutional stem keeps the
transformer body while giving it one, which matters for a teacher trained on a CPU.

:func:`small_image_kwargs` is the one small-image default of the trainers (``train-teacher``
and ``pretrain`` apply it in their library path): a plain ViT below 64 px gets 4 px patches.
"""

from __future__ import annotations

import math
import re
from typing import Any

from timm.layers import PatchEmbed
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn

#: Below this image size a plain ViT without an explicit ``patch_size`` gets :data:`SMALL_PATCH`.
SMALL_IMAGE = 64
SMALL_PATCH = 4
_HYBRID = re.compile(r"_r\d*_s\d+_")


def small_image_kwargs(backbone: str, img_size: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` plus ``patch_size=4`` for a plain ViT below 64 px, unless it names a patch size.

    16 px patches would leave a 32 px image 4 tokens. A plain ViT is a timm name starting with
    ``vit_`` or one of the conv-stem ``vitc_*`` here; timm's ResNet-stem hybrids
    (``vit_tiny_r_s16_p8_224``, ...) are left alone, since their ``patch_size`` applies to the
    stem's feature map, and so are the other families with "vit" in their name (``levit``,
    ``mobilevit``, ``flexivit``, ...), which keep their own patch embedding. Returns a new dict.
    """
    plain = backbone.startswith(("vit_", "vitc_")) and _HYBRID.search(backbone) is None
    if plain and "patch_size" not in kwargs and int(img_size) < SMALL_IMAGE:
        return {**kwargs, "patch_size": SMALL_PATCH}
    return dict(kwargs)


class ConvStemPatchEmbed(PatchEmbed):
    """timm's ``PatchEmbed`` with its projection replaced by a convolutional stem."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        patch = self.patch_size[0]
        if patch != self.patch_size[1] or patch < 2 or patch & (patch - 1):
            raise ValueError(
                f"patch_size={self.patch_size} is not valid for a conv stem: expected a square power of two"
            )
        embed_dim = self.proj.out_channels
        in_chans = self.proj.in_channels
        steps = int(math.log2(patch))
        layers: list[nn.Module] = []
        c = in_chans
        for i in range(steps):
            out = max(16, embed_dim // 2 ** (steps - i))
            layers += [
                nn.Conv2d(c, out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            c = out
        layers.append(nn.Conv2d(c, embed_dim, 1))
        self.proj = nn.Sequential(*layers)


def _vitc(variant: str, pretrained: bool, **kwargs: Any) -> VisionTransformer:
    if pretrained:
        raise ValueError(
            f"{variant} has no published pretrained weights: use --backbone-weights with a local file "
            "(e.g. from `hashkd pretrain`)"
        )
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only"):
        kwargs.pop(key, None)  # timm's factory arguments, not the constructor's
    kwargs.setdefault("img_size", 32)
    kwargs.setdefault("patch_size", 4)
    return VisionTransformer(embed_layer=ConvStemPatchEmbed, **kwargs)


@register_model
def vitc_tiny(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-Tiny body (192-d, 3 heads) with a conv stem; depth 6 by default for CPU budgets."""
    args = {"embed_dim": 192, "depth": 6, "num_heads": 3, **kwargs}
    return _vitc("vitc_tiny", pretrained, **args)


@register_model
def vitc_micro(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """A 96-d, 4-layer conv-stem ViT for tests, demos and very small machines."""
    args = {"embed_dim": 96, "depth": 4, "num_heads": 3, **kwargs}
    return _vitc("vitc_micro", pretrained, **args)
