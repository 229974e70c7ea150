"""ops/bench/gpu_bench.py runs end to end in its CPU smoke mode, for the severity detector and the segmenter (the GPU
figures are measured on a machine with one; CI has none)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("extra", [["--frames", "2", "--batches", "2", "--frame", "64x256"],
                                   ["--family", "segmenter", "--frames", "2", "--batches", "1,2", "--frame", "64x256"]],
                         ids=["severity", "segmenter"])
def test_the_cpu_smoke_mode_prints_every_figure(extra, tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "ops/bench/gpu_bench.py"), "--device", "cpu", *extra,
                           "--decode-threads", "1", "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["device"] == "cpu" and doc["rows"]
    keys = ("network_frames_per_s", "inspector_frames_per_s") if "segmenter" in extra else (
        "network_frames_per_s", "decode_frames_per_s", "pipeline_frames_per_s")
    for row in doc["rows"]:
        assert all(row[k] > 0 for k in keys), row
    if "segmenter" in extra:
        assert [r["batch"] for r in doc["rows"]] == [1, 2] and doc["benchmark"] == "gpu_segmenter"
