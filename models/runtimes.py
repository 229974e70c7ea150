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

from models.registry import CheckpointError

__all__ = ["RUNTIMES", "OPSET", "EXPORT_FORMAT", "PARITY_ATOL", "PARITY_RTOL", "RuntimeParityError", "Runner",
           "TorchRunner", "OrtRunner", "OvRunner", "Network", "Select", "export_name", "ensure_export", "build_runner",
           "default_cache_dir", "golden_frame", "check_runtime_device"]

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnxruntime", "openvino")
OPSET = 17
EXPORT_FORMAT = "1"  # bump when what an export holds changes (wrapper outputs, metadata): old files are rebuilt
PARITY_ATOL = 1e-3  # largest allowed |onnx - torch| on the golden input (+ PARITY_RTOL x |torch|)
PARITY_RTOL = 1e-3
_META = "defectstream."


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


class TorchRunner:
    """Eager PyTorch (the training runtime); autocast, if any, is the caller's."""

    runtime = "torch"

    def __init__(self, module: nn.Module) -> None:
        self.module = module.eval()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
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
        return torch.from_numpy(self.session.run([self._out], {self._in: arr})[0])


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
    from models.synthetic import render_sample

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
    """The device a runtime runs on: "auto" -> "cpu" for onnxruntime/openvino; refuses unknown
    runtimes and those two on CUDA (they serve on CPU here)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    if runtime != "torch":
        if device == "auto":
            return "cpu"
        if device != "cpu":
            raise ValueError(f"runtime {runtime} serves on CPU; device {device!r} needs --runtime torch")
    return device


def build_runner(net: Network, runtime: str = "torch", device: str = "cpu",
                 cache_dir: str | os.PathLike[str] | None = None, threads: int | None = None) -> Runner:
    """The runner of `net` in `runtime`.

    Args:
        runtime: "torch", "onnxruntime" or "openvino" (the last two on CPU, fp32).
        threads: ONNX Runtime intra-op / OpenVINO inference threads (default: torch's thread
            setting, `torch.get_num_threads()`).
    Raises:
        RuntimeParityError: the export does not reproduce the module on its golden input.
        CheckpointError: the export could not be made or written.
    """
    if runtime == "torch":
        return TorchRunner(net.module.to(device))
    check_runtime_device(runtime, device)
    path = ensure_export(net, cache_dir)
    n_threads = threads if threads is not None else torch.get_num_threads()
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
