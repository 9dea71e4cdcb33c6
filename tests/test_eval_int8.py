"""scripts/eval_int8.py judges the int8 graph on the tie-averaged mAP, not the position-broken one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("eval_int8", ROOT / "scripts" / "eval_int8.py")
eval_int8 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_int8)


def test_the_goal_is_judged_on_the_tie_averaged_map():
    # hand-worked: by position int8 gains 1.0 point (0.30 -> 0.31) but tie-averaged it loses
    # 0.6 (0.250 -> 0.244): more than the 0.5-point goal, so the goal is missed
    got = eval_int8.judge(
        {"map": 0.30, "map_tie_averaged": 0.250}, {"map": 0.31, "map_tie_averaged": 0.244}
    )
    assert got["map_change_points"] == pytest.approx(-0.6, abs=1e-9)
    assert got["map_change_points_position"] == pytest.approx(1.0, abs=1e-9)
    assert got["within_goal"] is False
    # and the other way round: a position-broken loss of 2 points, tie-averaged change 0.3
    got = eval_int8.judge(
        {"map": 0.30, "map_tie_averaged": 0.250}, {"map": 0.28, "map_tie_averaged": 0.253}
    )
    assert got["map_change_points"] == pytest.approx(0.3, abs=1e-9) and got["within_goal"]
