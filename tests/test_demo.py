"""The demo: its store decision, its failures, its place above the CLI, and the reduced run
end to end, twice in one work directory (training, export, encoding, index, a real REST service)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from hashkd.cli import main
from hashkd.demo import DemoError, StorePlan, _stage, plan_store

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}


# ----------------------------------------------------------------------------- store decision


class Lookups:
    """A store's codes by id, counting the look-ups the decision makes."""

    def __init__(self, stored: dict[int, str]) -> None:
        self.stored, self.asked = stored, []

    def __call__(self, item_id: int) -> str | None:
        self.asked.append(item_id)
        return self.stored.get(item_id)


DB = {3: "00ff", 7: "0f0f", 9: "ffff"}


def test_empty_store_gets_the_codes_added():
    store = Lookups({})
    plan = plan_store(0, DB, store)
    assert plan.action == "add" and "3 teacher-coded" in plan.reason
    assert store.asked == []


def test_store_with_exactly_the_database_is_reused():
    store = Lookups(dict(DB))
    assert plan_store(3, DB, store) == StorePlan(
        "reuse", "reusing the store: it holds exactly the 3 database items"
    )
    assert store.asked == [3, 7, 9]  # every id was checked


@pytest.mark.parametrize(
    ("count", "stored", "needle", "asked"),
    [
        (4, {**DB, 11: "0000"}, "holds 4 items, not the 3", []),  # an extra item
        (2, {3: "00ff", 7: "0f0f"}, "holds 2 items, not the 3", []),  # one missing
        (3, {3: "00ff", 8: "0f0f", 9: "ffff"}, "no item 7", [3, 7]),  # same count, other id
        (3, {3: "00ff", 7: "f0f0", 9: "ffff"}, "item 7 of the store has another code", [3, 7]),
    ],
)
def test_any_other_store_is_rebuilt(count, stored, needle, asked):
    store = Lookups(stored)
    plan = plan_store(count, DB, store)
    assert plan.action == "rebuild" and needle in plan.reason, plan
    assert store.asked == asked  # stops at the first difference


# ----------------------------------------------------------------------------- failures


def test_stage_failure_is_one_demo_error_naming_the_stage():
    request = httpx.Request("POST", "http://127.0.0.1:1/v1/items/codes")
    response = httpx.Response(409, json={"detail": "id 3 is already stored"}, request=request)
    with pytest.raises(DemoError) as info, _stage(7, "serve"):
        response.raise_for_status()
    text = str(info.value)
    assert text.startswith("stage 7/9 (serve) failed: POST http://127.0.0.1:1/v1/items/codes")
    assert "answered 409: id 3 is already stored" in text and "\n" not in text
    with pytest.raises(DemoError, match=r"stage 2/9 \(x\) failed: boom$"), _stage(2, "x"):
        raise RuntimeError("boom\nsecond line")
    with pytest.raises(KeyboardInterrupt), _stage(3, "y"):
        raise KeyboardInterrupt


def test_failing_demo_ends_with_one_line_and_nonzero_exit(tmp_path, capsys):
    missing = tmp_path / "no such folder"
    assert main(["demo", "--data", str(missing), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("hashkd: error: stage 1/9 (") and "no such folder" in err[0]


# ----------------------------------------------------------------------------- layering


def test_demo_pipeline_and_evaluation_do_not_import_the_cli():
    code = (
        "import sys, hashkd.demo, hashkd.pipeline, hashkd.recipes, hashkd.evaluation; "
        "print(sorted(m for m in sys.modules if m == 'hashkd.cli' or m.startswith('hashkd.cli.')"
        " or m.split('.')[0] in ('service', 'indexes')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        check=True,
    )
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- end to end


def _run_demo_cli(workdir: Path) -> subprocess.CompletedProcess:
    args = ["demo", "--quick", "--bits", "32", "--max-train", "100", "--workdir", str(workdir)]
    return subprocess.run(
        [sys.executable, "-m", "hashkd", *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=workdir.parent,
        timeout=1500,
        check=False,
    )


@pytest.mark.slow
def test_quick_demo_twice_in_one_workdir(tmp_path):
    """README's first command, run twice in one folder: the second run reuses and succeeds."""
    workdir = tmp_path / "demo"
    results = []
    for run in (1, 2):
        done = _run_demo_cli(workdir)
        assert done.returncode == 0, (run, done.stderr[-2000:])
        assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
        results.append((done.stdout, json.loads((workdir / "demo_results.json").read_text())))
    (first_out, first), (second_out, second) = results
    assert first["store"]["action"] == "add"
    assert second["store"]["action"] == "reuse"
    assert "reusing the store: it holds exactly the" in second_out
    for name in ("teacher", "student_nokd", "student_brcd", "student_brcd_onnx"):
        assert f"reusing {workdir / name}" in second_out, name
    for result in (first, second):
        # every image posted back to the (symmetric) service is found as itself at distance 0
        assert result["self_check"]["checked"] == 20
        assert result["self_check"]["found"] == result["self_check"]["checked"]
        # the asymmetric service answered every query with k=5 hits, nearest first
        assert len(result["hits"]) == 5
        for q in result["hits"]:
            distances = [h["distance"] for h in q["results"]]
            assert len(distances) == 5 and distances == sorted(distances)
        for row in result["table"].values():
            assert 0.0 <= row["map_tie_averaged"] <= 1.0 and 0.0 <= row["map"] <= 1.0
            assert row["code_health"]["database"]["num_codes"] == row["num_database"]
    # the same artifacts give the same table and the same answers
    assert second["table"] == first["table"]
    assert [q["results"] for q in second["hits"]] == [q["results"] for q in first["hits"]]
    header = next(line for line in second_out.splitlines() if line.startswith("| model |"))
    assert "(tie-avg)" in header and "(by position)" in header
    for name in ("codes/db_teacher", "store", "index.faiss"):
        assert (workdir / name).exists(), name
