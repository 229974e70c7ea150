"""What a new user meets first with their own images (issue 20): a set of 8 images trains, a classifier
on images without masks or labels is refused with one line, and `evaluate` reads the same `plain`
layout as `train` by default."""
from __future__ import annotations

import shutil

import pytest

from models.data.synthetic import write_plain_set
from streams.cli import main


@pytest.fixture
def eight(tmp_path):
    return write_plain_set(tmp_path / "eight", 8, (64, 64), seed=4100, defect_prob=0.7)


def _one_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    return lines[0]


def test_eight_images_train_for_ten_steps(eight, tmp_path, capsys):
    rc = main(["train", "segmenter", "--data", str(eight), "--format", "plain", "--out", str(tmp_path / "seg"),
               "--backbone", "none", "--steps", "10", "--batch", "4", "--threads", "1", "--quiet"])
    assert rc == 0 and "after 10 steps" in capsys.readouterr().out
    assert (tmp_path / "seg" / "segmenter.pt").is_file()


def test_eight_images_train_when_the_batch_is_larger_than_the_set(eight, tmp_path, capsys):
    # 6 training images, the classifier's batch of 64: one epoch is one step, never a zero-step schedule
    rc = main(["train", "classifier", "--data", str(eight), "--format", "plain", "--out", str(tmp_path / "cls"),
               "--backbone", "none", "--epochs", "1", "--threads", "1", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "cls" / "classifier.pt").is_file()


def test_a_classifier_on_images_without_masks_or_labels_is_refused(eight, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(eight / "images", bare / "images")
    shutil.copy(eight / "classes.txt", bare / "classes.txt")  # no masks/: every image reads as defect-free
    rc = main(["train", "classifier", "--data", str(bare), "--format", "plain", "--out", str(tmp_path / "c"),
               "--backbone", "none", "--steps", "2", "--threads", "1", "--quiet"])
    line = _one_error(capsys.readouterr().err)
    assert rc == 2 and "no training image has a defect" in line
    assert not (tmp_path / "c" / "classifier.pt").exists()


@pytest.mark.parametrize("data,expected", [("/data/line3/test", "plain"), ("synthetic:seed=1,n=2", "synthetic")])
def test_evaluate_defaults_to_the_plain_layout_like_train(data, expected, monkeypatch):
    from streams.commands import train

    seen = []
    monkeypatch.setattr(train, "run_evaluation_cli", lambda args: seen.append(args.format) or 0)
    assert main(["evaluate", "--data", data]) == 0 and seen == [expected]
    assert main(["evaluate", "--data", data, "--format", "dagm"]) == 0 and seen[-1] == "dagm"


def test_evaluate_help_states_the_default_layout(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "default: plain" in capsys.readouterr().out
