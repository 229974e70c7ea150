"""A camera promoted to an anomaly model (fitted on good parts only) confirms `anomaly` defects on the stream.

PatchCore is fitted on the frames of defect-free simulated parts (the simulator's own generator, seeds
apart from the ones the simulator streams), its threshold chosen on other simulated frames. A worker on
fresh topics runs the packaged default; `models promote DIR --camera` switches one camera to the anomaly
checkpoint; the simulator then streams parts with and without defects on that camera. Every part carries
the anomaly model's version, good parts get no DefectEvent and most parts with a defect a confirmed `anomaly` one.
"""
from __future__ import annotations

import json
from pathlib import Path

from schemas.events import DefectEvent, PartInspected
from streams.sim.simulator import GroundTruthPart, SimulationConfig, simulate

from .kafka_read import read_records
from .test_camera_promotion import cli_env_of, wait_for_log

FRAME = (128, 256)
T0 = 1_790_100_000_000
PARTS = 12


def _frames_as_samples(seeds: range, defect_rate: float):
    from models.core.types import InspectionSample
    from models.data.synthetic import CLASS_NAMES, render_part_sequence

    out = []
    for seed in seeds:
        seq = render_part_sequence(seed, n_frames=3, frame_shape=FRAME, defect_rate=defect_rate)
        for i, img in enumerate(seq.frames):
            mask = seq.class_masks[i] if seq.class_masks else None
            out.append(InspectionSample(img, mask, (), tuple(CLASS_NAMES), source=f"part{seed}/{i}"))
    return out


def fit_on_good_parts(out: Path) -> Path:
    from models.families.anomaly.fit import AnomalyFitConfig, fit_anomaly_samples

    good = _frames_as_samples(range(910_000, 910_040), 0.0)  # 40 good parts, 120 frames
    val = _frames_as_samples(range(920_000, 920_030), 0.5)  # threshold: best F1 on these
    cfg = AnomalyFitConfig(bank_size=1024, threads=2)
    res = fit_anomaly_samples(cfg, out, good, val, {"data": "simulator parts 910000.. (good), 920000.. (val)"})
    return res.checkpoint.parent


def test_camera_promoted_to_an_anomaly_model(stream_worker_factory, stack, fresh_database, tmp_path, monkeypatch,
                                              capsys):
    from models.loading import model_identity
    from streams.cli import main

    model_dir = fit_on_good_parts(tmp_path / "anomaly")
    version, hashes, _ = model_identity(model_dir)
    assert set(hashes) == {"anomaly"}

    worker = stream_worker_factory()
    worker.start()
    s = worker.settings
    cam = "an-1"
    cli_env_of(worker, stack, fresh_database, monkeypatch).close()
    capsys.readouterr()
    assert main(["models", "promote", str(model_dir), "--camera", cam, "--note", "fitted on good parts"]) == 0
    assert json.loads(capsys.readouterr().out)["promoted"] == version
    wait_for_log(worker, f"model promotion b'*camera:{cam}'", timeout_s=60)

    gt_path = tmp_path / "gt.jsonl"
    cfg = SimulationConfig(cameras=1, parts=PARTS, frames_per_part=3, frame_shape=FRAME, time_scale=0,
                           progress=False, defect_rate=0.5, parts_per_minute=60, seed=11, camera_prefix="an",
                           start_time_ms=T0, ground_truth=gt_path)
    assert simulate(s, cfg).parts == PARTS
    truth = {g.part_id: g for g in map(GroundTruthPart.from_json, gt_path.read_text().splitlines())}
    defective = {pid for pid, g in truth.items() if g.defects}
    assert 0 < len(defective) < PARTS  # both kinds of part are in the stream

    bootstrap = s.kafka.bootstrap_servers
    parts = read_records(bootstrap, s.kafka.topics.parts, PartInspected.codec(),
                         lambda rows: len({r["part_id"] for r in rows}) >= PARTS, timeout_s=240.0)
    assert {p["part_id"] for p in parts} == set(truth), worker.log_tail()
    assert {p["model_version"] for p in parts} == {version}
    want = sum(p["defects_total"] for p in parts)
    defects = read_records(bootstrap, s.kafka.topics.defects, DefectEvent.codec(), lambda rs: len(rs) >= want,
                           timeout_s=60.0) if want else []
    assert len(defects) == want
    assert {d["defect_class"] for d in defects} <= {"anomaly"} and all(d["model_version"] == version for d in defects)
    flagged = {d["part_id"] for d in defects}
    print(f"anomaly on the stream: {len(flagged & defective)}/{len(defective)} defective parts confirmed, "
          f"{len(flagged - defective)}/{PARTS - len(defective)} good parts flagged")
    # Good parts: none, although the model fires on single frames of some of them (the tracker's job).
    # Defective parts: measured 4 of 6 here; the two missed are parts where the model sees the defect in one
    # frame only (a small inclusion; a mild imprint it misses in the middle frame), which tracking rightly
    # does not confirm.
    assert not flagged - defective, {"false": sorted(flagged - defective)}
    assert len(flagged & defective) >= 0.6 * len(defective), {"missed": sorted(defective - flagged)}
    assert "Traceback" not in worker.log_path.read_text(errors="replace"), worker.log_tail()
