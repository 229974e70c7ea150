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
    import models.families  # noqa: F401  (registers every family and its train commands)
    from models.core.families import train_commands

    tr = subparsers.add_parser(
        "train",
        help="train a model of any family (see `train <command> --help` for its own options and defaults)",
        description=(
            "Train a model. Each command below belongs to a model family (models/families/) and has its own "
            "options with their real defaults: `defectstream train <command> --help`. Shows a progress bar, "
            "writes a resumable training state and a registry checkpoint (weights + content hash + metadata "
            "with every choice made from the data) at the end."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = tr.add_subparsers(dest="what", metavar="COMMAND", required=True)
    for cmd in train_commands():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _common_train_options(p, cmd.data_help)
        for opt in cmd.options:
            _add_option(p, opt)
        p.set_defaults(func=_train, train_command=cmd)
    th = sub.add_parser(
        "threshold", help="re-choose the post-processing of the model in --out (any family that has one)",
        description=("Re-choose the post-processing of the model in --out through its family (e.g. the severity "
                     "detector's T, hysteresis, hole filling and flip TTA by mean IoU of the whole pipeline, the "
                     "segmenter's per-class thresholds): on its synthetic validation frames where the family tunes "
                     "on them, or with --data on the validation images of the plant's data."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_train_options(th, "the plant's data to tune on (a path; see --format); default: the family's own "
                              "validation frames")
    th.add_argument("--arch", default=None, help="a variant in --out (the severity detector's paper/fast; default: "
                                                 "the only one)")
    th.add_argument("--val-frames", type=int, default=None,
                    help="synthetic validation frames, where the family tunes on them (default: the family's)")
    th.set_defaults(func=_retune)

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
    ev.add_argument("--int8-calibration", default=None, metavar="DIR",
                    help="--runtime onnxruntime-int8: calibrate on this folder of the plant's own images (e.g. the "
                         "model's training images; default: synthetic frames, which fit only the packaged model)")
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


_COMMON_KEYS = ("data", "format", "val_data", "val_split", "split_seed", "out", "seed", "threads")


def _common_train_options(p: argparse.ArgumentParser, data_help: str) -> None:
    """The options every `train` command takes (data, split, output, seed, threads)."""
    p.add_argument("--data", default=None, help=data_help)
    p.add_argument("--format", choices=_FORMATS, default="plain",
                   help="layout of --data: plain (images/, masks/ with class ids, classes.txt), dagm, neu, neu-cls, "
                        "severstal, mvtec, magnetic-tile, elpv (labels.csv: probability >= 0.5 = defective; image "
                        "classifier / gate only), synthetic (default plain)")
    p.add_argument("--val-data", default=None, help="validation images (same format); default: split off --val-split")
    p.add_argument("--val-split", type=float, default=0.2,
                   help="fraction of --data held out for validation when --val-data is not given (default 0.2)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the --val-split draw (recorded in the checkpoint)")
    p.add_argument("--out", required=True, help="output directory for checkpoints and training state")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation and sampling (default 0)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")


def _checked(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """`convert` with its ValueError shown as argparse's usage error."""
    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _add_option(p: argparse.ArgumentParser, opt: Any) -> None:
    """One family-declared `TrainOption` (its help shows the default; unset valued options reach the family as
    None, so the family's own default applies)."""
    if opt.switch:
        p.add_argument(opt.flag, dest=opt.key, action="store_false" if opt.default else "store_true",
                       help=opt.help_text())
        return
    kw: dict[str, Any] = {"dest": opt.key, "default": None, "help": opt.help_text()}
    if opt.choices is not None:
        kw["choices"] = opt.choices
    if opt.type is not None and opt.type is not str:
        kw["type"] = _checked(opt.type)
    if opt.metavar:
        kw["metavar"] = opt.metavar
    p.add_argument(opt.flag, **kw)


def _train(args: argparse.Namespace) -> int:
    """`train <command>`: the family that declared the command trains (its `TrainCommand.run`)."""
    cmd = args.train_command
    values = {k: getattr(args, k) for k in _COMMON_KEYS}
    values.update({o.key: getattr(args, o.key) for o in cmd.options})
    try:
        print(cmd.run(values, lambda line: print(line, flush=True)))
    except ValueError as e:  # options that do not fit together (DatasetError is raised to the CLI's handler)
        from models.data.datasets import DatasetError

        if isinstance(e, DatasetError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
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
    # --held-out: each model on the images its own training split held out (names recorded in its checkpoint)
    samples_for = (lambda d: _held_out(samples, args.data, d, None)) if getattr(args, "held_out", False) else None
    try:
        rows = evaluate_families(args.checkpoint or DEFAULT_CHECKPOINT_DIR, samples, fams, device=args.device,
                                 samples_for=samples_for)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    what = "the images each model's training held out" if samples_for is not None else f"{len(samples)} images"
    md = family_table(rows, f"Every family on {args.format}: {args.data} ({what})")
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
                              runtime=getattr(args, "runtime", "torch"), export_cache=getattr(args, "export_cache", None),
                              calibration=getattr(args, "int8_calibration", None))
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
