"""ops/bench/gated_stream.py: the gate in front of a model on a mostly-good stream, end to end on a tiny gated model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from models.families.gate import example as gate_example
from models.families.segmenter import example as segmenter_example

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "ops/bench/gated_stream.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_it_counts_the_stream_and_the_gate_and_refuses_a_model_without_gate(tmp_path):
    model = gate_example.tiny_model(tmp_path / "gated")
    out = tmp_path / "g.json"
    proc = _run("--model", str(model), "--frames", "10", "--good-share", "0.8", "--frame", "64x256", "--repeats",
                "1", "--runtime", "torch", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["frames"] == 10 and doc["good_frames"] + doc["defective_frames"] == 10
    assert doc["defective_frames"] == 2  # one in five, each with a defect drawn
    assert doc["frames_per_s_alone"] > 0 and doc["frames_per_s_gated"] > 0
    # the tiny gate's threshold lets every frame pass: nothing skipped, the same detections
    assert doc["good_frames_skipped"] == doc["defective_frames_skipped"] == 0
    assert doc["detections_on_defective_frames_gated"] == doc["detections_on_defective_frames_alone"]
    plain = segmenter_example.tiny_model(tmp_path / "plain")
    bad = _run("--model", str(plain), "--frames", "2", "--frame", "64x64", "--runtime", "torch")
    assert bad.returncode == 2 and "no gate.pt" in bad.stderr
    missing = _run("--model", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
