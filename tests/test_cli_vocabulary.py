"""One flag vocabulary across every ``hashkd`` command (hashkd/cli/vocabulary.py, docs/cli.md).

The real parser is walked, every sub-command (also those the ``indexes`` and ``service`` packages
register): a flag must have one declared meaning, one kind (switch / integer / number / text /
repeatable) wherever it appears, and a duration flag carries its unit in its name. The old names
of the previous release are hidden aliases that warn and land where the new flag does.
"""

from __future__ import annotations

import argparse
import re

import pytest

from hashkd.cli import build_parser, main
from hashkd.cli.vocabulary import DEPRECATED, MEANINGS, DeprecatedAlias, sub_commands
from hashkd.settings import _ParseText, non_negative_int, positive_float, positive_int

COMMANDS = sub_commands(build_parser())
EXPECTED_COMMANDS = {
    "train-teacher",
    "distill",
    "pretrain",
    "encode",
    "codes merge",
    "evaluate",
    "export",
    "demo",
    "query",
    "index build",
    "index search",
    "serve",
}

_INT_TYPES = (int, positive_int, non_negative_int)
_FLOAT_TYPES = (float, positive_float)


def kind(action: argparse.Action) -> str:
    """switch, repeatable, integer, number or text: what the flag takes."""
    if action.nargs == 0:
        return "switch"
    if isinstance(action, argparse._AppendAction):
        return "repeatable"
    t = action.type
    if isinstance(t, _ParseText):
        t = t.f.kind
    if t in _INT_TYPES:
        return "integer"
    if t in _FLOAT_TYPES:
        return "number"
    return "text"


def flags() -> list[tuple[str, str, argparse.Action]]:
    """(command, flag name, action) of every visible option."""
    out = []
    for command, parser in COMMANDS.items():
        for action in parser._actions:
            if not action.option_strings or isinstance(action, DeprecatedAlias):
                continue
            if isinstance(action, argparse._HelpAction):
                continue
            out.append((command, action.option_strings[0], action))
    return out


def test_every_command_is_walked():
    """Also the commands of the entry points (index, serve); a new command is walked as well."""
    assert set(COMMANDS) >= EXPECTED_COMMANDS


def test_every_flag_has_one_declared_meaning_and_no_meaning_two_names():
    undeclared = sorted({(flag, command) for command, flag, _ in flags() if flag not in MEANINGS})
    assert not undeclared, f"flags without a meaning in hashkd/cli/vocabulary.py: {undeclared}"
    meanings = list(MEANINGS.values())
    doubles = {m for m in meanings if meanings.count(m) > 1}
    assert not doubles, f"one meaning under two names: {doubles}"
    unused = set(MEANINGS) - {flag for _, flag, _ in flags()}
    assert not unused, f"meanings of flags no command has: {unused}"


def test_a_flag_takes_the_same_kind_of_value_in_every_command():
    seen: dict[str, dict[str, list[str]]] = {}
    for command, flag, action in flags():
        seen.setdefault(flag, {}).setdefault(kind(action), []).append(command)
    clashes = {flag: kinds for flag, kinds in seen.items() if len(kinds) > 1}
    assert not clashes, f"a flag with two kinds of value: {clashes}"


def test_a_switch_is_spelled_the_same_way_everywhere():
    """``--progress/--no-progress`` (and every other on/off setting) is one spelling: a flag that
    is a BooleanOptionalAction somewhere is one everywhere."""
    styles: dict[str, set[str]] = {}
    for _, flag, action in flags():
        if action.nargs == 0:
            styles.setdefault(flag, set()).add(type(action).__name__)
    mixed = {flag: s for flag, s in styles.items() if len(s) > 1}
    assert not mixed, mixed
    for _, flag, _action in flags():
        assert not flag.startswith("--no-") or flag == "--no-tie-average", (
            f"{flag}: an on/off setting is --name/--no-name (BooleanOptionalAction)"
        )


_TIME_WORDS = re.compile(r"(^|-)(time|timeout|wait|budget|duration|delay|interval|limit)(-|$)")
_UNIT_WORDS = re.compile(r"\b(ms|milliseconds?|seconds?|minutes?|hours?|MIN|SEC)\b")


def test_every_duration_flag_names_its_unit():
    for command, flag, action in flags():
        name = flag[2:]
        text = (action.help or "") + " " + str(action.metavar or "")
        text = re.sub(r"--[\w-]+", "", text)  # other flags' names are not this one's unit
        if _TIME_WORDS.search(name) or _UNIT_WORDS.search(text):
            assert name.endswith(("-seconds", "-minutes")), (
                f"{command} {flag}: a duration flag says its unit in its name (-seconds or -minutes)"
            )
            unit = name.rsplit("-", 1)[1]
            others = {w.lower().rstrip("s") for w in _UNIT_WORDS.findall(text)} - {unit[:-1]}
            assert not others, f"{command} {flag}: help speaks of {others}, the name of {unit}"


def _value_for(action: argparse.Action) -> str:
    """A value the flag accepts."""
    if action.choices:
        return str(list(action.choices)[0])
    for text in ("3", "2.5", "1,0.5", "a=1", "x"):
        try:
            (action.type or str)(text)
        except (ValueError, argparse.ArgumentTypeError):
            continue
        return text
    raise AssertionError(f"no sample value for {action.option_strings}")


def _filler(parser: argparse.ArgumentParser, skip: argparse.Action) -> tuple[list, list]:
    """Values for the command's required options and positionals, so that one flag can be parsed."""
    options, positionals = [], []
    for action in parser._actions:
        if action is skip or isinstance(action, argparse._SubParsersAction):
            continue
        if not action.option_strings:
            if action.nargs in (None, "+", 1):
                positionals.append("x")
        elif action.required:
            options += [action.option_strings[0], "x"]
    for group in parser._mutually_exclusive_groups:
        first = group._group_actions[0]
        if group.required and skip not in group._group_actions:
            options += [first.option_strings[0], "x"]
    return options, positionals


ALIASES = [(command, alias) for command, aliases in DEPRECATED.items() for alias in aliases]


@pytest.mark.parametrize("command,alias", ALIASES, ids=[f"{c}:{a.old}" for c, a in ALIASES])
def test_an_old_name_warns_and_lands_where_the_new_one_does(command, alias, capsys):
    parser = COMMANDS[command]
    old = parser._option_string_actions[alias.old]
    new = parser._option_string_actions[alias.new]
    assert isinstance(old, DeprecatedAlias) and old.help == argparse.SUPPRESS  # hidden
    assert not re.search(re.escape(alias.old) + r"(?![\w-])", parser.format_help())
    options, positionals = _filler(parser, new)
    if new.nargs == 0:
        old_argv, new_argv = [alias.old], [alias.new]
    else:
        value = _value_for(new)
        new_value = value
        if alias.scale is not None:
            new_value = str(float(value) * alias.scale)
        old_argv, new_argv = [alias.old, value], [alias.new, new_value]
    got = parser.parse_args(old_argv + options + positionals)
    err = capsys.readouterr().err
    assert f"{alias.old} is deprecated" in err and alias.new in err
    want = parser.parse_args(new_argv + options + positionals)
    assert getattr(got, new.dest) == pytest.approx(getattr(want, new.dest), abs=1e-12)
    assert "deprecated" not in capsys.readouterr().err  # the new name does not warn


def test_every_alias_names_a_flag_of_its_command():
    for command, aliases in DEPRECATED.items():
        assert command in COMMANDS, command
        for alias in aliases:
            assert alias.new in MEANINGS, (command, alias)
            assert alias.new in COMMANDS[command]._option_string_actions, (command, alias)


def test_old_names_still_run_a_command_end_to_end(tmp_path, capsys):
    """`hashkd evaluate --topk` (now --k) reaches the command: the warning, then its own error."""
    missing = tmp_path / "none"
    code = main(["evaluate", "--query", str(missing), "--database", str(missing), "--topk", "5"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert err[0] == "hashkd: warning: --topk is deprecated and goes in the next release: use --k"
    assert err[1].startswith("hashkd: error: query code set directory") and str(missing) in err[1]


def test_docs_list_every_flag_and_every_old_name():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    rows = set(re.findall(r"^\| `(--[\w-]+)[`/]", text, re.M))
    assert rows >= set(MEANINGS), sorted(set(MEANINGS) - rows)
    for command, aliases in DEPRECATED.items():
        for alias in aliases:
            assert f"| {command} | `{alias.old}` | `{alias.new}`" in text, (command, alias)


@pytest.mark.parametrize(
    "flags",
    [["--max-wait-seconds", "0.004"], ["--max-wait-ms", "4"]],
    ids=["seconds", "old-ms"],
)
def test_serve_takes_the_wait_in_seconds_and_keeps_its_setting_in_ms(flags, tmp_path, capsys):
    from service.cli import settings_from_args

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    argv = ["serve", "--model", str(model), "--store", str(tmp_path / "s"), *flags]
    settings = settings_from_args(build_parser().parse_args(argv))
    assert settings.max_wait_ms == pytest.approx(4.0, abs=1e-9)
    capsys.readouterr()
