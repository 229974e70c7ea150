"""The runtime swap, written once: an Inspector's networks rebuilt in another runtime and swapped in under its lock."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from models.runtime.runtimes import build_runner

__all__ = ["RuntimeSwap", "WrapperSwap"]


class RuntimeSwap:
    """Mixin for Inspectors: `use_runtime` for every network in `networks()`.

    The Inspector sets `runtime = "torch"`, a `_lock`, `device`, and `_runners`: network name (a key
    of `networks()`) -> the attribute holding that network's runner; `_inner`, when set, is an
    Inspector run behind this one (the gate's family), switched too. Every runner is built (export,
    parity check) before anything is swapped, so a refused runtime changes nothing of this Inspector.
    """

    runtime: str = "torch"
    _runners: dict[str, str] = {}
    _inner: Any = None

    def vote_track(self, frames: Any, boxes: Any) -> dict[str, float] | None:
        """The Inspector protocol's part context: no sequence vote here (a `track_vote.pt` beside the model adds
        one, `models.families.track_vote`); the tracker keeps its own vote."""
        return None

    def use_runtime(self, runtime: str, cache_dir: str | Path | None = None) -> Any:
        """Run every network in `runtime` ("torch", "onnxruntime", "openvino", "onnxruntime-int8"); exports
        are made/checked as `models.runtime.runtimes.build_runner` says. Raises RuntimeParityError /
        CheckpointError."""
        nets = self.networks()  # type: ignore[attr-defined]
        built = {attr: build_runner(nets[name], runtime, self.device, cache_dir)  # type: ignore[attr-defined]
                 for name, attr in self._runners.items()}
        if self._inner is not None:
            self._inner.use_runtime(runtime, cache_dir)
        with self._lock:  # type: ignore[attr-defined]
            for attr, run in built.items():
                setattr(self, attr, run)
            self.runtime = runtime
        return self


class WrapperSwap(RuntimeSwap):
    """An Inspector that runs another one (`inner`) behind or beside its own network (the gate, the track vote):
    `use_runtime` switches both, and the inner family's flip TTA (`model.flip_tta`, `evaluate --flip-tta`) is
    read and set through (AttributeError when the inner family has none)."""

    inner: Any

    @property
    def _inner(self) -> Any:  # type: ignore[override]
        return self.inner

    @property
    def flip_tta(self) -> bool:
        return self.inner.flip_tta

    @flip_tta.setter
    def flip_tta(self, on: bool) -> None:
        self.inner.flip_tta = on
