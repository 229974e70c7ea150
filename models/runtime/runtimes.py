"""Serving runtimes: each network's forward call through eager PyTorch, ONNX Runtime or OpenVINO.

Every Inspector calls its networks through a *runner*: `runner(x) -> tensor` with the same input
(a float32 (N, C, H, W) tensor) and the same single output in every runtime. `TorchRunner` wraps
the module; `OrtRunner` wraps an ONNX Runtime session and `OvRunner` an OpenVINO compiled model
(optional package `openvino`) on the same ONNX export of that module. Both serve on CPU in fp32,
set explicitly: OpenVINO's CPU default on processors with bf16 units is bf16 inference, which
moved severities by up to 0.4 units here and fails the parity check.

Exports (`ensure_export`):
- live beside the checkpoint as `<stem>.<content hash[:12]>.onnx` (e.g. `detector_fast.1ba15bf7161b.onnx`),
  so a retrained checkpoint never meets an old export; the full content hash and the export
  format are recorded in the ONNX metadata and checked at load (rebuilt when stale, missing or
  unreadable); written atomically (temp file + rename); when the checkpoint directory is not
  writable, the export goes to a cache directory (`default_cache_dir`, or the caller's) with a
  log line saying so;
- dynamic batch, height and width (every network here is fully convolutional or ends in global
  pooling); fp32 throughout; ONNX opset `OPSET`, made with PyTorch's TorchScript-based exporter
  (`dynamo=False`: it exports these plain CNNs in well under a second with no extra package, while
  the torch.export-based exporter needs onnxscript and takes 10-30x longer per network here;
  both gave the same outputs within 1e-5 on these networks);
- carry one golden input (`defectstream.golden`, a deterministic synthetic frame prepared as the
  Inspector prepares frames).

Parity is checked, never assumed: an `OrtRunner`/`OvRunner` is only built after its output on the
golden input matched the PyTorch module's output within `PARITY_ATOL` + `PARITY_RTOL` x |torch|;
otherwise `RuntimeParityError` (a `CheckpointError`) refuses the runtime.

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

import base64
import io
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
           "record_inputs", "int8_calibration", "openvino_available"]

log = logging.getLogger(__name__)

INT8 = "onnxruntime-int8"
AUTO = "auto"
RUNTIMES = ("torch", "onnxruntime", "openvino", INT8)  # what a runner can be built in
RUNTIME_CHOICES = (AUTO, *RUNTIMES)  # what a setting / --runtime may say (`auto` resolved by models.loading)
INT8_FORMAT = "1"  # bump when the quantisation recipe changes: old int8 files are rebuilt
OPSET = 17
EXPORT_FORMAT = "1"  # bump when what an export holds changes (wrapper outputs, metadata): old files are rebuilt
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


def _encode(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, arr.astype(np.float32), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _decode(text: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


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
    meta = {"content_hash": net.content_hash, "export_format": EXPORT_FORMAT, "checkpoint": net.checkpoint.name,
            "torch": torch.__version__, "exporter": "torch.onnx TorchScript (dynamo=False)", "precision": "fp32",
            "golden": _encode(net.golden)}
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
            except OSError:
                pass


def _metadata(path: Path) -> dict[str, str] | None:
    """The defectstream metadata of an ONNX file (without its weights), or None when unreadable."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return None
    return {p.key[len(_META):]: p.value for p in model.metadata_props if p.key.startswith(_META)}


def _current(path: Path, content_hash: str) -> bool:
    meta = _metadata(path) if path.is_file() else None
    return bool(meta) and meta.get("content_hash") == content_hash and meta.get("export_format") == EXPORT_FORMAT


def ensure_export(net: Network, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The current ONNX export of `net`: found beside the checkpoint (or in the cache), else written.

    Returns:
        the export's path. A stale, unreadable or missing export is (re)built; the checkpoint
        directory is tried first, then `cache_dir` (default `default_cache_dir()`).
    Raises:
        CheckpointError: neither directory is writable, or the export failed.
    """
    name = export_name(net.checkpoint, net.content_hash)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    candidates = [net.checkpoint.parent / name, cache / name]
    for p in candidates:
        if _current(p, net.content_hash):
            return p
    try:
        data = _export_bytes(net)
    except Exception as exc:
        raise CheckpointError(f"could not export {net.checkpoint} to ONNX: {exc}") from exc
    errors = []
    for p in candidates:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(p, data)
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


def _quantize_bytes(fp32: Path, calibration: list[np.ndarray], meta: dict[str, str]) -> bytes:
    """Static int8 quantisation of the fp32 export: QDQ format, per-channel int8 weights, uint8
    activations with MinMax ranges from `calibration` (the network's real inputs)."""
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
            quantize_static(str(pre), str(out), _Calibration("input", calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
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
    for p in candidates:
        meta = _metadata(p) if p.is_file() else None
        if meta and meta.get("content_hash") == net.content_hash and meta.get("int8_format") == INT8_FORMAT \
                and meta.get("calibration") == calibration_id:
            return p
    if not calibration:
        raise CheckpointError(f"no int8 export of {net.checkpoint} and no calibration inputs to make one")
    meta = {"content_hash": net.content_hash, "export_format": EXPORT_FORMAT, "int8_format": INT8_FORMAT,
            "checkpoint": net.checkpoint.name, "precision": "int8 (QDQ, per-channel weights, uint8 activations)",
            "calibration": calibration_id, "calibration_inputs": str(len(calibration)), "golden": _encode(net.golden)}
    try:
        data = _quantize_bytes(fp32, calibration, meta)
    except Exception as exc:
        raise CheckpointError(f"could not quantise {fp32} to int8: {exc}") from exc
    for p in candidates:
        try:
            _write_atomic(p, data)
        except OSError:
            continue
        log.info("quantised %s to int8 in %s (%d calibration inputs)", net.checkpoint, p, len(calibration))
        for old in p.parent.glob(net.checkpoint.stem + ".*.int8.onnx"):
            if old.name != name:
                old.unlink(missing_ok=True)
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


def _session(path: Path, threads: int) -> Any:
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
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
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


def _parity(net: Network, infer: Callable[[np.ndarray], np.ndarray], meta: dict[str, str], path: Path,
            runtime: str) -> float:
    """Largest |runtime - torch| on the golden input stored in the export; raises RuntimeParityError beyond tolerance."""
    text = meta.get("golden")
    if meta.get("content_hash") != net.content_hash or text is None:
        raise RuntimeParityError(f"{path} does not carry the golden input and content hash of {net.checkpoint}; "
                                 f"delete it to re-export")
    golden = _decode(text)
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
        sess = _session(path, n_threads)
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
        sess = _session(path, n_threads)
        meta = {k[len(_META):]: v for k, v in sess.get_modelmeta().custom_metadata_map.items() if k.startswith(_META)}
        runner = OrtRunner(sess, path, 0.0)
        infer: Callable[[np.ndarray], np.ndarray] = lambda a: sess.run(None, {sess.get_inputs()[0].name: a})[0]
    else:
        runner = OvRunner(_ov_compile(path, n_threads), path, 0.0)
        meta = _metadata(path) or {}
        infer = runner.infer
    runner.max_abs_diff = _parity(net, infer, meta, path, runtime)
    log.info("%s: %s passed parity on its golden input (largest difference %.2g)", runtime, path.name,
             runner.max_abs_diff)
    return runner
