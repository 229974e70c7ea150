"""Training defaults chosen from the data: crop geometry, step budget, learning-rate schedule, smoothed early stopping, balanced sampling.

Pure functions and small state machines (no torch, no I/O), so that each choice is unit-tested and the engine
(`models.training.lite0`) only prints and records what they return. Issue 22 measured why each exists: a crop
taken from the *smallest* image's side (96 px on a set whose median short side is 258), a budget of 30 epochs that
ended training while the validation metric still rose, early stopping on 7 defective validation images that kept
an epoch chosen by noise, and unbalanced batches on sets that are 70 % defect-free.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Geometry", "choose_geometry", "Budget", "choose_budget", "parse_duration", "lr_factor",
           "StopRule", "choose_stop_rule", "SmoothedStopper", "balanced_order", "MIN_DEFECTIVE_VAL"]

# Below this many defective validation images a validation metric is too noisy to stop on (issue 22: 7 defective
# images moved the metric 0.64 -> 0.54 -> 0.57 between epochs): the run uses its whole budget and keeps the last
# weights, which the annealed learning rate has settled.
MIN_DEFECTIVE_VAL = 20


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """The segmenter's training crop, and the size distribution it was chosen from (recorded in the checkpoint)."""

    patch: int
    median_short: int
    min_short: int
    max_short: int
    padded_share: float  # share of the training images smaller than the crop (padded by reflection)
    rule: str

    def to_dict(self) -> dict:
        return {"patch": self.patch, "median_short_side": self.median_short, "min_short_side": self.min_short,
                "max_short_side": self.max_short, "padded_share": round(self.padded_share, 4), "rule": self.rule}


def choose_geometry(shapes: Sequence[tuple[int, int]], target: int = 256, multiple: int = 32,
                    patch: int | None = None) -> Geometry:
    """The square training crop for images of `shapes` ((h, w) each, after any `--scale`).

    Default: the median image's short side rounded down to `multiple`, at most `target` and at least `multiple`;
    every image gives one crop of that size per draw, an image smaller than it is padded (so one small image
    never shrinks the crop of the whole set, as the old rule — the smallest image's side — did).
    `patch` (given by the user) wins. Raises ValueError for no shapes or a patch that is no multiple.
    """
    if not shapes:
        raise ValueError("no image shapes to choose a crop from")
    shorts = np.array([min(int(h), int(w)) for h, w in shapes])
    med = int(np.median(shorts))
    if patch is not None:
        if patch % multiple or patch < multiple:
            raise ValueError(f"--patch must be a positive multiple of {multiple}, got {patch}")
        p, rule = int(patch), "given (--patch)"
    else:
        p = int(max(multiple, min(target, med // multiple * multiple)))
        rule = f"median short side {med} px rounded down to {multiple}, at most {target}; smaller images padded"
    return Geometry(p, med, int(shorts.min()), int(shorts.max()), float((shorts < p).mean()), rule)


# --------------------------------------------------------------------------------------------
# Budget
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """How long a run trains: `steps` optimisation steps, or `seconds` of wall time if that ends first (None = no
    limit), validating every `eval_every` steps."""

    steps: int
    seconds: float | None
    eval_every: int
    steps_per_pass: int
    rule: str

    def to_dict(self) -> dict:
        return {"steps": self.steps, "seconds": self.seconds, "eval_every": self.eval_every,
                "steps_per_pass": self.steps_per_pass, "passes": round(self.steps / self.steps_per_pass, 2),
                "rule": self.rule}


PASSES = 12.0  # default passes over the training images
MIN_STEPS, MAX_STEPS = 300, 3000
MIN_EVALS, MAX_EVALS = 6, 15


def choose_budget(n_train: int, batch: int, steps: int | None = None, epochs: int | None = None,
                  seconds: float | None = None, unit: str = "images") -> Budget:
    """The step budget of a run over `n_train` images (or crops) in batches of `batch`.

    Given `steps` or `epochs` (passes) win; else `PASSES` passes over the data, clamped to
    [`MIN_STEPS`, `MAX_STEPS`]: a small set still gets enough updates to learn (the 30 epochs of the old
    default were 150 steps on 94 images), a large one a bounded cost (`unit` names the items in the rule). `seconds` (a wall-time budget) stops the run
    earlier and, when no steps are given, replaces the clamp's upper end. Validation runs every pass, but
    at least `MIN_EVALS` and at most `MAX_EVALS` times per run. Raises ValueError for non-positive inputs.
    """
    if n_train < 1 or batch < 1:
        raise ValueError(f"need at least one training image and a batch of at least 1 (got {n_train}, {batch})")
    per_pass = max(1, n_train // batch)
    if steps is not None:
        if steps < 1:
            raise ValueError(f"--steps must be at least 1, got {steps}")
        total, rule = int(steps), "given (--steps)"
    elif epochs is not None:
        if epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {epochs}")
        total, rule = int(epochs) * per_pass, f"given (--epochs {epochs} x {per_pass} steps)"
    elif seconds is not None:
        total, rule = 10 ** 9, f"wall time {seconds:.0f} s (--time-budget)"
    else:
        want = int(round(PASSES * n_train / batch))
        total = int(min(MAX_STEPS, max(MIN_STEPS, want)))
        rule = (f"{PASSES:g} passes over {n_train} {unit} in batches of {batch} = {want} steps, "
                f"clamped to [{MIN_STEPS}, {MAX_STEPS}]")
    if seconds is not None and seconds <= 0:
        raise ValueError(f"--time-budget must be positive, got {seconds}")
    if epochs is not None and steps is None:
        every = per_pass  # the old engine's epochs, kept for --epochs
    elif total >= 10 ** 9:
        every = max(per_pass, 50)
    else:
        every = int(min(max(per_pass, math.ceil(total / MAX_EVALS)), max(1, total // MIN_EVALS)))
    return Budget(total, seconds, max(1, every), per_pass, rule)


def parse_duration(text: str) -> float:
    """Seconds in '20m', '90s', '1h30m', '1.5h' or a bare number of seconds. Raises ValueError otherwise."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", t)
    if not parts or "".join(f"{a}{b}" for a, b in parts) != re.sub(r"\s+", "", t):
        raise ValueError(f"not a duration: {text!r} (e.g. 20m, 90s, 1h30m)")
    return float(sum(float(a) * {"h": 3600, "m": 60, "s": 1}[b] for a, b in parts))


def lr_factor(progress: float, warmup: float = 0.05, floor: float = 0.02) -> float:
    """Learning-rate multiplier at `progress` in [0, 1] of the budget (steps or wall time, whichever is further):
    linear warm-up over `warmup`, then cosine down to `floor` — so the last weights are settled whenever the
    budget ends, which is what a run that cannot stop early keeps."""
    p = min(1.0, max(0.0, float(progress)))
    if p < warmup:
        return floor + (1.0 - floor) * p / warmup
    q = (p - warmup) / max(1e-9, 1.0 - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * q))


# --------------------------------------------------------------------------------------------
# Early stopping
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StopRule:
    """Early stopping on an EMA of the validation metric: allowed after `min_steps`, once `patience` validations
    brought no better smoothed value; `enabled` False = the whole budget runs and the last weights are kept."""

    enabled: bool
    min_share: float  # share of the budget (steps or wall time, whichever is further) before stopping may act
    patience: int
    smoothing: float  # EMA weight of the newest validation value
    keep: str  # "best smoothed" | "last"
    rule: str
    min_delta: float = 1e-3  # a smoothed value must beat the best by this much to count as better

    def to_dict(self) -> dict:
        return {"enabled": self.enabled, "min_share": self.min_share, "patience": self.patience,
                "smoothing": self.smoothing, "min_delta": self.min_delta, "keep": self.keep, "rule": self.rule}


def choose_stop_rule(n_val_defective: int, patience: int | None = None, min_share: float = 0.5) -> StopRule:
    """Early stopping fitted to the validation set's size.

    With fewer than `MIN_DEFECTIVE_VAL` defective validation images no early stopping and the last weights
    (a validation metric over so few defects moves more from noise than from training); else stopping after
    `min_share` of the budget, `patience` (default 3) validations without a better EMA (weight 0.5) of the metric,
    keeping the weights of the validation where the smoothed metric peaked (better = by more than 0.001, so a
    metric that has saturated, e.g. an accuracy of 1.0, does stop).
    """
    pat = 3 if patience is None else int(patience)
    if n_val_defective < MIN_DEFECTIVE_VAL:
        return StopRule(False, 1.0, pat, 0.5, "last",
                        f"{n_val_defective} defective validation images < {MIN_DEFECTIVE_VAL}: no early stopping, "
                        "the whole budget, the last weights")
    return StopRule(True, min_share, pat, 0.5, "best smoothed",
                    f"{n_val_defective} defective validation images: after {min_share:.0%} of the budget, stop once "
                    f"{pat} validations bring no EMA(0.5) of the metric better by 0.001; keep the weights at its peak")


class SmoothedStopper:
    """Feeds validation values through the EMA of a `StopRule` and says which to keep and when to stop.

    `update(value)` returns True when these weights are the ones to keep now (the best smoothed value so far,
    or every time when the rule keeps the last); `should_stop(progress)` (share of the budget spent) says whether
    to stop after it.
    """

    def __init__(self, rule: StopRule) -> None:
        self.rule = rule
        self.ema: float | None = None
        self.best = -math.inf
        self.best_index = -1
        self.index = -1

    def update(self, value: float) -> bool:
        self.index += 1
        a = self.rule.smoothing
        self.ema = float(value) if self.ema is None else a * float(value) + (1 - a) * self.ema
        if self.best_index < 0 or self.ema > self.best + self.rule.min_delta:
            self.best, self.best_index = self.ema, self.index
            return True
        return self.rule.keep == "last"

    def should_stop(self, progress: float) -> bool:
        r = self.rule
        return r.enabled and progress >= r.min_share and self.index - self.best_index >= r.patience

    def state(self) -> dict:
        return {"ema": self.ema, "best": self.best, "best_index": self.best_index, "index": self.index}

    def load(self, st: dict) -> None:
        self.ema, self.best, self.best_index, self.index = st["ema"], st["best"], st["best_index"], st["index"]


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------
def balanced_order(defective: Sequence[bool], n: int, rng: np.random.Generator, share: float = 0.5) -> np.ndarray:
    """`n` training indices, `share` of them drawn from the defective items and the rest from the good ones
    (each group walked in shuffled passes, so every item comes up before any repeats); a uniform shuffled walk
    when one group is empty. Sets that are 70 % defect-free thus still give half-defective batches."""
    d = np.asarray(defective, bool)
    pos, neg = np.flatnonzero(d), np.flatnonzero(~d)
    if len(pos) == 0 or len(neg) == 0:
        return _walk(np.arange(len(d)), n, rng)
    k = int(round(share * n))
    out = np.concatenate([_walk(pos, k, rng), _walk(neg, n - k, rng)])
    return out[rng.permutation(len(out))]


def _walk(items: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if n <= 0 or len(items) == 0:
        return np.zeros(0, np.int64)
    reps = int(math.ceil(n / len(items)))
    return np.concatenate([items[rng.permutation(len(items))] for _ in range(reps)])[:n].astype(np.int64)
