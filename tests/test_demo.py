"""The demo: its store decision, its failures, its place above the CLI, and the reduced run
end to end, twice in one work directory (training, export, encoding, index, a real REST service)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import yaml

from hashkd.cli import main
from hashkd.demo import (
    DemoConfig,
    DemoError,
    StorePlan,
    _stage,
    database_server_args,
    plan_store,
)
from hashkd.demo_budget import (
    OVERHEAD_S,
    Rates,
    StageCosts,
    Workload,
    choose_epochs,
    format_duration,
    stage_estimates,
    validations,
)

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}


# ----------------------------------------------------------------------------- store decision


def test_a_store_the_service_just_filled_from_the_codes_is_an_add():
    plan = plan_store(3, 3, {"added": 3, "already_stored": 0})
    assert plan.action == "add" and "loaded the 3 teacher-coded" in plan.reason
    plan = plan_store(3, 3, {"added": 1, "already_stored": 2})  # a load cut off earlier
    assert plan == StorePlan("add", "the service added the 1 database items the store was missing")


def test_a_store_that_already_held_exactly_the_database_is_reused():
    for loaded in ({"added": 0, "already_stored": 3}, {"added": 0, "skipped": True}):
        assert plan_store(3, 3, loaded) == StorePlan(
            "reuse", "reusing the store: it holds exactly the 3 database items"
        )


@pytest.mark.parametrize(
    ("stored", "loaded", "needle"),
    [
        (4, {"added": 0}, "holds 4 items, not the 3"),  # an extra item
        (2, {"added": 0}, "holds 2 items, not the 3"),  # one deleted since
        (5, {"added": 3}, "holds 5 items, not the 3"),  # other items before the load
    ],
)
def test_any_other_store_is_rebuilt(stored, loaded, needle):
    plan = plan_store(3, stored, loaded)
    assert plan.action == "rebuild" and needle in plan.reason, plan


def test_the_demo_serves_its_database_from_the_code_set():
    args = database_server_args(Path("s"), Path("t"), Path("store"), Path("codes/db"))
    assert args[args.index("--codes") + 1] == str(Path("codes/db"))
    assert (
        args[args.index("--model") + 1] == "s" and args[args.index("--database-model") + 1] == "t"
    )


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
    assert err[0].startswith("hashkd: error: time plan (") and "no such folder" in err[0]


def test_demo_strict_stops_at_an_unreadable_photo_with_one_line(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "photos"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (48, 40), (40 * i, 100, 200 if c == "a" else 0)).save(
                folder / c / f"{i}.jpg"
            )
    (folder / "b" / "broken.jpg").write_text("not a photo")
    argv = ["demo", "--data", str(folder), "--workdir", str(tmp_path / "w"), "--strict"]
    assert main([*argv, "--cache", "off"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.jpg" in err[0], err
    assert err[0].startswith("hashkd: error: time plan (")


# ----------------------------------------------------------------------------- time budget


def _costs(teacher_epoch_s: float = 6.0, student_epoch_s: float = 4.0) -> StageCosts:
    # 40 s that do not depend on the epochs
    fixed = {"teacher": 10.0, "students": 20.0, "encode": 5.0, "other": 5.0}
    return StageCosts(fixed, teacher_epoch_s, student_epoch_s)


def test_validation_passes_follow_the_demos_val_every():
    # val_every = max(1, epochs // 3); the last epoch always validates
    assert [validations(e) for e in (1, 2, 3, 4, 20, 30)] == [1, 2, 3, 4, 4, 3]


def test_stage_estimates_by_hand():
    rates = Rates(teacher_s=0.01, student_s=0.005, encode_s=0.001, load_s=2.0)
    work = Workload(train=100, val=20, query=30, database=200)
    costs = stage_estimates(rates, work, 30, 20)
    # teacher: a load + 3 validations of 120 images; 100 images x 10 ms per epoch
    assert costs.fixed["teacher"] == pytest.approx(2.0 + 3 * 0.12)
    assert costs.teacher_epoch_s == pytest.approx(1.0)
    # each student: a load + teacher codes of 100 images and their 6-view bank + 4 validations
    assert costs.fixed["students"] == pytest.approx(2 * (2.0 + 0.7 + 4 * 0.12))
    assert costs.student_epoch_s == pytest.approx(2 * 100 * 0.005)
    # encode: 3 loads + (30 + 200) images with 3 models
    assert costs.fixed["encode"] == pytest.approx(6.0 + 3 * 0.23)
    assert costs.total(30, 20) == pytest.approx(2.36 + 30 + 6.36 + 20 + 6.69 + OVERHEAD_S)
    # a reused teacher costs nothing; one student stage left
    reused = stage_estimates(rates, replace(work, teacher=False, students=1), 30, 20)
    assert reused.fixed["teacher"] == 0 and reused.teacher_epoch_s == 0
    assert reused.student_epoch_s == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("budget", "epochs", "reason", "estimate"),
    [
        (300.0, (30, 20), "defaults", 300.0),  # 40 + 30 x 6 + 20 x 4 = 300: fits exactly
        (1e6, (30, 20), "defaults", 300.0),  # never more than the defaults
        (170.0, (15, 10), "budget", 170.0),  # (170 - 40) / 260 = 1/2 of each
        (100.0, (6, 4), "budget", 92.0),  # 60 / 260 = 0.23: 6.9 -> 6, 4.6 -> 4
    ],
)
def test_epochs_are_chosen_to_fit_the_budget(budget, epochs, reason, estimate):
    choice = choose_epochs(_costs(), budget, (30, 20))
    assert (choice.teacher_epochs, choice.student_epochs) == epochs
    assert choice.reason == reason and choice.warning is None
    assert choice.estimate_s == pytest.approx(estimate) and choice.estimate_s <= budget


@pytest.mark.parametrize("budget", [45.0, 30.0])
def test_at_least_one_epoch_with_a_warning_when_even_that_is_over_budget(budget):
    choice = choose_epochs(_costs(), budget, (30, 20))
    assert (choice.teacher_epochs, choice.student_epochs) == (1, 1)
    assert choice.estimate_s == pytest.approx(50.0)  # 40 + 6 + 4
    assert choice.warning and "over the budget" in choice.warning


def test_explicit_epochs_override_the_budget():
    both = choose_epochs(_costs(), 10.0, (30, 20), explicit=(5, 5))
    assert (both.teacher_epochs, both.student_epochs, both.reason) == (5, 5, "explicit")
    assert both.estimate_s == pytest.approx(90.0) and "the given epochs" in both.warning
    # the teacher's 10 epochs are kept (100 s with the fixed part); the students share the rest
    one = choose_epochs(_costs(), 140.0, (30, 20), explicit=(10, None))
    assert (one.teacher_epochs, one.student_epochs, one.reason) == (10, 10, "budget")
    assert choose_epochs(_costs(), 1e6, (30, 20), explicit=(40, None)).teacher_epochs == 40
    with pytest.raises(ValueError, match="budget"):
        choose_epochs(_costs(), 0.0, (30, 20))


def test_demo_epochs_default_to_the_budget_and_quick_caps_them():
    assert DemoConfig(workdir="w").epochs() == (30, 20)
    assert DemoConfig(workdir="w", teacher_epochs=7).epochs() == (7, 20)
    assert DemoConfig(workdir="w", quick=True).epochs() == (2, 2)
    assert DemoConfig(workdir="w", quick=True, student_epochs=5).epochs() == (2, 2)
    with pytest.raises(ValueError, match="--budget-minutes 0"):
        DemoConfig(workdir="w", budget_minutes=0)
    assert format_duration(75) == "1 min 15 s" and format_duration(42.4) == "42 s"


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
    # the time plan: a measured estimate up front, the epochs it chose, estimate vs actual
    assert "epochs: teacher 2, students 2 (the defaults fit the budget" in first_out
    assert "): estimate " in first_out and "time: estimated " in first_out
    assert first["time"]["epochs_chosen_by"] == "defaults"
    assert first["time"]["estimate_s"]["teacher"] > 0 and first["time"]["actual_s"]["teacher"] > 0
    assert "every trained artifact is reused: no epochs to choose" in second_out
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
    # the settings it ran with, which `hashkd demo --config` reads back
    written = yaml.safe_load((workdir / "demo.yaml").read_text())
    assert written["quick"] is True and written["bits"] == 32 and written["max_train"] == 100
    assert written["workdir"] == str(workdir) and written["data"] == "digits"


def test_demo_settings_file_reads_back_as_the_same_options_and_flags_win(tmp_path, capsys):
    from hashkd.cli import build_parser
    from hashkd.cli.demo import SETTINGS_NAME
    from hashkd.settings import parse_with_config, parser_settings, write_parser_settings

    parser = build_parser()
    argv = ["--bits", "32", "--quick", "--no-progress", "--seed", "3", "--budget-minutes", "2.5",
            "--workdir", str(tmp_path / "w"), "--cache", "off"]  # fmt: skip
    args = parser.parse_args(["demo", *argv])
    own = args.settings_parser
    path = write_parser_settings(tmp_path / SETTINGS_NAME, own, args, "demo")
    written = yaml.safe_load(path.read_text())
    assert written["bits"] == 32 and written["quick"] is True and written["progress"] is False
    assert written["seed"] == 3 and written["budget_minutes"] == 2.5 and written["port"] is None
    assert "cache" not in written and "config" not in written  # how files are read: not a setting
    again = parse_with_config(parser, ["--config", str(path)], own, ("demo",))
    assert parser_settings(own, again) == parser_settings(own, args)
    over = parse_with_config(
        parser, ["--config", str(path), "--progress", "--bits", "16"], own, ("demo",)
    )
    assert over.progress is True and over.bits == 16 and over.seed == 3 and over.quick is True
    # a bad file stops the demo before any stage, in one sentence naming the key
    path.write_text("bits: 32\nepochs: 3\n")
    assert main(["demo", "--config", str(path), "--workdir", str(tmp_path / "w2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "setting 'epochs' is not known" in err[0]
    assert not (tmp_path / "w2").exists()
