"""Runtime `auto` (the worker's default) and the int8 runtime behind its parity check on detections.

`auto`: on CPU ONNX Runtime once it passed parity (OpenVINO only when ONNX Runtime cannot be used), torch on CUDA, torch with a warning when no ONNX runtime can be used. `onnxruntime-int8`:
static quantisation calibrated on the inputs the networks see, accepted only when golden frames give the
same detections as fp32, refused with a message that says what differed otherwise."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

import models.runtime.choice as choice
import models.runtime.runtimes as rt
from models.core.checkpoints import load_checkpoint, save_checkpoint
from models.data.synthetic import CLASS_NAMES
from models.families.severity.detector import build_detector
from models.families.severity.region_classifier import build_classifier
from models.loading import compare_detections, load_inspector
from models.runtime.runtimes import INT8, RuntimeParityError, int8_export_name


def test_auto_serves_onnx_runtime_on_cpu(severity_dir):
    insp = load_inspector(severity_dir, device="cpu", detector_arch="fast", runtime="auto")
    assert insp.runtime == "onnxruntime" and insp.runtime_choice == {"requested": "auto", "chosen": "onnxruntime",
                                                                     "errors": {}}


def test_auto_falls_back_to_torch_when_no_onnx_runtime_passes(severity_dir, monkeypatch, caplog):
    def refuse(*a, **k):
        raise RuntimeParityError("parity failed (forced by the test)")

    monkeypatch.setattr(rt, "_session", refuse)
    monkeypatch.setattr(rt, "_ov_compile", refuse)
    with caplog.at_level(logging.WARNING, logger="models.loading"):
        insp = load_inspector(severity_dir, device="cpu", detector_arch="fast", runtime="auto")
    assert insp.runtime == "torch" and insp.runtime_choice["chosen"] == "torch"
    assert "onnxruntime" in insp.runtime_choice["errors"]
    assert any("no ONNX runtime passed" in r.getMessage() for r in caplog.records)
    frames = [np.full((64, 96), 128, np.uint8)]
    assert insp.inspect(frames) == [[]]  # and it serves


def test_auto_tries_openvino_only_when_onnxruntime_fails(severity_dir, monkeypatch):
    tried: list[str] = []
    monkeypatch.setattr(rt, "openvino_available", lambda: True)
    monkeypatch.setattr(rt, "_session", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeParityError("ONNX Runtime parity failed (forced by the test)")))
    monkeypatch.setattr(rt, "_ov_compile", lambda path, threads: tried.append("openvino") or (_ for _ in ()).throw(
        RuntimeParityError("OpenVINO parity failed (forced by the test)")))
    insp = load_inspector(severity_dir, device="cpu", detector_arch="fast", runtime="auto")
    assert tried and insp.runtime == "torch"
    assert set(insp.runtime_choice["errors"]) == {"onnxruntime", "openvino"}


def test_auto_is_torch_on_cuda():
    insp = SimpleNamespace(device="cuda:0", runtime="torch", model_version="x")
    assert choice.use_auto(insp, None) == {"requested": "auto", "chosen": "torch", "why": "device cuda:0"}
    assert rt.check_runtime_device("auto", "cuda") == "cuda"
    with pytest.raises(ValueError, match="serves on CPU"):
        rt.check_runtime_device(INT8, "cuda")


def _tiny_severity(d: Path) -> Path:
    """A tiny detector and region classifier (random weights, a few thousand parameters), as checkpoints."""
    torch.manual_seed(3)
    det = build_detector("fast", width=8, stem=8)
    clf = build_classifier(len(CLASS_NAMES), width=4)
    with torch.no_grad():
        det.head.weight.mul_(60.0)
        det.head.bias.fill_(2.0)
        clf.head[-1].bias[0] = -4.0  # no region is called background: detections to compare
        clf.head[-1].bias[3] = 3.0  # and one class clearly ahead, as a trained classifier would be
    d.mkdir(parents=True, exist_ok=True)
    save_checkpoint(d / "detector_fast.pt", det.state_dict(), kind="detector", arch="fast",
                    arch_config={"width": 8, "stem": 8}, input_spec={"channels": 1}, class_names=list(CLASS_NAMES),
                    threshold=3.0)
    save_checkpoint(d / "classifier.pt", clf.state_dict(), kind="classifier", arch="cnn4",
                    arch_config={"n_classes": len(CLASS_NAMES), "width": 4}, input_spec={"channels": 2, "crop": 64},
                    class_names=list(CLASS_NAMES))
    return d


def _quantised_ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_int8_quantises_a_tiny_network_and_accepts_it_within_the_tolerance(tmp_path):
    d = _tiny_severity(tmp_path / "tiny")
    ref = load_inspector(d, device="cpu")
    insp = load_inspector(d, device="cpu", runtime=INT8, int8_min_iou=0.0, int8_conf_tol=1.0)
    assert insp.runtime == INT8
    rep = insp.int8_parity
    assert rep["same"] and rep["ref"] == rep["got"] and rep["calibration"].startswith("synthetic:")
    for name in ("detector_fast", "classifier"):
        info = load_checkpoint(d / f"{name}.pt").info
        p = d / int8_export_name(d / f"{name}.pt", info.content_hash)
        ops = _quantised_ops(p)
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops  # int8 weights and activations (QDQ)
    # the int8 detector follows the fp32 one, within the quantisation error of a tiny random net
    frames = choice.synthetic_frames(500, 2, (64, 96))
    a, b = ref.severity_maps(frames), insp.severity_maps(frames)
    assert max(float(np.abs(x - y).mean()) for x, y in zip(a, b)) < 0.5
    # loaded again: the int8 files are reused (same calibration), parity checked again
    again = load_inspector(d, device="cpu", runtime=INT8, int8_min_iou=0.0, int8_conf_tol=1.0)
    assert again.int8_parity["same"] and again.int8_parity["ref"] == rep["ref"]


def test_int8_is_refused_when_detections_differ(tmp_path):
    d = _tiny_severity(tmp_path / "tiny")
    with pytest.raises(RuntimeParityError, match=r"int8 parity failed .* refusing runtime onnxruntime-int8"):
        load_inspector(d, device="cpu", runtime=INT8, int8_min_iou=1.0, int8_conf_tol=0.0)


def test_compare_detections_names_what_differs():
    from models.core.types import BBox, Detection

    def det(x: int, cls: str = "pit", conf: float = 0.9, w: int = 10) -> Detection:
        return Detection(bbox=BBox(x, 0, x + w, 10), mask=np.ones((10, w), bool), defect_class=cls, confidence=conf,
                         severity_mean=5.0, severity_max=6.0, area_px=10 * w, class_scores=(1.0,))

    frames = [np.zeros((20, 60), np.uint8)]
    assert compare_detections([[det(0)]], [[det(0, conf=0.88)]], frames, 0.9, 0.05)["same"]
    r = compare_detections([[det(0)]], [[det(0, conf=0.7)]], frames, 0.9, 0.05)
    assert not r["same"] and "confidence" in r["problems"][0]
    r = compare_detections([[det(0)]], [[det(0, cls="crack")]], frames, 0.9, 0.05)
    assert not r["same"] and "crack" in r["problems"][0]
    r = compare_detections([[det(0)]], [[det(0, w=5)]], frames, 0.9, 0.05)
    assert not r["same"] and "IoU 0.500" in r["problems"][0]
    r = compare_detections([[det(0)]], [[det(0), det(30)]], frames, 0.9, 0.05)
    assert not r["same"] and "extra" in r["problems"][0]
    r = compare_detections([[det(0), det(30)]], [[det(0)]], frames, 0.9, 0.05)
    assert not r["same"] and "not found" in r["problems"][0]


def test_int8_scope_quantises_only_the_named_modules_and_a_new_scope_rebuilds(tmp_path):
    from models.families.segmenter.example import tiny_model

    d = tiny_model(tmp_path / "seg")
    net = load_inspector(d, device="cpu").networks()["segmenter"]
    cal = [net.golden] * 2
    whole = rt.ensure_int8_export(net._replace(int8_scope=None), cal, "t", tmp_path / "cache")
    whole_q = [n.name for n in onnx.load(str(whole)).graph.node if n.op_type == "QuantizeLinear"]
    assert any("/up." in n for n in whole_q)  # the whole graph: the decoder is quantised too
    enc = rt.ensure_int8_export(net._replace(int8_scope="/encoder/"), cal, "t", tmp_path / "cache")
    assert enc == whole  # the same file name, rebuilt: its record names the scope
    assert (enc.parent / (enc.name + ".refused")).exists()
    enc_q = [n.name for n in onnx.load(str(enc)).graph.node if n.op_type == "QuantizeLinear"]
    assert enc_q and all("/encoder/" in n or n.startswith("input") for n in enc_q)
    assert len(enc_q) < len(whole_q)
    meta = {p.key: p.value for p in onnx.load(str(enc)).metadata_props}
    assert any(v == "/encoder/" for k, v in meta.items() if k.endswith("int8_scope"))
    with pytest.raises(rt.CheckpointError, match="names no node"):
        rt.ensure_int8_export(net._replace(int8_scope="/no-such-module/"), cal, "t", tmp_path / "cache2")


def test_a_benchmark_can_measure_a_refused_int8_without_the_gate_raising(tmp_path):
    d = _tiny_severity(tmp_path / "tiny")
    insp = load_inspector(d, device="cpu")
    rep = choice.use_int8(insp, None, None, 1.0, 0.0, enforce=False)
    assert not rep["same"] and insp.runtime == INT8  # kept for measuring; load_inspector would have refused it
    assert insp.inspect(choice.synthetic_frames(500, 1, (64, 96))) is not None
