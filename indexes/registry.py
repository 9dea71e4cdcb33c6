"""Name -> backend class registry, filled by the ``@register_backend("name")`` decorator.

A spec string is ``NAME`` or ``NAME:ARG`` (``flat``, ``ivf:1024``, ``multihash:4x16``,
``milvus:/data/codes.db``). ``create_index`` looks ``NAME`` up here and hands the whole spec to
the class's ``from_spec``, which parses ``ARG`` itself; ``load_index`` looks up the ``kind``
written in the file header and calls the class's ``load``. Adding a backend never touches the
factory: decorate the class (a :class:`~indexes.base.BinaryIndex` subclass) and make sure its
module is imported -- the built-in ones are listed in ``BUILTIN_MODULES`` and imported on the
first lookup, so ``import indexes`` stays cheap (no FAISS, numba or pymilvus until needed).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import TypeVar

from indexes.base import BinaryIndex
from indexes.spec import IndexSpec

#: Modules whose import registers the built-in backends (imported on the first lookup).
BUILTIN_MODULES = ("indexes.faiss_index", "indexes.milvus_index")

_BACKENDS: dict[str, type[BinaryIndex]] = {}
_SYNTAX: dict[str, str] = {}
_builtins_loaded = False
_builtins_lock = threading.Lock()

B = TypeVar("B", bound=type[BinaryIndex])


def register_backend(name: str, *, syntax: str | None = None) -> Callable[[B], B]:
    """Class decorator registering a :class:`BinaryIndex` subclass under the spec ``name``.

    ``syntax`` shows the spec forms in error messages (default: ``name``). A class may be
    registered under several names (stack the decorator); its ``kind`` -- written in saved
    files and looked up by ``load_index`` -- must be one of them.
    """
    if not isinstance(name, str) or not name or name != name.strip().lower() or ":" in name:
        raise ValueError(
            f"backend name {name!r} is not valid: expected a non-empty lower-case word without ':'"
        )

    def decorator(cls: B) -> B:
        if not (isinstance(cls, type) and issubclass(cls, BinaryIndex)):
            raise TypeError(
                f"@register_backend({name!r}) expects a BinaryIndex subclass, got {cls!r}"
            )
        if name in _BACKENDS and _BACKENDS[name] is not cls:
            raise ValueError(
                f"index backend {name!r} is already registered by {_BACKENDS[name].__qualname__}"
            )
        _BACKENDS[name] = cls
        _SYNTAX[name] = syntax or name
        return cls

    return decorator


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    with _builtins_lock:
        if not _builtins_loaded:
            for module in BUILTIN_MODULES:
                importlib.import_module(module)
            _builtins_loaded = True


def backend_names() -> list[str]:
    """Registered backend names, sorted."""
    _load_builtins()
    return sorted(_BACKENDS)


def spec_forms() -> list[str]:
    """The spec form of every registered backend (``ivf[:NLIST]`` ...), in registration order."""
    _load_builtins()
    return [_SYNTAX[name] for name in _BACKENDS]


def backend_for_spec(spec: IndexSpec) -> type[BinaryIndex]:
    """The class registered under ``spec.name``; a ``ValueError`` listing them all otherwise."""
    _load_builtins()
    if spec.name not in _BACKENDS:
        raise ValueError(
            f"index spec {spec.text!r} is not valid: expected one of the registered backends "
            f"{', '.join(backend_names())} ({', '.join(spec_forms())})"
        )
    return _BACKENDS[spec.name]


def backend_for_kind(kind: str, backend: object) -> type[BinaryIndex] | None:
    """The class whose ``kind`` and ``backend`` are those of a saved file, or ``None``."""
    _load_builtins()
    cls = _BACKENDS.get(kind)
    if cls is None or cls.kind != kind or cls.backend != backend:
        return None
    return cls
