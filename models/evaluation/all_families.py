"""One table over every registered family: each model found under a root evaluated on the same data (`evaluate --families`).

A model applies to a data set when its class names cover the data set's (a NEU-DET box model on NEU-DET, not a
synthetic segmenter); one row per model: family, model version, the metrics that apply to that family and data
(those the report has a value for), frames/s. Models that do not apply are listed with the reason.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from models.core.checkpoints import CheckpointError
from models.core.types import InspectionSample
from models.data.datasets import DatasetError
from models.evaluation.evaluate import EvalReport, evaluate_inspector
from models.loading import list_families, load_inspector, model_files

__all__ = ["TABLE_METRICS", "FamilyRow", "find_models", "evaluate_families", "family_table"]

# the figures a row may show (in this order), where the report has them
TABLE_METRICS = ("map_50", "map_50_95", "image_accuracy", "image_auroc", "miou_classes_with_background",
                 "pixel_f1", "defect_recall_iou50", "defect_precision_iou50")


class FamilyRow(NamedTuple):
    """One model's line of the table: `report` None (and `skipped` the reason) when it does not apply."""

    directory: Path
    family: str
    model_version: str
    report: EvalReport | None
    skipped: str = ""


def find_models(root: str | Path) -> list[Path]:
    """Every directory at or under `root` that holds a complete model of a registered family, sorted."""
    r = Path(root)
    if not r.is_dir():
        raise CheckpointError(f"model root {r} is not a directory")
    found = []
    for d in sorted({r, *(p for p in r.rglob("*") if p.is_dir())}):
        try:
            model_files(d)
        except CheckpointError:
            continue
        found.append(d)
    return found


def evaluate_families(root: str | Path, samples: Sequence[InspectionSample], families: Sequence[str] | None = None,
                      device: str = "cpu", load: Callable[..., Any] = load_inspector,
                      samples_for: Callable[[Path], Sequence[InspectionSample]] | None = None) -> list[FamilyRow]:
    """Evaluate each model under `root` whose family is in `families` (None = every registered family) on
    `samples` (or on `samples_for(model directory)`, e.g. the images its training held out), where it applies
    (its class names cover the data's). Raises ValueError for an unknown family."""
    known = set(list_families())
    unknown = sorted(set(families or ()) - known)
    if unknown:
        raise ValueError(f"unknown families {unknown}; registered: {', '.join(sorted(known))}")
    data_names = set(samples[0].class_names) if samples else set()
    rows = []
    for d in find_models(root):
        mf = model_files(d)
        if families is not None and mf.family not in families:
            continue
        insp = load(d, device=device)
        missing = sorted(data_names - set(insp.class_names))
        if missing:
            rows.append(FamilyRow(d, insp.family, insp.model_version, None,
                                  f"does not know the data's classes {', '.join(missing)}"))
            continue
        try:
            mine = samples_for(d) if samples_for is not None else samples
        except DatasetError as exc:  # e.g. a model trained with --val-data records no held-out images
            rows.append(FamilyRow(d, insp.family, insp.model_version, None, str(exc)))
            continue
        rows.append(FamilyRow(d, insp.family, insp.model_version, evaluate_inspector(insp, mine)))
    return rows


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def family_table(rows: Sequence[FamilyRow], title: str) -> str:
    """Markdown: one line per evaluated model (family, model version, the metrics any row has, frames/s), then the
    models that did not apply."""
    done = [r for r in rows if r.report is not None]
    cols = [m for m in TABLE_METRICS if any(r.report.metrics.get(m) is not None for r in done)]  # type: ignore[union-attr]
    head = ["family", "model version", *cols, "frames/s"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in done:
        m = r.report.metrics  # type: ignore[union-attr]
        cells = [r.family, r.model_version, *(_fmt(m.get(c)) for c in cols), f"{m['images_per_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    skipped = [r for r in rows if r.report is None]
    if skipped:
        lines += ["", "Not applicable:"] + [f"- {r.family} `{r.model_version}` ({r.directory}): {r.skipped}"
                                            for r in skipped]
    if not rows:
        lines += ["", "No model of the selected families found."]
    return "\n".join(lines) + "\n"
