"""The sequence vote (`models.families.track_vote`): crops, the network's batching, the tracker override,
offline scoring with a vote, and `train track-vote`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.core.types import BBox, Detection, has_sequence_vote
from models.families.severity import example as severity_example
from models.families.track_vote import example
from models.families.track_vote.model import TrackVoterNet, crop_box, track_crops
from models.loading import load_inspector
from streams.settings import TrackingSettings
from streams.sim import scoring
from streams.tracking.tracker import PartTracker, track_part_offline
from streams.tracking.types import FrameMeta

REPO = Path(__file__).resolve().parents[3]


def test_crops_are_the_grown_box_clipped_to_the_frame_in_frame_order():
    frame = np.zeros((50, 80), np.uint8)
    frame[20:30, 40:60] = 255
    c = crop_box(frame, (40, 20, 60, 30), 16)
    assert c.shape == (16, 16) and c.dtype == np.uint8
    assert c[8, 8] == 255 and c[0, 0] == 0  # the box in the middle, context around it
    assert crop_box(frame, (75, 45, 90, 60), 16).shape == (16, 16)  # clipped at the corner
    assert crop_box(frame, (200, 200, 210, 210), 16).shape == (16, 16)  # outside: the nearest pixel, no error
    frames = [np.full((40, 40), 10 * i, np.uint8) for i in range(4)]
    crops = track_crops(frames, {3: (5, 5, 20, 20), 1: (0, 0, 10, 10)}, 8)
    assert [int(x[0, 0]) for x in crops] == [10, 30]  # sorted by frame index


def test_batched_tracks_give_the_logits_of_each_track_alone():
    torch.manual_seed(0)
    net = TrackVoterNet(4, hidden=8).eval()
    x = torch.randn(6, 3, 32, 32)
    with torch.inference_mode():
        both = net.forward_batch(x, [2, 4])
        alone = torch.cat([net(x[:2]), net(x[2:])])
    torch.testing.assert_close(both, alone, atol=1e-5, rtol=1e-4)


def _det(x0: int, cls: str, conf: float, sev: float) -> Detection:
    mask = np.ones((10, 10), bool)
    return Detection(BBox(x0, 10, x0 + 10, 20), mask, cls, conf, sev, sev, 100, ())


def test_a_vote_replaces_the_class_but_not_the_confirmation():
    tracker = PartTracker(TrackingSettings())
    metas = [FrameMeta("c", "l", "p", i, 100 * i, 200, 100, i, i == 2, None) for i in range(3)]
    dets = [[_det(50, "imprint_mild", 0.9, 0.4)], [_det(50, "imprint_mild", 0.9, 0.4)],
            [_det(50, "imprint_severe", 0.6, 0.6)]]
    part, summaries = track_part_offline(tracker, metas, dets)
    assert summaries[0].confirmed and summaries[0].defect_class == "imprint_mild"
    voted = tracker.summarize(part, part.tracks[0], vote={"imprint_mild": 0.2, "imprint_severe": 0.8})
    assert voted.defect_class == "imprint_severe" and voted.confidence == pytest.approx(0.8)
    assert voted.confirmed == summaries[0].confirmed and voted.boxes == summaries[0].boxes
    assert voted.best_frame_index == 2  # the best box is one of the voted class
    assert tracker.summarize(part, part.tracks[0], vote=None) == summaries[0]


def test_offline_scoring_with_a_vote_classes_the_same_confirmed_tracks(tmp_path):
    insp = load_inspector(severity_example.tiny_model(tmp_path / "m"), device="cpu")
    assert not has_sequence_vote(insp)  # no track_vote.pt: the tracker keeps its own vote
    cfg = scoring.OfflineConfig(parts=4, seed=1000, frames_per_part=3, frame_shape=(96, 192), progress=False)
    run = scoring.run_offline(insp, cfg)
    calls: list[tuple[int, dict]] = []

    def always_scratch(pi, gt, boxes):
        calls.append((pi, dict(boxes)))
        return {"scratch": 1.0}

    r = scoring.score_offline(run, TrackingSettings(), vote=always_scratch)
    t, v = r["tracked"], r["tracked_sequence_vote"]
    assert calls and v["reported"] == t["reported"] == len(calls)  # every confirmed track, once
    assert v["false_alarms"] == t["false_alarms"] and v["defect_recall"] == t["defect_recall"]
    assert "tracked_sequence_vote" not in scoring.score_offline(run, TrackingSettings())
    voted = example.tiny_model(tmp_path / "v")
    vi = load_inspector(voted, device="cpu")
    assert has_sequence_vote(vi)
    sv = scoring.SequenceVote(vi, cfg.defect_rate)
    probs = sv(0, run.gts[0], {0: (5, 5, 40, 40), 2: (10, 5, 45, 40)})
    assert set(probs) == set(vi.vote_classes) and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)


def test_train_track_vote_refuses_data_and_writes_a_voted_model_beside_another(tmp_path):
    cli = [sys.executable, "-m", "streams.cli", "train", "track-vote"]
    bad = subprocess.run(cli + ["--data", str(tmp_path), "--out", str(tmp_path / "x")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "synthetic generator" in bad.stderr
    src = severity_example.tiny_model(tmp_path / "src")
    out = tmp_path / "voted"
    ok = subprocess.run(cli + ["--beside", str(src), "--out", str(out), "--parts", "6", "--val-parts", "2",
                               "--frames-per-part", "3", "--epochs", "1", "--size", "32", "--quiet"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "validation accuracy" in ok.stdout
    assert {p.name for p in src.glob("*.pt")} < {p.name for p in out.glob("*.pt")}
    meta = json.loads((out / "track_vote.json").read_text())
    assert meta["train_data"]["seeds"] == [200000, 200005] and meta["metrics"]["val_tracks"] >= 1
    insp = load_inspector(out, device="cpu")
    assert insp.model_version.startswith(load_inspector(src, device="cpu").model_version + "+track-vote-")


def test_score_offline_puts_several_models_in_one_table(tmp_path):
    sev = severity_example.tiny_model(tmp_path / "sev")
    voted = example.tiny_model(tmp_path / "voted")
    out = tmp_path / "score.json"
    r = subprocess.run([sys.executable, "-m", "streams.cli", "score", "--offline", "--parts", "3", "--frames-per-part",
                        "3", "--model", str(sev), "--model", str(voted), "--json-out", str(out),
                        "--cache", str(tmp_path / "det.npz")],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| family | model version | reporting")
    fams = [ln.split("|")[1].strip() for ln in lines[1:]]  # ("|---|" is not a "| " line)
    assert fams == ["severity", "severity", "track-vote+severity", "track-vote+severity", "track-vote+severity"]
    assert "tracked, sequence vote" in lines[-1]
    doc = json.loads(out.read_text())
    assert [m["family"] for m in doc["models"]] == ["severity", "track-vote+severity"]
    assert "tracked_sequence_vote" in doc["models"][1]["defaults"]
    assert (tmp_path / "det.npz.0").is_file() and (tmp_path / "det.npz.1").is_file()


def test_track_vote_trains_on_the_one_engine_and_resumes(tmp_path):
    from models.data.synthetic import CLASS_NAMES
    from models.families.track_vote.train import VoteTrainConfig, train_track_vote

    cfg = VoteTrainConfig(out=str(tmp_path), parts=6, val_parts=2, frames_per_part=3, frame_shape=(96, 192), size=32,
                          epochs=2, batch=4, threads=1, pretrained=False, progress=False)
    path, losses, fig = train_track_vote(cfg, list(CLASS_NAMES), log=lambda _m: None)
    meta = json.loads(path.with_suffix(".json").read_text())
    td = meta["train_data"]
    assert td["config"]["task"] == "track_vote" and td["choices"]["steps_run"] == len(losses) > 0
    assert td["seeds"] == [200000, 200005] and fig["tracks"] == meta["metrics"]["val_tracks"]
    cfg.resume = True  # complete: nothing retrained, the same losses and weights
    again, losses2, _ = train_track_vote(cfg, list(CLASS_NAMES), log=lambda _m: None)
    assert losses2 == losses and json.loads(again.with_suffix(".json").read_text())["model_version"] == meta["model_version"]
