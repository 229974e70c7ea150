"""`defectstream score`: pipeline output or an offline run against simulator ground truth (`streams.sim.scoring`)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from streams.commands.options import UsageError, deprecated_alias
from streams.settings import Settings
from streams.sim import scoring
from streams.sim.scoring import (
    OfflineConfig,
    markdown_table,
    models_table,
    read_defects_file,
    read_topic_events,
    run_offline,
    score_defect_events,
    score_offline,
    sweep_table,
    verdict_check,
)
from streams.sim.simulator import read_ground_truth

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score pipeline output (or an offline Inspector+tracker run) against ground truth",
                       description=scoring.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--defects-topic", nargs="?", const="", help="read DefectEvents from this topic (default: settings)")
    src.add_argument("--from-file", type=Path, help="JSONL of DefectEvent dicts")
    src.add_argument("--offline", action="store_true", help="render parts and run Inspector + tracker directly")
    p.add_argument("--ground-truth", type=Path, help="simulator ground truth JSONL (topic/file modes)")
    p.add_argument("--parts-topic", nargs="?", const="", help="topic mode: also check one verdict per part on this topic")
    p.add_argument("--parts", type=int, default=500, help="offline: parts to render")
    p.add_argument("--seed", type=int, default=1000, help="offline: first part seed")
    p.add_argument("--frames-per-part", type=int, default=6, help="offline: frames per part")
    p.add_argument("--defect-rate", type=float, default=0.5, help="offline: share of parts with a defect")
    p.add_argument("--no-speed", action="store_true", help="offline: estimate motion from detections")
    p.add_argument("--sweep", action="store_true", help="offline: also score a grid of (min_hits, min_hit_ratio)")
    p.add_argument("--model", dest="model_path", metavar="DIR", action="append",
                   help="model directory or checkpoint (default: settings model.path, else the packaged one); "
                        "offline: give it several times to score several models (e.g. the He & Liu severity family "
                        "and a box detector) on the same parts, in one table")
    deprecated_alias(p, "--model-path", "--model", "model_path", append=True)
    p.add_argument("--cache", type=Path, help="offline: keep the detections in this file (re-score without the model); "
                                              "with several --model, one file per model (`FILE.<n>`)")
    p.add_argument("--json-out", type=Path, help="also write the JSON result here")
    p.set_defaults(func=run_score)


def run_score(args: argparse.Namespace) -> int:
    settings = Settings()
    if args.offline:
        cfg = OfflineConfig(parts=args.parts, seed=args.seed, frames_per_part=args.frames_per_part,
                            defect_rate=args.defect_rate, use_speed=not args.no_speed)
        paths = args.model_path or [settings.model.path]
        results = []
        for n, model_path in enumerate(paths):
            cache = args.cache if args.cache is None or len(paths) == 1 else args.cache.with_name(f"{args.cache.name}.{n}")
            results.append(_score_model(settings, cfg, model_path, cache, sweep=args.sweep))
        result = results[0] if len(results) == 1 else {"models": results}
        if len(results) > 1:
            print(models_table(results))
        for r in results:
            if len(results) == 1:
                print(markdown_table(r["rows"][:1]))
            if args.sweep:
                print()
                print(sweep_table(r["rows"]))
    else:
        if not args.ground_truth:
            print("--ground-truth is required with --defects-topic/--from-file", file=sys.stderr)
            return 2
        for what, path in (("--ground-truth", args.ground_truth), ("--from-file", args.from_file)):
            if path and not Path(path).is_file():
                raise UsageError(f"{what}: no such file {path}")
        gts = read_ground_truth(args.ground_truth)
        if args.from_file:
            defects = read_defects_file(args.from_file)
        else:
            from streams import preflight

            preflight.check_kafka(settings.kafka)
            defects = read_topic_events(settings, args.defects_topic or settings.kafka.topics.defects)
        s = score_defect_events(gts, defects)
        result = {"tracked": s.summary()}
        if args.parts_topic is not None:
            verdicts = read_topic_events(settings, args.parts_topic or settings.kafka.topics.parts, event="PartInspected")
            result["verdicts"] = verdict_check(gts, verdicts)
        print(json.dumps(result, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    elif args.offline:
        print(json.dumps(result["defaults"] if "defaults" in result else [r["defaults"] for r in result["models"]],
                         indent=2))
    return 0


def _score_model(settings: Settings, cfg: OfflineConfig, model_path: str | None, cache: Path | None, *,
                 sweep: bool) -> dict:
    """The offline run of one model (from `cache` when it holds this run) scored under the tracking settings
    (and the sweep grid); with its sequence vote, when the model has one, on the default row."""
    from models.core.types import has_sequence_vote
    from models.loading import load_inspector

    # what the cached detections depend on (delete the cache after retraining a checkpoint)
    key = (cfg.parts, cfg.seed, cfg.frames_per_part, cfg.frame_shape, cfg.defect_rate, model_path)
    run = scoring.load_offline_run(cache, key) if cache and cache.exists() else None
    insp = load_inspector(model_path, device=settings.model.device, runtime=settings.model.runtime,
                          export_cache=settings.model.export_cache)
    # a model with a sequence vote (track_vote.pt beside it) is also scored with the vote classing the tracks
    vote = scoring.SequenceVote(insp, cfg.defect_rate) if has_sequence_vote(insp) else None
    if run is None:
        run = run_offline(insp, cfg)
        if cache:
            scoring.save_offline_run(run, key, cache)
    t = settings.tracking
    grid = [(t.min_hits, t.min_hit_ratio, t.short_track_min_confidence)]
    if sweep:
        grid += [(k, r, c) for k in (2, 3) for r in (0.5, 0.6, 0.67, 0.75, 0.8, 1.0)
                 for c in (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)]
    rows = []
    seen = set()
    for k, r, c in grid:
        if (k, r, c) in seen:
            continue
        seen.add((k, r, c))
        ts = t.model_copy(update={"min_hits": k, "min_hit_ratio": r, "short_track_min_confidence": c})
        rows.append(score_offline(run, ts, frame_ms=cfg.frame_ms, use_speed=cfg.use_speed,
                                  vote=vote if not rows else None))  # the vote on the default row only
    return {"model": str(model_path or "packaged"), "family": insp.family, "model_version": run.model_version,
            "parts": cfg.parts, "frames": run.frames,
            "inference_ms_per_frame": round(1000 * run.inference_s / max(1, run.frames), 2),
            "defaults": rows[0], "rows": rows}
