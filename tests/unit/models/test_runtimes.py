"""Serving runtimes: every family exports to ONNX and gives the same detections in ONNX Runtime as in
PyTorch on golden frames; exports are named by the checkpoint's content hash, rebuilt when stale,
fall back to a cache directory, and a tampered export is refused."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.core.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from models.core.types import Detection
from models.data.synthetic import render_sample
from models.families.image_classifier.model import build_image_classifier
from models.families.segmenter.model import LiteUNet
from models.loading import load_inspector
from models.runtime.runtimes import PARITY_ATOL, RuntimeParityError, check_runtime_device, export_name
from streams.cli import main as cli

CONF_TOL = 1e-3  # largest confidence difference between runtimes on one detection
MIN_IOU = 0.99  # smallest mask IoU of a detection and its counterpart in the other runtime


def _full_mask(d: Detection, shape: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[d.bbox.y0:d.bbox.y1, d.bbox.x0:d.bbox.x1] = d.mask
    return m


def assert_same_detections(a: list[list[Detection]], b: list[list[Detection]], frames: list[np.ndarray]) -> int:
    """Same regions (mask IoU >= MIN_IOU), same classes, confidences within CONF_TOL; returns the count."""
    assert len(a) == len(b)
    n = 0
    for da, db, f in zip(a, b, frames):
        assert len(da) == len(db), (da, db)
        shape = f.shape[:2]
        free = list(db)
        for d in da:
            ma = _full_mask(d, shape)
            ious = [(ma & _full_mask(e, shape)).sum() / max((ma | _full_mask(e, shape)).sum(), 1) for e in free]
            k = int(np.argmax(ious))
            e = free.pop(k)
            assert ious[k] >= MIN_IOU, (d.bbox, e.bbox, ious[k])
            assert d.defect_class == e.defect_class
            assert abs(d.confidence - e.confidence) <= CONF_TOL
            assert np.allclose(d.class_scores, e.class_scores, atol=CONF_TOL)
            n += 1
    return n


def _detector_and_classifier(severity_dir: Path, d: Path) -> Path:
    """`d`, made here, holding only the packaged fast detector and the classifier."""
    d.mkdir()
    for name in ("detector_fast.pt", "classifier.pt"):
        shutil.copy(severity_dir / name, d / name)
    return d


def _lite_checkpoints(d: Path, gate: bool) -> Path:
    """A random-init segmenter (2 classes) and optionally a gate and nothing trained: parity does not
    need good weights. The U-Net's head is scaled so that its probabilities are confident regions."""
    torch.manual_seed(0)
    seg = LiteUNet(2, pretrained=False)
    with torch.no_grad():
        seg.head.weight.mul_(40.0)
    save_checkpoint(d / "segmenter.pt", seg.state_dict(), kind="segmenter", arch="lite0-unet",
                    arch_config={"n_classes": 2, "decoder": [128, 64, 48, 32]},
                    input_spec={"channels": 3, "scale": 1.0, "pad_multiple": 32}, class_names=["blob", "bar"])
    if gate:
        g = build_image_classifier(1)
        save_checkpoint(d / "gate.pt", g.state_dict(), kind="gate", arch="lite0", arch_config={"n_outputs": 1},
                        input_spec={"channels": 3, "size": 64}, class_names=["blob", "bar"], threshold=1e-6)
    return d


def _frames(n: int, shape: tuple[int, int], seed: int = 500) -> list[np.ndarray]:
    return [render_sample(seed + i, shape, defect_prob=1.0).image for i in range(n)]


@pytest.mark.parametrize("arch", ["fast", "paper"])
def test_severity_detections_match_between_runtimes(severity_dir, arch):
    ref = load_inspector(severity_dir, device="cpu", detector_arch=arch)
    ort = load_inspector(severity_dir, device="auto", detector_arch=arch, runtime="onnxruntime")
    assert ort.runtime == "onnxruntime" and ref.runtime == "torch" and ort.device == "cpu"
    assert ort.model_version == ref.model_version  # same weights, same version
    det = load_checkpoint(severity_dir / f"detector_{arch}.pt").info
    cls = load_checkpoint(severity_dir / "classifier.pt").info
    assert (severity_dir / export_name(severity_dir / f"detector_{arch}.pt", det.content_hash)).is_file()
    assert (severity_dir / export_name(severity_dir / "classifier.pt", cls.content_hash)).is_file()
    frames = _frames(3, (128, 320)) + [np.ascontiguousarray(np.dstack([_frames(1, (100, 150), 77)[0]] * 3))]
    greys = [f if f.ndim == 2 else f[:, :, 0] for f in frames]
    sa, sb = ref.severity_maps(greys, flip_tta=False), ort.severity_maps(greys, flip_tta=False)
    assert max(float(np.abs(x - y).max()) for x, y in zip(sa, sb)) <= PARITY_ATOL
    n = assert_same_detections(ref.inspect(frames), ort.inspect(frames), frames)
    assert n >= 3  # the golden frames hold defects the model finds: the comparison is not vacuous


def test_segmenter_behind_gate_matches_between_runtimes(tmp_path):
    d = _lite_checkpoints(tmp_path / "seg", gate=True)
    ref = load_inspector(d, device="cpu")
    ort = load_inspector(d, device="cpu", runtime="onnxruntime")
    assert ort.family == "gate+segmenter" and ort.runtime == ort.inner.runtime == "onnxruntime"
    assert sorted(p.name.split(".")[0] for p in d.glob("*.onnx")) == ["gate", "segmenter"]
    frames = _frames(2, (64, 96)) + [np.full((50, 77, 3), 120, np.uint8)]
    pa, pb = ref.inner.probabilities(frames), ort.inner.probabilities(frames)
    assert max(float(np.abs(x - y).max()) for x, y in zip(pa, pb)) <= PARITY_ATOL
    np.testing.assert_allclose(ref.gate_scores(frames), ort.gate_scores(frames), atol=PARITY_ATOL)
    (da, sa), (db, sb) = ref.inspect_scored(frames), ort.inspect_scored(frames)
    np.testing.assert_allclose(sa, sb, atol=CONF_TOL)
    assert assert_same_detections(da, db, frames) >= 1


def test_image_classifier_matches_between_runtimes(tmp_path):
    torch.manual_seed(1)
    m = build_image_classifier(3)
    with torch.no_grad():
        m.classifier.weight.mul_(20.0)  # spread the random logits so the frames get different classes
    save_checkpoint(tmp_path / "classifier.pt", m.state_dict(), kind="classifier", arch="lite0",
                    arch_config={"n_outputs": 3, "has_good": True}, input_spec={"channels": 3, "size": 64},
                    class_names=["crazing", "pitted"])
    ref = load_inspector(tmp_path, device="cpu")
    ort = load_inspector(tmp_path, device="cpu", runtime="onnxruntime")
    assert ort.family == "classifier" and ort.runtime == "onnxruntime"
    frames = _frames(4, (80, 80)) + [np.full((64, 64), 30, np.uint8)]
    (da, sa), (db, sb) = ref.inspect_scored(frames), ort.inspect_scored(frames)
    np.testing.assert_allclose(sa, sb, atol=CONF_TOL)
    assert_same_detections(da, db, frames)


def test_export_is_rebuilt_when_stale_and_old_exports_go(tmp_path, severity_dir):
    d = _detector_and_classifier(severity_dir, tmp_path / "m")
    load_inspector(d, device="cpu", runtime="onnxruntime")
    info = load_checkpoint(d / "detector_fast.pt").info
    first = d / export_name(d / "detector_fast.pt", info.content_hash)
    assert first.is_file()
    # an unreadable export under the current name (e.g. a copy cut short) is rebuilt, not used
    first.write_bytes(b"not an onnx file")
    load_inspector(d, device="cpu", runtime="onnxruntime")
    assert first.stat().st_size > 1000
    # a retrained detector (other weights -> other content hash): a new export, the old one removed
    ck = load_checkpoint(d / "detector_fast.pt")
    sd = {k: (v * 1.01 if v.is_floating_point() else v) for k, v in ck.state_dict.items()}
    new = save_checkpoint(d / "detector_fast.pt", sd, kind="detector", arch=info.arch, arch_config=info.arch_config,
                          input_spec=info.input_spec, class_names=info.class_names, threshold=info.threshold)
    assert new.content_hash != info.content_hash
    load_inspector(d, device="cpu", runtime="onnxruntime")
    assert (d / export_name(d / "detector_fast.pt", new.content_hash)).is_file()
    assert not first.exists()


def test_tampered_export_is_refused(tmp_path, severity_dir, caplog):
    """Weights edited in place (name and metadata kept): the SHA-256 in the export record no longer
    matches, so the file is refused (never loaded), set aside, and re-exported from the checkpoint."""
    import onnx
    from onnx import numpy_helper

    from models.runtime.runtimes import record_path

    d = _detector_and_classifier(severity_dir, tmp_path / "m")
    load_inspector(d, device="cpu", runtime="onnxruntime")
    info = load_checkpoint(d / "detector_fast.pt").info
    path = d / export_name(d / "detector_fast.pt", info.content_hash)
    assert json.loads(record_path(path).read_text())["content_hash"] == info.content_hash
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(init).copy()
    w.flat[: w.size // 2] *= 1.5  # the file keeps its name and metadata; only its weights changed
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    tampered = model.SerializeToString()
    path.write_bytes(tampered)
    with caplog.at_level(logging.WARNING, logger="models.runtime.runtimes"):
        ort = load_inspector(d, device="cpu", runtime="onnxruntime")
    assert any("refusing ONNX export" in r.getMessage() and path.name in r.getMessage() and "SHA-256" in r.getMessage()
               for r in caplog.records)
    assert path.with_name(path.name + ".refused").read_bytes() == tampered  # kept aside for inspection, never loaded
    assert path.read_bytes() != tampered
    frames = _frames(3, (128, 320))
    ref = load_inspector(d, device="cpu")
    assert ort.model_version == ref.model_version
    assert assert_same_detections(ref.inspect(frames), ort.inspect(frames), frames) >= 3


def _golden_of(path: Path) -> np.ndarray | None:
    import base64
    import io

    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    text = meta.get("defectstream.golden")
    return None if text is None else np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


def zero_output_for_width(path: Path, width: int, golden: np.ndarray) -> bytes:
    """Edit the ONNX file at `path` so that its output is zero whenever the input is `width` px wide,
    and put `golden` (another width) where an export used to carry its golden input."""
    import base64
    import io

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    out = g.output[0].name
    for n in g.node:
        for i, o in enumerate(n.output):
            if o == out:
                n.output[i] = out + "_untampered"
    g.initializer.extend([numpy_helper.from_array(np.array(3, np.int64), "t_axis"),
                          numpy_helper.from_array(np.array(width, np.int64), "t_width")])
    g.node.extend([
        helper.make_node("Shape", [g.input[0].name], ["t_shape"]),
        helper.make_node("Gather", ["t_shape", "t_axis"], ["t_w"], axis=0),
        helper.make_node("Equal", ["t_w", "t_width"], ["t_eq"]),
        helper.make_node("Not", ["t_eq"], ["t_keep"]),
        helper.make_node("Cast", ["t_keep"], ["t_keepf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [out + "_untampered", "t_keepf"], [out]),
    ])
    buf = io.BytesIO()
    np.save(buf, golden.astype(np.float32), allow_pickle=False)
    props = [p for p in model.metadata_props if p.key != "defectstream.golden"]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    p = model.metadata_props.add()
    p.key, p.value = "defectstream.golden", base64.b64encode(buf.getvalue()).decode("ascii")
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    path.write_bytes(data)
    return data


def _detector_golden(d: Path) -> np.ndarray:
    return load_inspector(d, device="cpu").networks()["detector"].golden


def test_export_edited_to_zero_one_width_never_serves_under_the_model_version(tmp_path, severity_dir):
    """The issue's probe: the detector's export edited to output zeros on 96-px-wide inputs, its
    golden input moved to another width. It must not load: torch finds the defects on 96-px frames,
    the runtime that serves them must too."""
    d = _detector_and_classifier(severity_dir, tmp_path / "m")
    load_inspector(d, device="cpu", runtime="onnxruntime")
    info = load_checkpoint(d / "detector_fast.pt").info
    path = d / export_name(d / "detector_fast.pt", info.content_hash)
    golden = _detector_golden(d)
    assert golden.shape[-1] == 96
    zero_output_for_width(path, 96, np.pad(golden, ((0, 0), (0, 0), (0, 0), (0, 32)), mode="edge"))
    frames = _frames(4, (64, 96))
    ref = load_inspector(d, device="cpu")
    ort = load_inspector(d, device="cpu", runtime="onnxruntime")
    assert ort.model_version == ref.model_version and ort.runtime == "onnxruntime"
    assert assert_same_detections(ref.inspect(frames), ort.inspect(frames), frames) >= 1


def test_export_and_its_record_both_rewritten_fail_parity_on_the_checkpoints_golden(tmp_path, severity_dir, capsys):
    """Whoever also rewrites the export record (the new SHA-256) still meets the golden input of
    the checkpoint's side, not the one in the file: refused with RuntimeParityError, not served."""
    import hashlib

    from models.runtime.runtimes import record_path

    d = _detector_and_classifier(severity_dir, tmp_path / "m")
    load_inspector(d, device="cpu", runtime="onnxruntime")
    info = load_checkpoint(d / "detector_fast.pt").info
    path = d / export_name(d / "detector_fast.pt", info.content_hash)
    golden = _detector_golden(d)
    data = zero_output_for_width(path, 96, np.pad(golden, ((0, 0), (0, 0), (0, 0), (0, 32)), mode="edge"))
    rec = json.loads(record_path(path).read_text())
    rec["sha256"] = hashlib.sha256(data).hexdigest()
    record_path(path).write_text(json.dumps(rec))
    with pytest.raises(RuntimeParityError, match="parity failed.*refusing"):
        load_inspector(d, device="cpu", runtime="onnxruntime")
    assert issubclass(RuntimeParityError, CheckpointError)
    capsys.readouterr()
    rc = cli(["evaluate", "--data", "synthetic:seed=9000,n=1,size=64x64", "--format", "synthetic", "--model",
              str(d), "--runtime", "onnxruntime", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc != 0 and "parity failed" in err and path.name in err


def test_export_without_a_record_or_of_another_checkpoint_is_rebuilt(tmp_path, severity_dir):
    from models.runtime.runtimes import record_path

    d = _detector_and_classifier(severity_dir, tmp_path / "m")
    load_inspector(d, device="cpu", runtime="onnxruntime")
    info = load_checkpoint(d / "detector_fast.pt").info
    path = d / export_name(d / "detector_fast.pt", info.content_hash)
    record_path(path).unlink()  # e.g. an export made before records existed
    load_inspector(d, device="cpu", runtime="onnxruntime")
    rec = json.loads(record_path(path).read_text())
    assert rec["content_hash"] == info.content_hash and path.with_name(path.name + ".refused").is_file()
    rec["content_hash"] = "0" * 64  # a record that names another checkpoint content
    record_path(path).write_text(json.dumps(rec))
    load_inspector(d, device="cpu", runtime="onnxruntime")
    assert json.loads(record_path(path).read_text())["content_hash"] == info.content_hash


def test_read_only_checkpoint_directory_exports_to_the_cache(tmp_path, severity_dir, monkeypatch, caplog):
    import models.runtime.runtimes as rt

    d = _detector_and_classifier(severity_dir, tmp_path / "ro")
    real = rt._write_atomic

    def write(path: Path, data: bytes) -> None:  # the tests run as root, where chmod does not stop writes
        if path.parent == d:
            raise PermissionError(13, "Permission denied", str(path))
        real(path, data)

    monkeypatch.setattr(rt, "_write_atomic", write)
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="models.runtime.runtimes"):
        insp = load_inspector(d, device="cpu", runtime="onnxruntime", export_cache=cache)
    assert not list(d.glob("*.onnx*"))
    assert sorted(p.name.split(".")[0] for p in cache.glob("*.onnx")) == ["classifier", "detector_fast"]
    assert any("cannot write the ONNX export" in r.getMessage() and str(cache) in r.getMessage() for r in caplog.records)
    assert insp.runtime == "onnxruntime"


def test_runtime_device_and_settings_checks():
    from pydantic import ValidationError

    from streams.settings import ModelSettings

    assert check_runtime_device("onnxruntime", "auto") == "cpu"
    with pytest.raises(ValueError, match="serves on CPU"):
        check_runtime_device("onnxruntime", "cuda")
    with pytest.raises(ValueError, match="unknown runtime"):
        check_runtime_device("tensorrt", "cpu")
    assert ModelSettings().runtime == "auto"  # the default: an ONNX runtime on CPU, torch on CUDA
    assert ModelSettings(device="cuda").runtime == "auto"  # auto is allowed with CUDA (it means torch there)
    with pytest.raises(ValidationError):
        ModelSettings(runtime="onnxruntime-int8", device="cuda")
    s = ModelSettings(runtime="onnxruntime")
    assert s.resolve_device() == "cpu"
    with pytest.raises(ValidationError):
        ModelSettings(runtime="onnxruntime", device="cuda")


def test_runtime_setting_from_the_environment(monkeypatch):
    from streams.settings import Settings

    monkeypatch.setenv("DEFECTSTREAM_MODEL__RUNTIME", "onnxruntime")
    assert Settings().model.runtime == "onnxruntime"


def _write_plain(root: Path, n: int = 4) -> Path:
    """A plain-format folder of synthetic frames with their class masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    names = None
    for i in range(n):
        s = render_sample(9100 + i, (128, 192), defect_prob=1.0)
        names = s.class_names
        cv2.imwrite(str(root / "images" / f"{i:02d}.png"), s.image)
        cv2.imwrite(str(root / "masks" / f"{i:02d}.png"), s.class_mask.astype(np.uint8))
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    return root


def test_evaluate_gives_the_same_metrics_in_both_runtimes(tmp_path, severity_dir, capsys):
    data = _write_plain(tmp_path / "plain")
    out = {}
    for runtime in ("torch", "onnxruntime"):
        rc = cli(["evaluate", "--data", str(data), "--format", "plain", "--model", str(severity_dir),
                  "--out", str(tmp_path / runtime), "--runtime", runtime, "--threads", "1", "--device", "cpu"])
        assert rc == 0
        out[runtime] = next(iter(json.loads((tmp_path / runtime / "metrics.json").read_text()).values()))
    capsys.readouterr()
    a, b = out["torch"], out["onnxruntime"]
    assert a["meta"]["runtime"] == "torch" and b["meta"]["runtime"] == "onnxruntime"
    assert a["confusion"] == b["confusion"]
    timing = {k for k in a["metrics"] if "per_s" in k or k.endswith("_ms")}
    compared = 0
    for k, v in a["metrics"].items():
        if k in timing or not isinstance(v, (int, float)) or v is None:
            continue
        assert b["metrics"][k] == pytest.approx(v, abs=1e-3), k
        compared += 1
    assert compared >= 5 and a["metrics"]["pixel_f1"] > 0.2  # a model that finds the defects, on both runtimes


def test_openvino_detections_match_with_fp32_precision(severity_dir):
    pytest.importorskip("openvino")
    ref = load_inspector(severity_dir, device="cpu", detector_arch="fast")
    ov = load_inspector(severity_dir, device="cpu", detector_arch="fast", runtime="openvino")
    assert ov.runtime == "openvino"
    assert ov._run_detector.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    frames = _frames(3, (128, 320))
    assert assert_same_detections(ref.inspect(frames), ov.inspect(frames), frames) >= 3


def test_openvino_reduced_precision_is_refused(severity_dir, monkeypatch):
    """OpenVINO's CPU default on processors with bf16 units is bf16 inference: the parity check must refuse it."""
    ov = pytest.importorskip("openvino")
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16 inference in OpenVINO")
    import models.runtime.runtimes as rt

    monkeypatch.setattr(rt, "_ov_compile", lambda path, threads: ov.Core().compile_model(
        str(path), "CPU", {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": "1"}))
    with pytest.raises(RuntimeParityError, match="OpenVINO parity failed"):
        load_inspector(severity_dir, device="cpu", detector_arch="fast", runtime="openvino")
