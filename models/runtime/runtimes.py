"""Serving runtimes: each network's forward call through eager PyTorch, ONNX Runtime or OpenVINO.

Every Inspector calls its networks through a *runner*: `runner(x) -> tensor` with the same input
(a float32 (N, C, H, W) tensor) and the same single output in every runtime. `TorchRunner` wraps
the module; `OrtRunner` wraps an ONNX Runtime session and `OvRunner` an OpenVINO compiled model
(optional package `openvino`) on the same ONNX export of that module. Both serve on CPU in fp32,
set explicitly: OpenVINO's CPU default on processors with bf16 units is bf16 inference, which
moved severities by up to 0.4 units here and fails the parity check.

Exports (`ensure_export`):
- live beside the checkpoint as `<stem>.<content hash[:12]>.onnx` (e.g. `detector_fast.1ba15bf7161b.onnx`),
  so a retrained checkpoint never meets an old export; written atomically (temp file + rename); when
  the checkpoint directory is not writable, the export goes to a cache directory
  (`default_cache_dir`, or the caller's) with a log line saying so;
- are tied to their checkpoint and to their own bytes by an export record written beside them at
  export time, outside the ONNX file (`<export>.json`: the checkpoint's full content hash, the
  export format and the SHA-256 of the ONNX file). At load the file's SHA-256 must equal the
  record's and the record's content hash the checkpoint's (which `models.core.checkpoints` verifies);
  the runtime is then built from exactly the bytes that were hashed. An export that fails (edited
  on disk, cut short, no record, another checkpoint's) is refused — never loaded — with a
  warning, set aside as `<export>.refused` and re-exported from the checkpoint. Nothing inside an
  ONNX file (its metadata included) is trusted;
- dynamic batch, height and width (every network here is fully convolutional or ends in global
  pooling); fp32 throughout; ONNX opset `OPSET`, made with PyTorch's TorchScript-based exporter
  (`dynamo=False`: it exports these plain CNNs in well under a second with no extra package, while
  the torch.export-based exporter needs onnxscript and takes 10-30x longer per network here;
  both gave the same outputs within 1e-5 on these networks);
- carry no golden input: the golden input is the checkpoint's side (`Network.golden`, a
  deterministic synthetic frame the Inspector prepares as it prepares frames), so an edited file
  cannot choose the input it is checked on.

Parity is checked, never assumed: an `OrtRunner`/`OvRunner` is only built after its output on the
golden input matched the PyTorch module's output within `PARITY_ATOL` + `PARITY_RTOL` x |torch|;
otherwise `RuntimeParityError` (a `CheckpointError`) refuses the runtime. The export record guards
against an ONNX file changed on its own; whoever can rewrite both the file and its record can also
replace the checkpoint directory's files, which is why that directory must be writable by the
model's owner only.

Two more runtime names are resolved by `models.loading.load_inspector`, not here:
- `auto` (the worker's default): torch on CUDA; on CPU ONNX Runtime (OpenVINO, when installed, only
  if ONNX Runtime cannot be used); torch when no ONNX runtime can be used (logged);
- `onnxruntime-int8`: every network statically quantised to int8 (`ensure_int8_export`, QDQ,
  per-channel weights, calibrated on the inputs the networks see while the fp32 Inspector inspects
  calibration frames); int8 cannot meet the fp32 tolerance on raw outputs, so the gate is parity on
  *detections* (`models.loading.INT8_*`): same regions, classes and confidences within a stated
  tolerance, else `RuntimeParityError`.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn

from models.core.checkpoints import CheckpointError

__all__ = ["RUNTIMES", "RUNTIME_CHOICES", "AUTO", "INT8", "OPSET", "EXPORT_FORMAT", "PARITY_ATOL", "PARITY_RTOL", "RuntimeParityError", "Runner",
           "TorchRunner", "OrtRunner", "OvRunner", "Network", "Select", "export_name", "ensure_export", "build_runner",
           "default_cache_dir", "golden_frame", "check_runtime_device", "int8_export_name", "ensure_int8_export",
           "record_inputs", "int8_calibration", "openvino_available", "record_path", "verified_export_bytes"]

log = logging.getLogger(__name__)

INT8 = "onnxruntime-int8"
AUTO = "auto"
RUNTIMES = ("torch", "onnxruntime", "openvino", INT8)  # what a runner can be built in
RUNTIME_CHOICES = (AUTO, *RUNTIMES)  # what a setting / --runtime may say (`auto` resolved by models.loading)
INT8_FORMAT = "1"  # bump when the quantisation recipe changes: old int8 files are rebuilt
OPSET = 17
EXPORT_FORMAT = "2"  # bump when what an export holds changes (wrapper outputs, metadata): old files are rebuilt
RECORD_FORMAT = "defectstream-onnx-export-record/1"  # the `<export>.json` written beside every export
PARITY_ATOL = 1e-3  # largest allowed |onnx - torch| on the golden input (+ PARITY_RTOL x |torch|)
PARITY_RTOL = 1e-3
_META = "defectstream."
ORT_CALL_PIXELS = 1 << 18  # ONNX Runtime calls are split so that each sees at most this many pixels per channel (>= 1 sample)


class RuntimeParityError(CheckpointError):
    """An exported network does not reproduce its PyTorch module on the golden input; not used."""


class Runner(Protocol):
    """One network's forward call: float32 (N, C, H, W) -> its one output tensor (on CPU for ONNX Runtime)."""

    runtime: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        ...


class Select(nn.Module):
    """`module` with one of its outputs picked (e.g. the detector's `severity`), so every runtime
    sees the same single-output network."""

    def __init__(self, module: nn.Module, pick: Callable[[Any], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.module = module
        self.pick = pick

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        return self.pick(out) if self.pick is not None else out


_recording = threading.local()  # record_inputs(): id(network module) -> inputs seen by TorchRunners


def _module_key(module: nn.Module) -> int:
    """Identifies a network whichever `Select` wraps it (an Inspector's runner and its `networks()` build their own)."""
    return id(module.module) if isinstance(module, Select) else id(module)


class record_inputs:
    """Context manager: while active (in this thread), every `TorchRunner` call keeps a float32 copy of
    its input under its network's key (`inputs_of(network_module)`). The int8 calibration uses it to
    see exactly what the Inspector feeds each network (padding, flips, crops) on calibration frames."""

    def __init__(self, max_per_network: int = 64) -> None:
        self.max_per_network = max_per_network
        self.inputs: dict[int, list[np.ndarray]] = {}

    def __enter__(self) -> "record_inputs":
        _recording.active = self
        return self

    def __exit__(self, *exc: Any) -> None:
        _recording.active = None

    def add(self, module: nn.Module, x: torch.Tensor) -> None:
        got = self.inputs.setdefault(_module_key(module), [])
        if len(got) < self.max_per_network:
            got.append(np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy()).copy())

    def inputs_of(self, module: nn.Module) -> list[np.ndarray]:
        return self.inputs.get(_module_key(module), [])


class TorchRunner:
    """Eager PyTorch (the training runtime); autocast, if any, is the caller's."""

    runtime = "torch"

    def __init__(self, module: nn.Module) -> None:
        self.module = module.eval()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rec = getattr(_recording, "active", None)
        if rec is not None:
            rec.add(self.module, x)
        return self.module(x)


class OrtRunner:
    """An ONNX Runtime CPU session on an export that passed the parity check."""

    runtime = "onnxruntime"

    def __init__(self, session: Any, path: Path, max_abs_diff: float) -> None:
        self.session = session
        self.path = path
        self.max_abs_diff = max_abs_diff  # on the golden input at load
        self._in = session.get_inputs()[0].name
        self._out = session.get_outputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        n = arr.shape[0]
        per_call = max(1, ORT_CALL_PIXELS // max(1, int(np.prod(arr.shape[2:]))))
        if n <= per_call:
            return torch.from_numpy(self.session.run([self._out], {self._in: arr})[0])
        # large frames one (or a few) at a time: ONNX Runtime's CPU kernels ran a 1600x256 frame 25-35 % faster
        # alone than in a batch of 4 here (the activations of one call then stay in cache); the outputs are the same
        return torch.from_numpy(np.concatenate([self.session.run([self._out], {self._in: arr[i:i + per_call]})[0]
                                                for i in range(0, n, per_call)]))


class OvRunner:
    """An OpenVINO CPU compiled model (fp32 inference precision) on an export that passed the parity check."""

    runtime = "openvino"

    def __init__(self, compiled: Any, path: Path, max_abs_diff: float) -> None:
        self.compiled = compiled
        self.path = path
        self.max_abs_diff = max_abs_diff
        self._request = compiled.create_infer_request()
        self._out = compiled.output(0)
        self._lock = threading.Lock()  # one infer request: calls from several threads take turns

    def infer(self, arr: np.ndarray) -> np.ndarray:
        with self._lock:
            return np.array(self._request.infer({0: arr})[self._out], copy=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.infer(np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())))


class Network(NamedTuple):
    """What an export needs: the checkpoint that names it, the single-output module, a golden input."""

    checkpoint: Path  # the registry .pt file
    content_hash: str  # its (verified) content hash
    module: nn.Module  # single output (see `Select`), eval mode, CPU
    golden: np.ndarray  # float32 (N, C, H, W) input prepared as the Inspector prepares frames
    trace_shape: tuple[int, int, int, int]  # a different shape to trace with, so the dynamic axes are exercised
    # int8 (`onnxruntime-int8`): quantise only the nodes whose ONNX name holds this module path (e.g. "/encoder/":
    # the exporter names nodes after their module), the rest stays float32; None quantises the whole graph
    int8_scope: str | None = None


def golden_frame(shape: tuple[int, int] = (64, 96), seed: int = 7) -> np.ndarray:
    """A deterministic synthetic uint8 (H, W) frame with defects (the generator is seeded)."""
    from models.data.synthetic import render_sample

    return render_sample(seed, shape, defect_prob=1.0).image


def default_cache_dir() -> Path:
    """Where exports go when a checkpoint directory is read-only: $XDG_CACHE_HOME (or ~/.cache)/defectstream/onnx."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "defectstream" / "onnx"


def export_name(checkpoint: Path, content_hash: str) -> str:
    """`<stem>.<hash12>.onnx`: one export per checkpoint content."""
    return f"{checkpoint.stem}.{content_hash[:12]}.onnx"


def _export_bytes(net: Network) -> bytes:
    """The network as ONNX bytes (fp32, dynamic N/H/W) with the metadata that identifies it."""
    import onnx

    module = net.module.to("cpu").eval()
    x = torch.rand(*net.trace_shape) * 255.0
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter announces its deprecation; the parity check is what guards its output
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=["output"], do_constant_folding=True,
                          dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch"}})
    model = onnx.load_from_string(buf.getvalue())
    # descriptive only: what is trusted at load is the export record beside the file (`_check_export`)
    meta = {"content_hash": net.content_hash, "export_format": EXPORT_FORMAT, "checkpoint": net.checkpoint.name,
            "torch": torch.__version__, "exporter": "torch.onnx TorchScript (dynamo=False)", "precision": "fp32"}
    for k, v in meta.items():
        p = model.metadata_props.add()
        p.key, p.value = _META + k, v
    return model.SerializeToString()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # readable like the checkpoints (mkstemp makes it private)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_stale(directory: Path, checkpoint: Path, keep: str) -> None:
    """Exports of earlier contents of the same checkpoint (other hashes) in `directory`."""
    pat = re.compile(re.escape(checkpoint.stem) + r"\.[0-9a-f]{12}\.onnx$")
    for p in directory.glob(checkpoint.stem + ".*.onnx"):
        if p.name != keep and pat.match(p.name):
            try:
                p.unlink()
                record_path(p).unlink(missing_ok=True)
            except OSError:
                pass


def record_path(export: Path) -> Path:
    """The export record of an ONNX file: `<export>.json` beside it."""
    return export.with_name(export.name + ".json")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_export(path: Path, data: bytes, record: dict[str, str]) -> None:
    """Write the ONNX bytes, then their record (content hash, format, SHA-256 of exactly these bytes).

    The record goes last: a crash in between leaves an export without a record, which is refused
    and rebuilt, never trusted. An export's bytes are deterministic (same checkpoint, same bytes:
    measured), so two processes exporting one network at once write the same file and record."""
    _write_atomic(path, data)
    body = {"format": RECORD_FORMAT, "file": path.name, "sha256": _sha256(data), **record}
    _write_atomic(record_path(path), (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())


def _check_export(path: Path, want: dict[str, str]) -> tuple[bytes | None, str | None]:
    """(the file's bytes, None) when `path` is an export whose record matches `want` (content hash,
    formats, …) and whose SHA-256 is the one recorded; (None, why it is refused) when it exists but
    fails; (None, None) when there is no file."""
    if not path.is_file():
        return None, None
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    try:
        rec = json.loads(record_path(path).read_text())
    except FileNotFoundError:
        return None, f"no export record ({record_path(path).name}) says which bytes were exported"
    except (OSError, ValueError) as exc:
        return None, f"unreadable export record {record_path(path).name} ({exc})"
    if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT or rec.get("file") != path.name:
        return None, f"{record_path(path).name} is not the export record of {path.name}"
    for k, v in want.items():
        if rec.get(k) != v:
            got_k, n = str(rec.get(k)), 16
            while n < max(len(got_k), len(v)) and got_k[:n] == v[:n]:  # show where they differ
                n += 16
            return None, f"recorded {k} {got_k[:n]!r}, expected {v[:n]!r}"
    got = _sha256(data)
    if got != rec.get("sha256"):
        return None, (f"its SHA-256 {got[:16]}… is not the {str(rec.get('sha256'))[:16]}… recorded when it was "
                      f"exported: the file changed on disk")
    return data, None


def _refuse(path: Path, why: str, checkpoint: Path) -> None:
    """Log why an export is not used and set it aside (`<export>.refused`) so it is never loaded;
    the caller re-exports from the checkpoint."""
    log.warning("refusing ONNX export %s: %s; re-exporting it from %s", path, why, checkpoint)
    try:
        os.replace(path, path.with_name(path.name + ".refused"))
    except OSError:
        pass  # a read-only directory: the new export goes to the cache, this one stays refused


def _export_record(net: Network) -> dict[str, str]:
    return {"content_hash": net.content_hash, "export_format": EXPORT_FORMAT, "checkpoint": net.checkpoint.name}


def verified_export_bytes(path: Path, net: Network, extra: dict[str, str] | None = None) -> bytes:
    """The bytes of the export at `path` after its record was checked against `net` (see `_check_export`).

    Raises:
        RuntimeParityError: the file or its record does not match (it changed since it was checked).
    """
    data, why = _check_export(path, {**_export_record(net), **(extra or {})})
    if data is None:
        raise RuntimeParityError(f"ONNX export {path} refused: {why or 'missing'}; load again to re-export it")
    return data


def ensure_export(net: Network, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The current ONNX export of `net`: found beside the checkpoint (or in the cache), else written.

    Returns:
        the export's path, whose bytes match the SHA-256 in its export record and whose record
        names this checkpoint content. A stale, unreadable, missing or changed export is refused
        (logged, set aside as `.refused`) and rebuilt; the checkpoint directory is tried first,
        then `cache_dir` (default `default_cache_dir()`).
    Raises:
        CheckpointError: neither directory is writable, or the export failed.
    """
    name = export_name(net.checkpoint, net.content_hash)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    candidates = [net.checkpoint.parent / name, cache / name]
    want = _export_record(net)
    for p in candidates:
        data, why = _check_export(p, want)
        if data is not None:
            return p
        if why is not None:
            _refuse(p, why, net.checkpoint)
    try:
        data = _export_bytes(net)
    except Exception as exc:
        raise CheckpointError(f"could not export {net.checkpoint} to ONNX: {exc}") from exc
    errors = []
    for p in candidates:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            _write_export(p, data, want)
        except OSError as exc:
            errors.append(f"{p.parent}: {exc.strerror or exc}")
            log.warning("cannot write the ONNX export of %s in %s (%s); trying %s", net.checkpoint,
                        p.parent, exc.strerror or exc, cache if p.parent != cache else "nothing else")
            continue
        _remove_stale(p.parent, net.checkpoint, name)
        log.info("exported %s to %s", net.checkpoint, p)
        return p
    raise CheckpointError(f"cannot write the ONNX export of {net.checkpoint}: {'; '.join(errors)} "
                          f"(set the export cache directory to a writable folder)")


def int8_export_name(checkpoint: Path, content_hash: str) -> str:
    """`<stem>.<hash12>.int8.onnx`: the statically quantised export of one checkpoint content."""
    return f"{checkpoint.stem}.{content_hash[:12]}.int8.onnx"


class _Calibration:
    """onnxruntime.quantization.CalibrationDataReader over a list of float32 (N, C, H, W) arrays."""

    def __init__(self, name: str, arrays: list[np.ndarray]) -> None:
        self._it = iter([{name: np.ascontiguousarray(a, np.float32)} for a in arrays])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _quantize_bytes(fp32: Path, calibration: list[np.ndarray], meta: dict[str, str],
                    scope: str | None = None) -> bytes:
    """Static int8 quantisation of the fp32 export: QDQ format, per-channel int8 weights, uint8
    activations with MinMax ranges from `calibration` (the network's real inputs). With `scope`, only
    the nodes whose name holds it are quantised (`Network.int8_scope`)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="defectstream-int8-") as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            except Exception:  # pre-processing is an optimisation; quantise the plain export instead
                pre = fp32
            exclude: list[str] = []
            if scope is not None:
                names = [n.name for n in onnx.load(str(pre)).graph.node]
                exclude = [n for n in names if scope not in n]
                if len(exclude) == len(names):
                    raise ValueError(f"int8 scope {scope!r} names no node of the export")
            quantize_static(str(pre), str(out), _Calibration("input", calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude,
                            extra_options={"CalibTensorRangeSymmetric": False})
        model = onnx.load(str(out))
    del model.metadata_props[:]
    for k, v in meta.items():
        p = model.metadata_props.add()
        p.key, p.value = _META + k, v
    return model.SerializeToString()


def ensure_int8_export(net: Network, calibration: list[np.ndarray] | None, calibration_id: str,
                       cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The int8 export of `net` calibrated as `calibration_id` says: found beside its fp32 export, else
    quantised from it (made first when missing) on `calibration` (float32 network inputs).

    Raises:
        CheckpointError: no current int8 file and no calibration inputs, or quantisation failed.
    """
    fp32 = ensure_export(net, cache_dir)
    name = int8_export_name(net.checkpoint, net.content_hash)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    candidates = list(dict.fromkeys([fp32.parent / name, net.checkpoint.parent / name, cache / name]))
    want = {**_export_record(net), "int8_format": INT8_FORMAT, "calibration": calibration_id,
            "int8_scope": net.int8_scope or "whole graph"}
    for p in candidates:
        data, why = _check_export(p, want)
        if data is not None:
            return p
        if why is not None:
            _refuse(p, why, net.checkpoint)
    if not calibration:
        raise CheckpointError(f"no int8 export of {net.checkpoint} and no calibration inputs to make one")
    meta = {"content_hash": net.content_hash, "export_format": EXPORT_FORMAT, "int8_format": INT8_FORMAT,
            "checkpoint": net.checkpoint.name, "precision": "int8 (QDQ, per-channel weights, uint8 activations)",
            "calibration": calibration_id, "calibration_inputs": str(len(calibration)),
            "int8_scope": net.int8_scope or "whole graph"}
    try:
        data = _quantize_bytes(fp32, calibration, meta, net.int8_scope)
    except Exception as exc:
        raise CheckpointError(f"could not quantise {fp32} to int8: {exc}") from exc
    for p in candidates:
        try:
            _write_export(p, data, want)
        except OSError:
            continue
        log.info("quantised %s to int8 in %s (%d calibration inputs)", net.checkpoint, p, len(calibration))
        for old in p.parent.glob(net.checkpoint.stem + ".*.int8.onnx"):
            if old.name != name:
                old.unlink(missing_ok=True)
                record_path(old).unlink(missing_ok=True)
        return p
    raise CheckpointError(f"cannot write the int8 export of {net.checkpoint} in {fp32.parent} or {cache}")


_int8_calibration = threading.local()


class int8_calibration:
    """Context manager: `build_runner(..., "onnxruntime-int8")` calls in this thread (e.g. through an
    Inspector's `use_runtime`) take their calibration from here: `calibration_id` names the frames
    (an int8 file of another id is rebuilt), `recorded` holds each network's recorded inputs (None:
    the int8 files must exist already)."""

    def __init__(self, calibration_id: str, recorded: record_inputs | None) -> None:
        self.calibration_id, self.recorded = calibration_id, recorded

    def __enter__(self) -> "int8_calibration":
        _int8_calibration.active = self
        return self

    def __exit__(self, *exc: Any) -> None:
        _int8_calibration.active = None


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def _session(path: Path, threads: int, data: bytes | None = None) -> Any:
    """An fp32 CPU session on `data` (the verified bytes of `path`; `path` itself when None)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise CheckpointError("the onnxruntime runtime needs the onnxruntime package: pip install onnxruntime") from exc
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # fp32 explicitly: no bf16 fast-math GEMMs (ARM) and no reduced-precision kernels
    so.add_session_config_entry("mlas.enable_gemm_fastmath_arm64_bfloat16", "0")
    try:
        sess = ort.InferenceSession(data if data is not None else str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RuntimeParityError(f"ONNX Runtime cannot load {path}: {exc} (delete it to re-export)") from exc
    types = [t.type for t in (*sess.get_inputs(), *sess.get_outputs())]
    if any(t != "tensor(float)" for t in types):
        raise RuntimeParityError(f"{path} is not an fp32 network (types {types}); delete it to re-export")
    return sess


def _ov_compile(path: Path, threads: int) -> Any:
    try:
        import openvino as ov
    except ImportError as exc:
        raise CheckpointError("the openvino runtime needs the openvino package: pip install openvino "
                              "(or pip install 'defectstream[openvino]')") from exc
    cfg = {"INFERENCE_PRECISION_HINT": "f32",  # explicit: the CPU default is bf16 where the CPU has it
           "INFERENCE_NUM_THREADS": str(max(1, int(threads))), "PERFORMANCE_HINT": "LATENCY"}
    try:
        return ov.Core().compile_model(str(path), "CPU", cfg)
    except Exception as exc:
        raise RuntimeParityError(f"OpenVINO cannot compile {path}: {exc} (delete it to re-export)") from exc


_LABEL = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


def _parity(net: Network, infer: Callable[[np.ndarray], np.ndarray], path: Path, runtime: str) -> float:
    """Largest |runtime - torch| on the checkpoint's golden input (`net.golden`, never one the export
    carries); raises RuntimeParityError beyond tolerance."""
    golden = np.ascontiguousarray(net.golden, np.float32)
    with torch.inference_mode():
        ref = net.module.to("cpu").eval()(torch.from_numpy(golden)).float().numpy()
    got = infer(golden)
    name = _LABEL.get(runtime, runtime)
    if got.shape != ref.shape:
        raise RuntimeParityError(f"{name} parity failed for {path}: output shape {got.shape}, PyTorch "
                                 f"{ref.shape}; refusing this runtime (delete the file to re-export, or use "
                                 f"--runtime torch)")
    diff = np.abs(got.astype(np.float64) - ref)
    bad = diff > PARITY_ATOL + PARITY_RTOL * np.abs(ref)
    if not np.isfinite(got).all() or bad.any():
        raise RuntimeParityError(
            f"{name} parity failed for {path}: largest |{runtime} - torch| {float(np.nanmax(diff)):.3g} on the "
            f"golden input ({int(bad.sum())} of {bad.size} values beyond {PARITY_ATOL:g} + {PARITY_RTOL:g} x |torch|); "
            f"refusing this runtime (delete the file to re-export, or use --runtime torch)")
    return float(diff.max()) if diff.size else 0.0


def check_runtime_device(runtime: str, device: str) -> str:
    """The device a runtime runs on: "auto" -> "cpu" for the ONNX runtimes; refuses unknown
    runtimes and the ONNX runtimes on CUDA (they serve on CPU here). Runtime `auto` keeps the
    device as given (torch on CUDA when the device resolves to CUDA, an ONNX runtime on CPU)."""
    if runtime not in RUNTIME_CHOICES:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIME_CHOICES)}")
    if runtime not in ("torch", AUTO):
        if device == "auto":
            return "cpu"
        if device != "cpu":
            raise ValueError(f"runtime {runtime} serves on CPU; device {device!r} needs --runtime torch")
    return device


def build_runner(net: Network, runtime: str = "torch", device: str = "cpu",
                 cache_dir: str | os.PathLike[str] | None = None, threads: int | None = None,
                 calibration: tuple[str, list[np.ndarray] | None] | None = None) -> Runner:
    """The runner of `net` in `runtime`.

    Args:
        runtime: "torch", "onnxruntime" or "openvino" (the last two on CPU, fp32), or
            "onnxruntime-int8" (CPU, int8): its output is *not* held to the fp32 tolerance (its
            largest difference on the golden input is kept in `max_abs_diff`); the caller checks
            parity on detections (`models.loading`).
        calibration: for int8, (calibration id, the network's calibration inputs or None when an
            int8 file of that id should already exist).
        threads: ONNX Runtime intra-op / OpenVINO inference threads (default: torch's thread
            setting, `torch.get_num_threads()`).
    Raises:
        RuntimeParityError: the export does not reproduce the module on its golden input.
        CheckpointError: the export could not be made or written.
    """
    if runtime == "torch":
        return TorchRunner(net.module.to(device))
    check_runtime_device(runtime, device)
    if runtime == AUTO:
        raise ValueError("runtime auto is resolved by models.loading.load_inspector, not per network")
    n_threads = threads if threads is not None else torch.get_num_threads()
    if runtime == INT8:
        ctx = getattr(_int8_calibration, "active", None)
        if calibration is None and ctx is not None:
            calibration = (ctx.calibration_id, ctx.recorded.inputs_of(net.module) if ctx.recorded else None)
        if calibration is None:
            raise ValueError("runtime onnxruntime-int8 needs calibration (use models.loading.load_inspector)")
        path = ensure_int8_export(net, calibration[1], calibration[0], cache_dir)
        sess = _session(path, n_threads, verified_export_bytes(
            path, net, {"int8_format": INT8_FORMAT, "calibration": calibration[0]}))
        runner8 = OrtRunner(sess, path, 0.0)
        runner8.runtime = INT8
        with torch.inference_mode():
            golden = net.golden
            ref = net.module.to("cpu").eval()(torch.from_numpy(golden)).float().numpy()
        got = runner8(torch.from_numpy(golden)).numpy()
        runner8.max_abs_diff = float(np.abs(got.astype(np.float64) - ref).max()) if got.shape == ref.shape else float("inf")
        log.info("%s: %s largest difference from fp32 on its golden input %.3g (parity is checked on detections)",
                 INT8, path.name, runner8.max_abs_diff)
        return runner8
    path = ensure_export(net, cache_dir)
    runner: OrtRunner | OvRunner
    if runtime == "onnxruntime":
        sess = _session(path, n_threads, verified_export_bytes(path, net))  # the bytes whose SHA-256 was checked
        runner = OrtRunner(sess, path, 0.0)
        infer: Callable[[np.ndarray], np.ndarray] = lambda a: sess.run(None, {sess.get_inputs()[0].name: a})[0]
    else:
        verified_export_bytes(path, net)  # OpenVINO compiles from the path: checked just before, and parity after
        runner = OvRunner(_ov_compile(path, n_threads), path, 0.0)
        infer = runner.infer
    runner.max_abs_diff = _parity(net, infer, path, runtime)
    log.info("%s: %s passed parity on its golden input (largest difference %.2g)", runtime, path.name,
             runner.max_abs_diff)
    return runner
