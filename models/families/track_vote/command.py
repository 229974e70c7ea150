"""`defectstream train track-vote`: the sequence vote's own options, with their real defaults."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

from models.core.families import TrainCommand, TrainOption

_OWN = (
    TrainOption("--beside", "a model directory whose checkpoints are copied into --out first, so that --out is that "
                "model with the sequence vote (its class names are the vote's)", metavar="MODEL",
                default_text="none (the generator's classes; copy the checkpoints in yourself)"),
    TrainOption("--parts", "training part sequences to render", type=int, default=600),
    TrainOption("--val-parts", "validation part sequences (the seed range after the training one)", type=int,
                default=150),
    TrainOption("--frames-per-part", "frames per rendered part", type=int, default=6),
    TrainOption("--epochs", "passes over the training tracks, validating after each (the one engine keeps the weights "
                "of the best smoothed validation accuracy)", type=int, default=8),
    TrainOption("--size", "crop side in pixels", type=int, default=64),
    TrainOption("--quiet", "no progress bars", switch=True, default=False),
    TrainOption("--resume", "continue from the training state in --out", switch=True, default=False),
)


def _run(values: Mapping[str, Any], log: Callable[[str], None]) -> str:
    from models.data.synthetic import CLASS_NAMES
    from models.families.track_vote.train import VoteTrainConfig, train_track_vote

    if values.get("data") or values.get("format") not in (None, "plain", "synthetic"):
        raise ValueError("train track-vote learns from part sequences whose defects are known on every frame; "
                         "here only the synthetic generator provides them (leave out --data/--format)")
    classes = list(CLASS_NAMES)
    out = Path(values["out"])
    if values.get("beside"):
        from models.core.checkpoints import list_checkpoints

        src = Path(values["beside"])
        if not src.is_dir():
            raise ValueError(f"--beside {src}: not a model directory")
        names = {c for info in list_checkpoints(src) if info.kind != "track-vote" for c in info.class_names}
        classes = [c for c in CLASS_NAMES if c in names]
        if not classes:
            raise ValueError(f"--beside {src}: its classes {sorted(names) or 'none'} share none with the generator's "
                             f"({', '.join(CLASS_NAMES)})")
        out.mkdir(parents=True, exist_ok=True)
        for p in src.glob("*"):
            if p.is_file() and p.suffix in (".pt", ".json") and not p.name.startswith("track_vote."):
                shutil.copy2(p, out / p.name)
    cfg = VoteTrainConfig(out=str(out), seed=200_000 + int(values.get("seed") or 0),
                          threads=int(values.get("threads") or 2), progress=not values.get("quiet"),
                          resume=bool(values.get("resume")))
    for key in ("parts", "val_parts", "frames_per_part", "epochs", "size"):
        if values.get(key) is not None:
            if int(values[key]) < 1:
                raise ValueError(f"--{key.replace('_', '-')} must be at least 1, got {values[key]}")
            setattr(cfg, key, int(values[key]))
    path, _losses, fig = train_track_vote(cfg, classes, log)
    return (f"wrote {path} (validation accuracy {fig['accuracy']:.4f}"
            + (f", imprint {fig['imprint_accuracy']:.4f}" if "imprint_accuracy" in fig else "") + ")")


COMMAND = TrainCommand(
    name="track-vote", help="train the sequence vote (a CNN+RNN over a tracked defect's crops across a part's frames)",
    description=("Train the sequence vote: EfficientNet-Lite0 features of each crop of a tracked defect, a "
                 "bidirectional GRU over the part's frames, one class per track. It sits beside any model's "
                 "checkpoints (track_vote.pt) and replaces the tracker's confidence x severity vote where it is "
                 "present. It learns from part sequences whose defects are known on every frame: here the "
                 "synthetic generator's.\n\nexample:\n"
                 "  defectstream train track-vote --beside models/checkpoints --out runs/voted"),
    options=_OWN, run=_run,
    data_help="not used: the training tracks come from the synthetic part generator")
