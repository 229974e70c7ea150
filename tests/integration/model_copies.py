"""Checkpoint directories the integration tests derive from a strong one."""
from __future__ import annotations

import shutil
from pathlib import Path


def weak_copy(det: Path, cls: Path, out: Path) -> Path:
    """`out/` holding the detector `det` with its output bias pushed far down (severity clamps to 0 everywhere: a
    detector that finds nothing) beside a copy of the classifier `cls`; returns `out`."""
    return shifted_copy(det, cls, out, -50.0, "deliberately weak")


def shifted_copy(det: Path, cls: Path, out: Path, shift: float, why: str) -> Path:
    """`out/` holding the detector `det` with `shift` added to its output bias (below 0 it finds less, above 0 it
    sees defects where there are none) beside a copy of the classifier `cls`; returns `out`."""
    from models.core.checkpoints import load_checkpoint, save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    loaded = load_checkpoint(det, expected_kind="detector")
    sd = dict(loaded.state_dict)
    head = "head.bias" if "head.bias" in sd else [k for k in sd if k.endswith("bias")][-1]
    sd[head] = sd[head] + shift
    i = loaded.info
    save_checkpoint(out / det.name, sd, kind="detector", arch=i.arch, arch_config=i.arch_config,
                    input_spec=i.input_spec, class_names=i.class_names, threshold=i.threshold,
                    train_data={**i.train_data, "derived": f"head bias {shift:+g} ({why})"})
    for f in (cls, cls.with_suffix(".json")):
        if f.exists():
            shutil.copy(f, out / f.name)
    return out
