"""The sequence vote (`track_vote.pt`): a CNN+RNN over a tracked defect's crops across a part's frames, beside any
family's model; it adds `vote_track` to the Inspector and leaves the detections as they are."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from models.core.backbone import to_input
from models.core.families import FamilySpec, register_family
from models.families.track_vote import command as _command
from models.families.track_vote.model import FILE, TrackVotedInspector


def _claim(d: Path, selected: Path | None, arch: str | None) -> dict[str, Path] | None:
    return {"track-vote": d / FILE} if (d / FILE).is_file() else None


def _bench_networks(insp: Any, frames: list) -> dict[str, tuple[Any, Any]]:
    from models.families.track_vote.model import crop_box

    h, w = frames[0].shape[:2]
    crops = [crop_box(f, (w // 4, h // 4, w // 2, h // 2), insp.size) for f in frames[:6]]
    return {"track-vote": (insp._run, to_input(crops))}


SPEC = register_family(FamilySpec(
    name="track-vote", roles=("track-vote",), claim=_claim,
    load=lambda files, device, inner: TrackVotedInspector.load(files["track-vote"], inner, device=device),
    bench_networks=_bench_networks, example="models.families.track_vote.example", wraps=True, priority=95,
    train=(_command.COMMAND,)))
