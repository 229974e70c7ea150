"""`models promote --camera`: one camera switches to a segmenter at its next part, the others keep the default.

A worker (subprocess, packaged severity checkpoints, CPU) runs on fresh topics; a tiny segmenter
is trained by `defectstream train segmenter` on a plain-format data set made here, promoted for
camera A only, and A's later parts come out with the segmenter's model version while camera B's
stay on the worker's default. `models list --format json` reads the promotion back from the
`cameras` topic, and the promotion is recorded in ClickHouse's `model_runs`.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from schemas.events import DefectEvent, PartInspected
from sinks.migrations import migrate
from sinks.sql import DriverExecutor
from streams.settings import ClickHouseSettings
from streams.sim.simulator import SimulationConfig, simulate

from .kafka_read import read_records

REPO = Path(__file__).resolve().parents[2]
FRAME = (128, 256)
T0 = 1_790_000_000_000  # simulated clock start (UTC ms)


def make_plain_dataset(root: Path, n: int = 8, size: int = 64) -> Path:
    """`images/<id>.png` (uint8 grey), `masks/<id>.png` (0 background, 1 defect), `classes.txt`."""
    rng = np.random.default_rng(5)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = rng.integers(60, 110, (size, size), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        x, y, w = int(rng.integers(4, size - 20)), int(rng.integers(4, size - 20)), int(rng.integers(8, 16))
        img[y:y + w, x:x + w] = 240
        mask[y:y + w, x:x + w] = 1
        cv2.imwrite(str(root / "images" / f"s{i:02d}.png"), img)
        cv2.imwrite(str(root / "masks" / f"s{i:02d}.png"), mask)
    (root / "classes.txt").write_text("defect\n")
    return root


def train_segmenter(data: Path, out: Path) -> Path:
    """`defectstream train segmenter` (1 epoch on 64×64 patches) → `out/segmenter.pt`."""
    help_text = subprocess.run([sys.executable, "-m", "streams.cli", "train", "--help"], capture_output=True,
                               text=True, cwd=REPO).stdout
    if "segmenter" not in help_text:
        pytest.skip("`defectstream train segmenter` is not available in this checkout")
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli", "train", "segmenter", "--data", str(data), "--format", "plain",
         "--out", str(out), "--epochs", "1", "--batch", "4", "--patch", "64", "--quiet"],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "segmenter.pt").is_file(), list(out.iterdir())
    return out / "segmenter.pt"


def simulate_parts(worker, tmp_path: Path, name: str, start_ms: int) -> None:
    cfg = SimulationConfig(cameras=2, parts=4, frames_per_part=3, frame_shape=FRAME, time_scale=0, progress=False,
                           defect_rate=1.0, parts_per_minute=60, seed=7, camera_prefix="pr", start_time_ms=start_ms,
                           ground_truth=tmp_path / f"{name}.jsonl")
    rep = simulate(worker.settings, cfg)
    assert rep.parts == 4 and sorted(rep.cameras) == ["pr-1", "pr-2"]


def wait_for_log(worker, text: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in worker.log_path.read_text(errors="replace"):
            return
        assert worker.alive(), worker.log_tail()
        time.sleep(0.3)
    pytest.fail(f"{text!r} not in the worker log after {timeout_s}s:\n{worker.log_tail()}", pytrace=False)


def cli_env_of(worker, stack, database: str, monkeypatch) -> DriverExecutor:
    """Point this process's CLI at the worker's topics and a migrated `database`; an executor on it (caller closes)."""
    for k, v in worker.env.items():
        if k.startswith("DEFECTSTREAM_"):
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("DEFECTSTREAM_CLICKHOUSE__HOST", stack.host)
    monkeypatch.setenv("DEFECTSTREAM_CLICKHOUSE__PORT", str(stack.clickhouse_port))
    monkeypatch.setenv("DEFECTSTREAM_CLICKHOUSE__DATABASE", database)
    ex = DriverExecutor.connect(ClickHouseSettings(host=stack.host, port=stack.clickhouse_port, database=database))
    migrate(ex)
    return ex


def test_camera_promotion_to_a_segmenter(stream_worker_factory, stack, fresh_database, tmp_path, monkeypatch, capsys):
    from models.loading import model_identity
    from streams.cli import main

    seg_path = train_segmenter(make_plain_dataset(tmp_path / "data"), tmp_path / "seg")
    seg_version, seg_hashes, _ = model_identity(seg_path.parent)
    default_version, _, _ = model_identity(None)
    assert seg_version != default_version and set(seg_hashes) == {"segmenter"}

    worker = stream_worker_factory()
    worker.start()
    s = worker.settings
    bootstrap = s.kafka.bootstrap_servers
    cam_a, cam_b = "pr-1", "pr-2"

    # before: both cameras on the worker's configured default
    simulate_parts(worker, tmp_path, "before", T0)

    def parts_until(n: int):
        return lambda rows: len({r["part_id"] for r in rows}) >= n

    before = read_records(bootstrap, s.kafka.topics.parts, PartInspected.codec(), parts_until(4), timeout_s=90.0)
    assert len({p["part_id"] for p in before}) == 4, worker.log_tail()
    assert {p["model_version"] for p in before} == {default_version}

    # promote the segmenter directory for camera A only, through the CLI, recorded in ClickHouse
    ex = cli_env_of(worker, stack, fresh_database, monkeypatch)
    try:
        capsys.readouterr()
        assert main(["models", "promote", str(seg_path.parent), "--camera", cam_a, "--note", "segmenter canary"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["promoted"] == seg_version and out["key"] == f"*camera:{cam_a}"
        rows = ex.query("SELECT run_id, model_version, kind, note FROM model_runs")
        assert [r[:3] for r in rows] == [("production", seg_version, "promotion")]
        assert json.loads(rows[0][3])["scope"] == f"*camera:{cam_a}"
    finally:
        ex.close()

    # `models list` reads it back from the cameras topic
    assert main(["models", "list", "--output", "json"]) == 0
    listing = json.loads(capsys.readouterr().out)["production"]
    assert listing["reachable"] is True, listing
    assert [(p["scope"], p["model_version"]) for p in listing["promotions"]] == [(f"*camera:{cam_a}", seg_version)]
    assert {c["camera_id"]: (c["rule"], c["model_version"]) for c in listing["cameras"]} == {
        cam_a: ("camera", seg_version)}

    # after the worker has read it, A's next parts run the segmenter and B's stay on the default
    wait_for_log(worker, f"model promotion b'*camera:{cam_a}'")
    simulate_parts(worker, tmp_path, "after", T0 + 3_600_000)
    parts = read_records(bootstrap, s.kafka.topics.parts, PartInspected.codec(), parts_until(8), timeout_s=180)
    after = [p for p in parts if p["first_frame_ts"] >= T0 + 3_600_000]
    assert len({p["part_id"] for p in after}) == 4, worker.log_tail()
    by_cam = {cam: {p["model_version"] for p in after if p["camera_id"] == cam} for cam in (cam_a, cam_b)}
    assert by_cam == {cam_a: {seg_version}, cam_b: {default_version}}, worker.log_tail()
    assert all(p["frames"] == 3 and p["closed_reason"] == "LAST_FRAME" for p in after), after
    # the segmenter's defects (class `defect`) carry its version; the tracker needs no class list
    want = sum(p["defects_total"] for p in parts)
    defects = read_records(bootstrap, s.kafka.topics.defects, DefectEvent.codec(), lambda rs: len(rs) >= want,
                           timeout_s=90.0)
    assert len(defects) == want
    version_of = {p["part_id"]: p["model_version"] for p in parts}
    assert all(d["model_version"] == version_of[d["part_id"]] for d in defects)
    assert {d["defect_class"] for d in defects if d["model_version"] == seg_version} <= {"defect"}
    assert "Traceback" not in worker.log_path.read_text(errors="replace"), worker.log_tail()
    assert worker.alive()
