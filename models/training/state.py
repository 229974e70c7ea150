"""Training state for `--resume` and the progress bar, shared by every trainer.

A state file holds only tensors and plain types (weights, optimiser and schedule state dicts, the
sampler's RNG state, progress), so it is read with `torch.load(weights_only=True)`: no pickled
objects, nothing in the file can run code when a run resumes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_state", "read_state", "restore_state", "load_state", "progress"]


def save_state(path: Path, model: Any, opt: Any, sched: Any, rng: np.random.Generator, **progress: Any) -> None:
    """Write everything `--resume` needs (weights, optimiser, schedule, sampler RNG, `progress`), atomically
    (temp file + rename: an interrupted write never leaves a truncated state)."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "rng": rng.bit_generator.state, **progress}, tmp)
    os.replace(tmp, path)


def read_state(path: Path) -> dict:
    """The saved dict, read without unpickling objects (`weights_only=True`)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def restore_state(st: dict, model: Any, opt: Any, sched: Any, rng: np.random.Generator) -> dict:
    """Put a state read by `read_state` back into the given objects; returns it (the progress)."""
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["opt"])
    sched.load_state_dict(st["sched"])
    rng.bit_generator.state = st["rng"]
    return st


def load_state(path: Path, model: Any, opt: Any, sched: Any, rng: np.random.Generator) -> dict:
    """`read_state` + `restore_state`."""
    return restore_state(read_state(path), model, opt, sched, rng)


def progress(total: int, desc: str, initial: int = 0, disable: bool = False, **kw: Any) -> Any:
    """A tqdm bar redrawn at most once a second (loss and ETA go in its postfix); `kw` passes tqdm options."""
    from tqdm import tqdm  # imported when a trainer runs, not when the models are

    return tqdm(total=total, desc=desc, initial=initial, disable=disable, dynamic_ncols=True,
                **{"mininterval": 1.0, **kw})
