"""What a benchmark ran on: the code version and the identity of every input file.

A results file that records only where its teacher and weights were cannot tell a re-run on
another file at the same path from a re-run on the same one. :func:`input_record` gives each
input its content identity (a teacher artifact: :func:`hashkd.encoding.artifact_digest` of its
tensors and the sha256 of its weights file; a plain weights file: its sha256), and
:func:`input_mismatch` names the inputs a stored record and a new one disagree on.
:func:`code_version` is the package version and, in a git checkout, the commit and whether
the tree had uncommitted changes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from hashkd.encoding import artifact_digest
from hashkd.models.artifact import WEIGHTS_NAME
from hashkd.runtime.backends import file_sha256


def code_version() -> dict[str, Any]:
    """``{"hashkd": version, "git_commit": sha or None, "git_dirty": bool or None}``."""
    import hashkd

    repo = Path(hashkd.__file__).resolve().parents[1]
    commit = dirty = None
    try:
        commit = _git(repo, "rev-parse", "HEAD")
        dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "hashkd": getattr(hashkd, "__version__", None),
        "git_commit": commit,
        "git_dirty": dirty,
    }


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30, check=True
    )
    return out.stdout.strip()


def teacher_record(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """A teacher artifact's path, model digest and the sha256 of its weights file."""
    path = Path(model_dir)
    return {
        "path": str(path),
        "model_digest": artifact_digest(path),
        "weights_sha256": file_sha256(path / WEIGHTS_NAME),
    }


def weights_record(path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """A weights file's path and sha256 (None for no file)."""
    if path is None:
        return None
    return {"path": str(path), "sha256": file_sha256(path)}


def input_record(
    teachers: dict[int, str], student_weights: str | os.PathLike[str] | None
) -> dict[str, Any]:
    """The identity of a benchmark's inputs: one teacher per code length, the student's weights."""
    return {
        "teachers": {str(bits): teacher_record(path) for bits, path in sorted(teachers.items())},
        "student_weights": weights_record(student_weights),
    }


def input_mismatch(stored: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """One ``"what: stored -> now"`` per input whose content differs. A teacher of a code length
    only one side has is not a mismatch (a results file may gain a length); a file whose path
    moved but whose content is the same is not one either."""
    if not stored:
        return []
    out = []
    for bits, rec in now["teachers"].items():
        before = (stored.get("teachers") or {}).get(bits)
        if before and before.get("model_digest") != rec["model_digest"]:
            out.append(
                f"{bits}-bit teacher: digest {before.get('model_digest', '?')[:12]} -> "
                f"{rec['model_digest'][:12]} ({rec['path']})"
            )
    before_w, now_w = stored.get("student_weights"), now.get("student_weights")
    if (before_w or {}).get("sha256") != (now_w or {}).get("sha256"):
        out.append(
            f"student weights: {(before_w or {}).get('sha256', 'none')[:12]} -> "
            f"{(now_w or {}).get('sha256', 'none')[:12]}"
        )
    return out
