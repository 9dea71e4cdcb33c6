"""Habits the repository enforces on itself (docs/ARCHITECTURE.md, "Rules that tests enforce").

* the one-way import rule between the three packages, checked on every import statement
  (including imports inside functions) by walking the syntax trees;
* no absolute path of a developer's machine in a committed file;
* every relative link in the Markdown docs names a file that exists;
* ``ruff check`` and ``ruff format --check`` are clean;
* every ``assert_allclose`` in the tests passes ``atol`` (its default is 0, so an expected 0
  would demand an exact zero that BLAS and CPU features do not give on every machine).
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package -> our packages it must never import
FORBIDDEN_IMPORTS = {
    "indexes": {"hashkd", "service"},
    "hashkd": {"service", "indexes"},
}
MACHINE_PATH = re.compile(r"(^|[^.\w])/(work|root|home)/[a-z]")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s#]+)(#[^)]*)?\)")


def committed_files() -> list[Path]:
    """Files under version control (every file of the tree when git is unavailable)."""
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        out = subprocess.run(
            [git, "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode()
        return [ROOT / name for name in out.split("\0") if name and (ROOT / name).is_file()]
    skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}
    return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.parts)]


def imported_top_level_names(path: Path) -> set[str]:
    """Top-level module names of every import in ``path`` (absolute imports only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN_IMPORTS))
def test_one_way_imports(package):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_top_level_names(path) & FORBIDDEN_IMPORTS[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(bad))}")
    assert not offenders, "import rule broken:\n" + "\n".join(offenders)


def test_import_walker_sees_lazy_and_dynamic_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "import os\n"
        "def f():\n    from service.app import create_app\n"
        "def g():\n    import importlib\n    importlib.import_module('indexes.cli')\n"
        "from . import sibling\n"
    )
    assert imported_top_level_names(src) == {"os", "service", "importlib", "indexes"}


def test_no_machine_paths_in_committed_files():
    offenders = []
    for path in committed_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATH.search(line) and path.name != Path(__file__).name:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not offenders, "absolute machine paths (use relative ones):\n" + "\n".join(offenders)


def test_machine_path_pattern():
    root = "/"  # built up so that this file does not itself name a machine path
    assert MACHINE_PATH.search(f"default {root}work/runs/x")
    assert MACHINE_PATH.search(f"{root}home/alice/data")
    assert not MACHINE_PATH.search("runs/work/x and ./work/y and http://host/work/z")


def test_markdown_links_name_files_that_exist():
    missing = []
    for doc in [p for p in committed_files() if p.suffix == ".md"]:
        for match in MARKDOWN_LINK.finditer(doc.read_text(encoding="utf-8")):
            target = match.group(1)
            if re.match(r"^[a-z]+:", target):  # http:, mailto:, ...
                continue
            if not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not missing, "links to files that do not exist:\n" + "\n".join(missing)


def test_docs_do_not_cite_files_outside_the_repository():
    pattern = re.compile(r"\.\./shared/(reference|seeds)|\bDESIGN\.md\b|\bbrcd\.md\b")
    offenders = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in committed_files()
        if p.suffix in {".py", ".md", ".sh", ".toml"} and p.name != Path(__file__).name
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, "citations of files that are not in the repository:\n" + "\n".join(
        offenders
    )


def _ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("ruff")
    if not found:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    return [found]


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff_is_clean(args):
    result = subprocess.run(_ruff() + args, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def allclose_calls_without_atol(source: str) -> list[int]:
    """Line numbers of ``assert_allclose(...)`` calls that pass no ``atol``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
        if name == "assert_allclose" and "atol" not in {k.arg for k in node.keywords}:
            lines.append(node.lineno)
    return lines


def test_float_comparisons_in_tests_have_an_absolute_tolerance():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted((ROOT / "tests").glob("*.py"))
        for line in allclose_calls_without_atol(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, "assert_allclose without atol:\n" + "\n".join(offenders)


def test_allclose_walker_sees_calls_without_atol():
    source = "np.testing.assert_allclose(a, b, rtol=1e-9)\nassert_allclose(a, b, atol=1e-12)\n"
    assert allclose_calls_without_atol(source) == [1]
