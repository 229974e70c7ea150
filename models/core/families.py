"""The family registry: one `FamilySpec` per model family, `register_family` / `get_family` / `list_families`.

Like torchvision's `register_model` / `get_model` / `list_models`: each family folder
(`models/families/<name>/`) registers its spec when `models.families` is imported, and everything
outside the folder (loading, identity, `models list`, replay, evaluate, the benchmarks) asks the
spec instead of comparing the family's name. A new family is one folder and one line in
`models/families/__init__.py`; the conformance test (`tests/unit/models/test_families_conformance.py`)
then covers it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

from models.core.checkpoints import CheckpointError, LoadedCheckpoint

__all__ = ["FamilySpec", "RetuneRequest", "TinyRun", "TrainOption", "TrainCommand", "train_commands", "register_family", "get_family", "list_families", "family_specs",
           "wrapper_specs"]


@dataclass(frozen=True)
class RetuneRequest:
    """What `defectstream train threshold` asks of a family: re-choose its post-processing in `out`."""

    out: str
    data: str | None = None
    fmt: str = "plain"
    val_data: str | None = None
    val_split: float = 0.2
    split_seed: int = 0
    threads: int = 1
    arch: str | None = None  # a variant inside the directory (e.g. the severity detector's arch)
    val_frames: int | None = None  # synthetic validation frames, where the family tunes on synthetic data


@dataclass(frozen=True)
class TrainOption:
    """One option of `defectstream train <command>`, declared by the family that trains it (`streams/commands`
    builds the parser from it; `models/` parses nothing).

    `default` is the value the family's training really uses when the option is not given; when the value is
    chosen at run time (from the data, or per variant), `default` is None and `default_text` says how (e.g.
    "chosen from the data: ..."). `switch` options take no value: giving them stores `not default`.
    """

    flag: str  # "--epochs"
    help: str
    type: Callable[[str], Any] | None = str
    default: Any = None
    default_text: str | None = None
    choices: tuple[Any, ...] | None = None
    switch: bool = False
    dest: str | None = None
    metavar: str | None = None

    @property
    def key(self) -> str:
        """The name under which the parsed value reaches the family's `run`."""
        return self.dest or self.flag.lstrip("-").replace("-", "_")

    def help_text(self) -> str:
        """The help with its default (the given value, or how it is chosen)."""
        if self.switch:
            return self.help
        shown = self.default_text if self.default_text is not None else (
            "none" if self.default is None else str(self.default))
        return f"{self.help} (default: {shown})"


@dataclass(frozen=True)
class TrainCommand:
    """`defectstream train <name>`: what one family trains, its own options and the call that trains it.

    `run(values, log)` gets every parsed option by `TrainOption.key` (the common ones too: data, format, val_data,
    val_split, split_seed, out, seed, threads) and returns the summary line to print; it raises
    DatasetError/CheckpointError/ValueError for data or options that do not fit (the CLI prints them).
    `data_help` describes `--data` for this command (e.g. whether it falls back to synthetic frames).
    """

    name: str
    help: str
    description: str
    options: tuple[TrainOption, ...]
    run: Callable[[Mapping[str, Any], Callable[[str], None]], str]
    data_help: str = "training images of the plant (a path; see --format)"


class TinyRun(NamedTuple):
    """What a family's tiny example training returns: the model directory and its losses, first to last."""

    directory: Path
    losses: list[float]


@dataclass(frozen=True)
class FamilySpec:
    """What the rest of the code may know about one family.

    Attributes:
        name: the Inspector's `family` ("gate+" is prefixed by the wrapper when gated).
        roles: checkpoint roles of a model of this family in version/hash order (e.g. detector, classifier).
        claim: (directory, selected .pt file or None, variant) -> {role: path} when the directory holds a
            model of this family (None when not); raises CheckpointError for an incomplete one.
        owns: whether a selected `.pt` file picks this family (e.g. `segmenter.pt`, `detector_fast.pt`).
        load: ({role: path}, device) -> Inspector; for a wrapper ({role: path}, device, inner Inspector).
        selectors: directory -> the paths that each select one model of this family in it (`models list`).
        check: validates the loaded checkpoints together (e.g. class names agree); raises CheckpointError.
        retune: re-chooses the post-processing (`train threshold`); returns the line to print.
        bench_networks: (Inspector, frames) -> {network name: (runner, input tensor)} for the benchmarks.
        example: module with `tiny_model(directory) -> Path` (tiny confident random weights) and
            `tiny_train(directory) -> TinyRun` (seconds of training on tiny data), for the conformance test.
        wraps: a wrapper (the gate) runs in front of another family's model instead of being one.
        priority: order in which families claim a directory (lower first).
        masks: whether its detections carry masks; a box detector's have `mask=None` and `area_px=0` (no pixel
            area is known, none is invented).
        train: the `defectstream train` subcommands this family declares, with their own options and defaults.
    """

    name: str
    roles: tuple[str, ...]
    claim: Callable[[Path, Path | None, str | None], dict[str, Path] | None]
    load: Callable[..., Any]
    owns: Callable[[Path], bool] = lambda p: False
    selectors: Callable[[Path], list[Path]] = lambda d: []
    check: Callable[[Mapping[str, LoadedCheckpoint]], None] | None = None
    retune: Callable[[RetuneRequest], str] | None = None
    bench_networks: Callable[[Any, list], dict[str, tuple[Callable[[Any], Any], Any]]] | None = None
    example: str = ""
    wraps: bool = False
    priority: int = 100
    masks: bool = True
    options: tuple[str, ...] = field(default=())  # Inspector attributes a setting may override (`model.flip_tta`)
    train: tuple[TrainCommand, ...] = field(default=())  # the `defectstream train <command>`s of this family


_FAMILIES: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add `spec` to the registry (once per name). Raises ValueError for a second spec of that name."""
    if spec.name in _FAMILIES and _FAMILIES[spec.name] is not spec:
        raise ValueError(f"model family {spec.name!r} is registered twice")
    _FAMILIES[spec.name] = spec
    return spec


def get_family(name: str) -> FamilySpec:
    """The spec of family `name` (an Inspector's `family`, "gate+" prefix allowed). Raises CheckpointError."""
    base = name.rpartition("+")[2]
    try:
        return _FAMILIES[base]
    except KeyError:
        raise CheckpointError(f"unknown model family {name!r}; known: {', '.join(list_families())}") from None


def list_families() -> list[str]:
    """Names of every registered family, wrappers included, in claim order (import `models.families` first)."""
    return [s.name for s in sorted(_FAMILIES.values(), key=lambda s: (s.priority, s.name))]


def family_specs() -> list[FamilySpec]:
    """The specs of the families that inspect (not wrappers), in claim order."""
    return [s for s in sorted(_FAMILIES.values(), key=lambda s: (s.priority, s.name)) if not s.wraps]


def wrapper_specs() -> list[FamilySpec]:
    """The specs of the wrappers (run in front of another family's model), in claim order."""
    return [s for s in sorted(_FAMILIES.values(), key=lambda s: (s.priority, s.name)) if s.wraps]


def train_commands() -> list[TrainCommand]:
    """Every family's `train` subcommands, in claim order. Raises ValueError when two families declare one name."""
    seen: dict[str, str] = {}
    out: list[TrainCommand] = []
    for spec in sorted(_FAMILIES.values(), key=lambda s: (s.priority, s.name)):
        for cmd in spec.train:
            if cmd.name in seen:
                raise ValueError(f"train {cmd.name!r} is declared by both {seen[cmd.name]!r} and {spec.name!r}")
            seen[cmd.name] = spec.name
            out.append(cmd)
    return out
