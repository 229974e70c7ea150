"""Model inference off the event loop: one dedicated thread, batches sized for the device."""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from models.core.types import Detection, Inspector, has_sequence_vote
from streams.inspection.model_selection import InspectorPool, LoadFailure, ModelSelection
from streams.settings import ModelSettings

log = logging.getLogger(__name__)

R = TypeVar("R")


def apply_flip_tta(inspector: Inspector, flip_tta: str) -> None:
    """Force the severity detector's flip TTA on or off (`model.flip_tta`); "checkpoint" keeps the
    checkpoint's choice. Families without flip TTA are left as they are."""
    if flip_tta != "checkpoint" and hasattr(inspector, "flip_tta"):
        inspector.flip_tta = flip_tta == "on"  # type: ignore[attr-defined]


class InferenceRunner:
    """Runs `Inspector.inspect` in a single-thread executor (the model is not thread-safe and a
    single thread keeps the GPU queue ordered); the event loop keeps serving heartbeats,
    commits and timers meanwhile.

    The Inspector loads lazily on first use (in the executor) unless one is given. Promoted
    models (`selection`, fed from the `cameras` topic) are loaded into `pool` beside it, in the
    same thread; `inspect(frames, version)` runs the Inspector of that version.
    """

    def __init__(self, settings: ModelSettings, inspector: Inspector | None = None):
        self.settings = settings
        self._inspector = inspector
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inspector")
        self._device: str | None = None
        self.selection = ModelSelection()
        self.pool: InspectorPool | None = None
        self.on_load_failure: Callable[[LoadFailure], None] | None = None  # set before the first load (metrics)
        self._votes: dict[str, bool] = {}  # version -> whether its Inspector has a sequence vote

    def _load_path(self, path: str | None) -> Inspector:
        from models.loading import load_inspector

        insp = load_inspector(path, device=self.settings.device, runtime=self.settings.runtime,
                              export_cache=self.settings.export_cache, calibration=self.settings.int8_calibration)
        apply_flip_tta(insp, self.settings.flip_tta)
        return insp

    def _load(self) -> Inspector:
        if self._inspector is None:
            threads = self.settings.resolve_threads()
            if self.device == "cpu":  # before the first session: ONNX Runtime / OpenVINO take torch's setting
                import torch

                torch.set_num_threads(threads)
            self._inspector = self._load_path(self.settings.path)
            log.info("inspector %s loaded on %s (runtime %s, %d CPU threads)", self._inspector.model_version,
                     self.device, getattr(self._inspector, "runtime", "torch"), threads)
        if self.pool is None:
            self.pool = InspectorPool(self._inspector, self._load_path, on_failure=self.on_load_failure)
            self.selection.default_version = str(self._inspector.model_version)
        return self._inspector

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = self.settings.resolve_device()
        return self._device

    @property
    def batch_size(self) -> int:
        return self.settings.gpu_batch_size if self.device == "cuda" else self.settings.batch_size

    async def ensure_loaded(self) -> Inspector:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._load)

    @property
    def model_version(self) -> str:
        if self._inspector is None:
            raise RuntimeError("inspector not loaded yet (await ensure_loaded())")
        return str(self._inspector.model_version)

    def _inspect_sync(self, frames: Sequence[np.ndarray], version: str | None = None) -> list[list[Detection]]:
        insp = self._load()
        if version is not None and self.pool is not None:
            insp = self.pool.get(version)
        out: list[list[Detection]] = []
        for i in range(0, len(frames), self.batch_size):
            out.extend(insp.inspect(frames[i:i + self.batch_size]))
        return out

    async def inspect(self, frames: Sequence[np.ndarray], version: str | None = None) -> list[list[Detection]]:
        """Detections per frame by the Inspector of `version` (None: the configured one), in the executor thread."""
        if not frames:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._inspect_sync, list(frames), version)

    def voter(self, version: str) -> Inspector | None:
        """The loaded Inspector of `version` when it has a sequence vote (`Inspector.vote_track`), else None (also
        when `version` is not loaded)."""
        if self.pool is None:
            return None
        try:
            insp = self.pool.get(version)
        except KeyError:
            return None
        if version not in self._votes:
            self._votes[version] = has_sequence_vote(insp)
        return insp if self._votes[version] else None

    @property
    def versions(self) -> list[str]:
        """Model versions loaded now."""
        return self.pool.versions if self.pool is not None else []

    async def refresh_models(self, in_use: Sequence[str] = ()) -> None:
        """Load every promoted model (plant, line and camera scopes) that is not loaded yet, in the
        executor thread; a checkpoint that fails to load is logged, counted and tried again after a
        backoff, or at once when it is promoted again (`InspectorPool.ensure`). Models no open part
        (`in_use`) and no current promotion needs may be evicted beyond the pool's bound."""
        await self.ensure_loaded()
        if self.pool is None:
            return
        wanted = self.selection.wanted()
        seqs = self.selection.promotion_seq
        if self.pool.missing(wanted, seqs):
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self.pool.sync, wanted, list(in_use), seqs)
        else:
            self.pool.release(set(in_use) | {p.model_version for p in wanted})

    @property
    def load_failures(self) -> list[LoadFailure]:
        """Current promotions whose model failed to load (retried with backoff)."""
        if self.pool is None:
            return []
        wanted = {(p.model_path, p.model_version) for p in self.selection.wanted()}
        return [f for f in self.pool.failures if (f.model_path, f.model_version) in wanted]

    async def run(self, fn: Callable[..., R], *args: Any) -> R:
        """Run another blocking step (e.g. image decoding) on the same thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
