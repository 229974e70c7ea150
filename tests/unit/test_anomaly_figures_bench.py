"""ops/bench/anomaly_figures.py speed: the JSON of the anomaly and OK/DEFECT families on 1600x256 frames."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from models.families.anomaly import example as anomaly_example
from models.families.okdefect import example as okdefect_example

ROOT = Path(__file__).resolve().parents[2]


def _speed(model: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "ops/bench/anomaly_figures.py"), "speed", "--checkpoint",
                           str(model), "--threads", "1", "--repeats", "1", "--out", str(out / "work"), "--json",
                           str(out / "speed.json")], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "speed.json").read_text())
    assert doc == json.loads(proc.stdout)
    return doc


def test_okdefect_speed_with_and_without_cam(tmp_path):
    doc = _speed(okdefect_example.tiny_model(tmp_path / "okd"), tmp_path)
    assert doc["frame"] == "1600x256" and doc["patches_per_frame"] == 25 * 4  # 64-px patches of 1600x256
    for rt in ("torch", "onnxruntime"):
        for what in ("without_cam", "with_cam_graph", "inspector_with_cam"):
            assert doc[f"okdefect_{what}_frames_per_s_{rt}"] > 0
        assert doc[f"frames_per_s_{rt}"] > 0


def test_anomaly_speed_reports_the_bank_and_the_search(tmp_path):
    doc = _speed(anomaly_example.tiny_model(tmp_path / "an"), tmp_path)
    assert doc["bank_size"] > 0 and doc["nn_ms_per_frame_torch"] > 0 and doc["patches_per_frame"] > 0
    assert not any(k.startswith("okdefect_") for k in doc)
