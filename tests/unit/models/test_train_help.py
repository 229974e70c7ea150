"""`defectstream train --help` lists the commands the registry's families declare, and every
`train <command> --help` shows that family's own options with their real defaults (issues 20, 22)."""
from __future__ import annotations

import re

import pytest

import models.families  # noqa: F401  (registers every family)
from models.core.families import family_specs, train_commands, wrapper_specs
from models.families.anomaly.fit import AnomalyFitConfig
from models.families.okdefect.train import DEFAULT_PATCH
from models.families.severity.train import ClassifierTrainConfig, DetectorTrainConfig
from models.training.lite0 import LiteTrainConfig
from streams.cli import main


def _raw_help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _help(capsys, *argv: str) -> str:
    return " ".join(_raw_help(capsys, *argv).split())  # argparse wraps lines: compare on single spaces


def _options(raw: str) -> dict[str, str]:
    """flag -> its help text (on single spaces) from an argparse help page: each option starts a line "  -"."""
    out: dict[str, str] = {}
    body = raw.split("\noptions:\n", 1)[1]
    for block in re.split(r"\n(?=  -)", body):
        if not block.strip():
            continue
        invocation = re.split(r" {2,}", block.strip().splitlines()[0])[0]  # "-v, --verbose" / "--patch PATCH"
        flags = [w.rstrip(",") for w in invocation.split() if w.startswith("-")]
        text = " ".join(block.split())
        for f in flags:
            out[f] = text
    return out


def test_every_family_declares_a_train_command_and_train_help_lists_them(capsys):
    names = [c.name for c in train_commands()]
    assert len(names) == len(set(names))
    # every registered family (wrappers too) declares at least one command of its own
    assert all(s.train for s in family_specs() + wrapper_specs())
    page = _help(capsys, "train")
    for cmd in train_commands():
        assert f"{cmd.name} {cmd.help}" in page
    assert "threshold" in page
    # "synthetic" only where a family really defaults to it (the severity detector without --data)
    synthetic = [c.name for c in train_commands() if "synthetic" in c.help.lower()]
    assert synthetic == ["detector"] and page.lower().count("synthetic") == 1


def test_each_command_help_shows_its_own_options_and_true_defaults(capsys):
    raw = {c.name: _raw_help(capsys, "train", c.name) for c in train_commands()}
    opts = {name: _options(page) for name, page in raw.items()}
    pages = {name: " ".join(page.split()) for name, page in raw.items()}

    def _option(page: str, flag: str) -> str:
        name = next(n for n, p in pages.items() if p is page)
        return opts[name][flag]

    for cmd in train_commands():
        for opt in cmd.options:
            assert opt.flag in pages[cmd.name], (cmd.name, opt.flag)
            if not opt.switch:
                assert "(default: " in _option(pages[cmd.name], opt.flag), (cmd.name, opt.flag)
    lite, det, cls, ano = LiteTrainConfig(), DetectorTrainConfig(), ClassifierTrainConfig(), AnomalyFitConfig()
    seg = pages["segmenter"]
    assert f"(default: {lite.batch})" in _option(seg, "--batch")
    assert "chosen from the data" in _option(seg, "--steps") and "300..3000" in _option(seg, "--steps")
    assert "chosen from the data" in _option(seg, "--patch") and "median" in _option(seg, "--patch")
    assert f"(default: {lite.seg_loss})" in _option(seg, "--seg-loss")
    assert "(default: 1.0)" in _option(seg, "--scale")
    assert "--frames" not in seg and "--label-floor" not in seg and "--bank-size" not in seg
    d = pages["detector"]
    assert "patches that tile the training images" in _option(d, "--steps")  # the engine's budget, counted in patches
    assert "at most 128" in _option(d, "--patch") and "DURATION" in _option(d, "--time-budget")
    assert f"(default: {det.n_frames})" in _option(d, "--frames")
    assert f"(default: {det.label_floor})" in _option(d, "--label-floor")
    assert "6..15 times per run" in _option(d, "--val-every")
    assert "synthetic generator" in _option(d, "--data")  # the detector really defaults to synthetic frames
    assert "--seg-loss" not in d
    c = pages["classifier"]
    assert f"lite0: {lite.batch}; cnn4: {cls.batch}" in _option(c, "--batch")
    assert f"cnn4: {cls.epochs}" in _option(c, "--epochs")
    assert "chosen from the data" in _option(c, "--size")
    a = pages["anomaly"]
    assert f"(default: {ano.bank_size})" in _option(a, "--bank-size")
    assert f"(default: {ano.coreset_ratio})" in _option(a, "--coreset-ratio")
    assert "--steps" not in a and "--resume" not in a  # a fit, not a gradient training
    assert f"(default: {DEFAULT_PATCH})" in _option(pages["okdefect"], "--tile")
    assert "(default: none (whole images))" in _option(pages["gate"], "--tile")
    assert "chosen from the data" in _option(pages["gate"], "--size")
    # the defaults differ where the families differ
    assert _option(seg, "--steps") != _option(d, "--steps")
    assert _option(pages["okdefect"], "--tile") != _option(pages["gate"], "--tile")
    # only pages of commands that really fall back to synthetic data say "synthetic" outside --format
    for name, page in pages.items():
        text = page.replace(_option(page, "--format"), "").replace("--format {synthetic,", "--format {")
        assert ("synthetic" in text.lower()) == (name in ("detector", "classifier", "track-vote")), name
