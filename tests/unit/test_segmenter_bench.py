"""ops/bench/segmenter_bench.py: per-runtime rows of a segmenter, int8 behind the parity gate, on a random model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_rows_per_runtime_with_the_int8_verdict_and_scope(tmp_path):
    out = tmp_path / "sb.json"
    proc = subprocess.run([sys.executable, str(ROOT / "ops/bench/segmenter_bench.py"), "--runtimes",
                           "onnxruntime,onnxruntime-int8,onnxruntime-int8-encoder", "--frames", "2", "--repeats", "1",
                           "--frame", "64x256", "--threads", "1", "--batch", "2", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["inspector"]
    assert set(rows) == {"onnxruntime", "onnxruntime-int8", "onnxruntime-int8-encoder"}
    for rt, row in rows.items():
        assert row["frames_per_s"] > 0 and row["ms_per_frame"]["network"] > 0, (rt, row)
    assert rows["onnxruntime-int8"]["int8_scope"] == "whole graph"
    assert rows["onnxruntime-int8-encoder"]["int8_scope"] == "/encoder/"
    for rt in ("onnxruntime-int8", "onnxruntime-int8-encoder"):
        row = rows[rt]
        assert row["served"] == row["parity"]["same"] and ("refused" in row) == (not row["served"])


def test_a_missing_folder_is_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "ops/bench/segmenter_bench.py"), "--eval-data",
                           str(tmp_path / "nowhere")], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "no such folder" in proc.stderr and "Traceback" not in proc.stderr
