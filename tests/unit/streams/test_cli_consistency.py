"""The command line: every command's --help with help and defaults for each option, one name per
concept, and a table of bad inputs that give exit 2 and one `error:` line, never a traceback (issue 20)."""
from __future__ import annotations

import argparse

import pytest

from streams import cli


def _all_parsers():
    parser = cli.build_parser()
    yield "defectstream", parser
    yield from cli._subparsers(parser)


def test_every_help_page_renders_and_every_option_has_help():
    missing = []
    for name, p in _all_parsers():
        p.format_help()
        for a in p._actions:
            if a.option_strings and a.help is None:
                missing.append(f"{name} {a.option_strings[0]}")
    assert not missing, missing


def test_help_shows_defaults():
    p = dict(_all_parsers())
    assert "(default: shift)" in p["report"].format_help()
    assert "(default: table)" in p["compare"].format_help()


OUTPUT_COMMANDS = ["report", "compare", "status", "config", "list"]  # `list`: models list


def test_the_output_format_has_one_name_and_format_is_the_data_layout(capsys):
    pages = dict(_all_parsers())
    for name in OUTPUT_COMMANDS:
        opts = pages[name]._option_string_actions
        assert opts["--output"].dest == "output" and "json" in opts["--output"].choices, name
        assert opts["--format"].help == argparse.SUPPRESS, name  # the old spelling: hidden, still accepted
    for name in ("segmenter", "boxes", "evaluate"):  # train <family> and evaluate
        assert pages[name]._option_string_actions["--format"].dest == "format"
        assert "plain" in pages[name]._option_string_actions["--format"].choices
    a = cli.build_parser().parse_args(["report", "--format", "csv"])
    assert a.output == "csv" and "--format is deprecated and will be removed; use --output" in capsys.readouterr().err
    assert cli.build_parser().parse_args(["compare", "--candidate", "x", "--output", "json"]).output == "json"
    with pytest.raises(SystemExit) as e:  # the old spelling still checks its choices
        cli.build_parser().parse_args(["report", "--format", "xml"])
    assert e.value.code == 2


def test_version_and_verbosity_anywhere(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("defectstream ")
    args = cli.build_parser().parse_args(["report", "-v", "--by", "hour", "-q"])
    assert args.verbose == 1 and args.quiet == 1


def test_one_name_per_concept_old_spellings_warn(capsys):
    p = cli.build_parser()
    a = p.parse_args(["replay", "--from", "2h", "--until", "now", "--model", "m", "--run-id", "r"])
    assert a.since == "2h" and "--from is deprecated" in capsys.readouterr().err
    a = p.parse_args(["compare", "--candidate", "x", "--camera", "a", "--camera", "b"])
    assert a.cameras == ["a", "b"]
    a = p.parse_args(["report", "--camera", "a", "--camera", "b"])
    assert a.camera == ["a", "b"]
    for name in ("replay", "compare", "report"):
        helptext = dict(_all_parsers())[name].format_help()
        assert "--since" in helptext and "--camera" in helptext



def test_a_model_directory_is_model_everywhere(capsys):
    """`--model DIR` in every command that takes one; evaluate's and explain's `--checkpoint` still works, warned."""
    pages = dict(_all_parsers())
    for name in ("evaluate", "explain", "replay", "score"):
        assert "--model" in pages[name]._option_string_actions, name
        assert "--checkpoint " not in pages[name].format_help().replace("\n", " "), name
    p = cli.build_parser()
    a = p.parse_args(["evaluate", "--data", "d", "--model", "runs/m"])
    assert a.checkpoint == "runs/m" and capsys.readouterr().err == ""
    a = p.parse_args(["evaluate", "--data", "d", "--checkpoint", "runs/old"])
    assert a.checkpoint == "runs/old" and "--checkpoint is deprecated" in capsys.readouterr().err
    a = p.parse_args(["explain", "x.png", "--checkpoint", "runs/a", "--out", "o"])
    assert a.checkpoint == "runs/a" and "use --model" in capsys.readouterr().err


BAD_INPUTS = [
    ["report", "--since", "yesterday"],
    ["report", "--until", "soon"],
    ["report", "--rules", "XX9"],
    ["report", "--chart", "/nonexistent-folder/chart.png"],
    ["report", "--since", "now", "--until", "7d"],
    ["compare", "--candidate", "r1", "--since", "yesterday"],
    ["compare", "--candidate", "r1", "--since", "now", "--until", "1d"],
    ["monitor", "--no-kafka", "--baseline-since", "yesterday"],
    ["replay", "--since", "yesterday", "--until", "now", "--model", "m", "--run-id", "r1"],
    ["replay", "--until", "now", "--model", "m", "--run-id", "r1"],
    ["score", "--ground-truth", "/nonexistent/gt.jsonl", "--from-file", "/nonexistent/defects.jsonl"],
    ["monitor", "--no-kafka", "--baseline-since", "now", "--baseline-until", "7d"],
    ["evaluate", "--data", "synthetic:seed=abc"],
    ["evaluate", "--data", "synthetic:seed=1,colour=red"],
    ["evaluate", "--data", "/nonexistent/data"],
    ["train", "segmenter", "--data", "/nonexistent/data", "--out", "/tmp/never-written"],
]


@pytest.mark.parametrize("argv", BAD_INPUTS, ids=lambda a: " ".join(a))
def test_bad_input_gives_one_error_line_and_exit_2(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1, err


BAD_SETTINGS = [
    ("DEFECTSTREAM_PLANT__SHIFTS", '[{"name": "x", "start": "25:00"}]', "DEFECTSTREAM_PLANT__SHIFTS"),
    ("DEFECTSTREAM_PLANT__SHIFTS", "early 06-14", "DEFECTSTREAM_PLANT__SHIFTS must be JSON"),
    ("DEFECTSTREAM_PLANT__SHIFTS", '[{"name": "a", "start": "06:00", "end": "14:00"}, '
                                   '{"name": "b", "start": "13:00", "end": "20:00"}]', "overlap"),
    ("DEFECTSTREAM_TRACKING__FAIL_CLASSES", "scratch,crack", "DEFECTSTREAM_TRACKING__FAIL_CLASSES must be JSON"),
    ("DEFECTSTREAM_PLANT__TIMEZONE", "Mars/Olympus", "unknown timezone"),
]


@pytest.mark.parametrize("var,value,needle", BAD_SETTINGS, ids=lambda v: str(v)[:30])
@pytest.mark.parametrize("argv", [["report"], ["config"]], ids=lambda a: a[0])
def test_a_bad_setting_gives_one_error_line_and_exit_2(var, value, needle, argv, monkeypatch, capsys):
    monkeypatch.setenv(var, value)
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and needle in errors[0], err


def test_the_shift_format_is_documented_where_it_is_set():
    helptext = dict(_all_parsers())["config"].format_help()
    assert "DEFECTSTREAM_PLANT__SHIFTS" in helptext and '"start": "HH:MM"' in helptext


def test_unknown_defectstream_variable_is_reported(monkeypatch, capsys):
    from streams.commands.config import unknown_variables

    monkeypatch.setenv("DEFECTSTREAM_MONITR__WINDOW_S", "60")
    monkeypatch.setenv("DEFECTSTREAM_MONITOR__WINDOW_S", "60")
    names = unknown_variables()
    assert "DEFECTSTREAM_MONITR__WINDOW_S" in names and "DEFECTSTREAM_MONITOR__WINDOW_S" not in names


def test_config_prints_settings_and_their_source(monkeypatch, capsys):
    monkeypatch.setenv("DEFECTSTREAM_PLANT__TIMEZONE", "UTC")
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("plant.timezone"))
    assert "UTC" in line and "env DEFECTSTREAM_PLANT__TIMEZONE" in line


def test_argparse_namespace_type():
    assert isinstance(cli.build_parser(), argparse.ArgumentParser)
