"""A parsed index spec string: ``NAME`` or ``NAME:ARG`` (``flat``, ``ivf:1024``, ``milvus:URI``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IndexSpec:
    """A parsed spec string: ``text`` (stripped), ``name`` (lower case) and ``arg``.

    ``arg`` is the text after the first ``:`` exactly as given (``None`` without a colon); a
    backend lower-cases it or not (a Milvus URI keeps its case).
    """

    text: str
    name: str
    arg: str | None

    @classmethod
    def parse(cls, spec: object) -> IndexSpec:
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(
                f"spec={spec!r} is not valid: expected a string such as 'flat' or 'ivf:1024'"
            )
        text = spec.strip()
        name, colon, arg = text.partition(":")
        return cls(text=text, name=name.strip().lower(), arg=arg if colon else None)

    def invalid(self, syntax: str) -> ValueError:
        """The error for a spec whose ``ARG`` its backend cannot parse."""
        return ValueError(f"index spec {self.text!r} is not valid: expected {syntax}")

    def int_arg(self, syntax: str) -> int | None:
        """``ARG`` as an integer (``None`` when absent or empty); else :meth:`invalid`."""
        if not self.arg:
            return None
        try:
            return int(self.arg)
        except ValueError:
            raise self.invalid(syntax) from None
