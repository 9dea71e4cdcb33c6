"""Name -> loss class registry, filled by the ``@register_loss("name")`` decorator.

Adding a loss never touches a central if/elif: write one module in ``hashkd/losses/``,
decorate the class, import the module in ``hashkd/losses/__init__.py``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from hashkd.losses.base import DistillLoss

_LOSSES: dict[str, type[DistillLoss]] = {}

L = TypeVar("L", bound=type[DistillLoss])


def register_loss(name: str) -> Callable[[L], L]:
    """Class decorator registering a :class:`DistillLoss` subclass under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"loss name {name!r} is not valid: expected a non-empty string")

    def decorator(cls: L) -> L:
        if not (isinstance(cls, type) and issubclass(cls, DistillLoss)):
            raise TypeError(f"@register_loss({name!r}) expects a DistillLoss subclass, got {cls!r}")
        if name in _LOSSES and _LOSSES[name] is not cls:
            raise ValueError(
                f"loss name {name!r} is already registered by {_LOSSES[name].__qualname__}"
            )
        _LOSSES[name] = cls
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def list_losses() -> list[str]:
    """Registered loss names, sorted."""
    return sorted(_LOSSES)


def get_loss_class(name: str) -> type[DistillLoss]:
    if name not in _LOSSES:
        raise ValueError(
            f"loss {name!r} is not registered: expected one of {', '.join(list_losses())}"
        )
    return _LOSSES[name]


def build_loss(name: str, **kwargs: Any) -> DistillLoss:
    """Build the loss registered as ``name`` with its constructor keyword arguments."""
    cls = get_loss_class(name)
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params) - {"self"})
        if unknown:
            allowed = sorted(k for k in params if k != "self")
            raise ValueError(
                f"loss {name!r} has no option {', '.join(map(repr, unknown))}: expected some of {', '.join(allowed)}"
            )
    return cls(**kwargs)


def resolve_weights(names: Sequence[str], weights: Sequence[float] | None = None) -> list[float]:
    """One weight per loss: ``weights`` when given, else each loss's ``default_weight``."""
    if weights is not None:
        if len(weights) != len(names):
            raise ValueError(
                f"{len(weights)} weights were given for {len(names)} losses: expected one weight per loss"
            )
        return [float(w) for w in weights]
    return [float(get_loss_class(name).default_weight) for name in names]


def weight_table(
    names: Sequence[str], weights: Sequence[float] | None = None
) -> list[dict[str, Any]]:
    """Each loss's weight and where it came from, for a run's log and metadata."""
    table = []
    for name, weight in zip(names, resolve_weights(names, weights), strict=True):
        cls = get_loss_class(name)
        source = "--loss-weights" if weights is not None else f"default: {cls.default_weight_note}"
        table.append({"loss": name, "weight": weight, "source": source})
    return table


def describe_losses() -> str:
    """``name (default weight w)`` for every registered loss, for help texts."""
    return ", ".join(f"{n} ({get_loss_class(n).default_weight:g})" for n in list_losses())
