"""Packaging: what the code imports is declared, the NumPy floor is what the code needs, FAISS
comes from one of two extras that never meet, a LICENSE file with the declared license, and the
default Docker image is the lean server."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from hashkd.cli import main

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
OURS = {"hashkd", "indexes", "service", "tests"}


def _name(requirement: str) -> str:
    """``"faiss-cpu>=1.9; sys_platform == 'linux'"`` -> ``"faiss-cpu"`` (normalised)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(extra: str | None) -> set[str]:
    """Every distribution ``hashkd[extra]`` installs (core + the extra, following hashkd[...])."""
    names: set[str] = {_name(r) for r in PYPROJECT["dependencies"]}
    todo, seen = [extra] if extra else [], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for req in PYPROJECT["optional-dependencies"][current]:
            inner = re.match(r"hashkd\[(.*)\]", req)
            if inner:
                todo += [e.strip() for e in inner.group(1).split(",")]
            else:
                names.add(_name(req))
    return names


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> files importing it, over hashkd/, indexes/ and service/."""
    out: dict[str, set[str]] = {}
    for package in ("hashkd", "indexes", "service"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in OURS:
                        out.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return out


def test_every_imported_package_is_declared():
    declared = set().union(*(_closure(e) for e in PYPROJECT["optional-dependencies"]))
    modules = packages_distributions()
    missing = {}
    for module, files in sorted(_third_party_imports().items()):
        dists = {_name(d) for d in modules.get(module, [])}
        assert dists, f"{module} (imported by {sorted(files)[0]}) is not installed here"
        if not dists & declared:
            missing[module] = (sorted(dists), sorted(files)[:2])
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_numpy_floor_is_what_the_code_uses():
    floor = next(r for r in PYPROJECT["dependencies"] if _name(r) == "numpy")
    major = int(re.search(r">=\s*(\d+)", floor).group(1))
    uses_bitwise_count = any(
        "bitwise_count(" in p.read_text()
        for pkg in ("hashkd", "indexes", "service")
        for p in (ROOT / pkg).rglob("*.py")
    )
    if uses_bitwise_count:  # numpy.bitwise_count is new in NumPy 2.0
        assert major >= 2, floor


def test_faiss_comes_from_one_of_two_extras_that_never_meet():
    core = {_name(r) for r in PYPROJECT["dependencies"]}
    assert not {"faiss-cpu", "faiss-gpu"} & core  # else the gpu extra could not replace it
    assert "faiss-cpu" in _closure("cpu") and "faiss-gpu" not in _closure("cpu")
    assert "faiss-gpu" in _closure("gpu") and "faiss-cpu" not in _closure("gpu")
    for extra in PYPROJECT["optional-dependencies"]:
        assert not {"faiss-cpu", "faiss-gpu"} <= _closure(extra), extra
    for extra in ("dev", "all"):  # the documented installs have a FAISS
        assert "faiss-cpu" in _closure(extra), extra


def test_a_command_whose_package_is_missing_says_what_to_install(monkeypatch, capsys):
    import hashkd.cli

    class NoFaiss:
        name = "index"

        def load(self):
            raise ModuleNotFoundError("No module named 'faiss'", name="faiss")

    monkeypatch.setattr(hashkd.cli, "entry_points", lambda group: [NoFaiss()])
    assert main(["index", "build", "codes", "--index-spec", "flat", "--out", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs 'faiss'" in err[0] and "hashkd[cpu]" in err[0]


def test_license_file_is_the_declared_license():
    assert PYPROJECT["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_the_default_docker_image_is_the_lean_server():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG VARIANT=serve$", text, re.M)
    serve = re.search(r"^\s*serve\)(.*?);;", text, re.M | re.S).group(1)
    assert ".[serve,cpu]" in serve and "torch" not in serve.replace('"import torch"', "")
    assert re.search(r"^\s*train\)", text, re.M) and re.search(r"^\s*gpu\)", text, re.M)
