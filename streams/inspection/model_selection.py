"""Which model inspects a camera's part: scoped promotions from the `cameras` topic, switched at part boundaries.

`defectstream models promote` publishes a :class:`Promotion` on the compacted `cameras` topic under
a reserved key that names its scope:

* ``*`` — plant-wide (every camera; the only key older releases wrote, still read as such);
* ``*line:<line id>`` — the cameras of one line;
* ``*camera:<camera id>`` — one camera.

A tombstone (null value) on one of these keys clears that scope's promotion (`models promote
--clear`). Workers follow the topic from its start, so every worker (and a restarted one) learns
the current promotions. The rules, pure and unit-tested:

* a part keeps the model version it was opened with until it closes (its tracks, votes and event
  ids belong to one model) while that model is loaded, so a switch happens at the camera's next
  part boundary (for a part whose model is gone, see the last rule);
* a new part uses the first of these whose Inspector is loaded:
  1. the camera-scoped promotion;
  2. the camera's pinned ``model_version`` from its camera config (a canary / hold-back: it keeps
     a camera on a version while a line or the plant moves on; an explicit camera promotion is
     the newer, more specific order and wins over it);
  3. the promotion of the camera's line (the camera config's ``line_id`` when set, else the
     frame's ``line_id``, the same line its parts are reported under);
  4. the plant-wide promotion;
  5. the worker's configured default;
* a promotion whose checkpoint is not loaded (yet, or at all: missing file, hash mismatch) is
  skipped, so the camera falls through to the next rule (logged and counted when loading fails);
  a failed load is retried with exponential backoff (`LoadBackoff`) and at once when the scope is
  promoted again, never blocked for the life of the process;
* within one scope the record read last wins: promotions are ordered by the topic's offsets (one
  key lives on one partition), never by ``promoted_at``, which is a wall clock of the machine that
  promoted (a clock an hour ahead must not make workers ignore the promotions after it); a record
  at an offset already applied (re-read) changes nothing;
* every record is validated (`PromotionRecord`, pydantic, strict types, bounded JSON nesting): a bad
  one is logged and skipped (`apply` returns True: it was a scope key, not a camera), never raises;
* an open part whose model can no longer be loaded (its promotion was replaced and the worker
  restarted, the partition moved to a worker that never loaded it, or a redeploy with another
  ``MODEL__PATH``) finishes on the model a new part of its camera would get now, and its verdict
  says so (`streams.tracking.tracker.PartState.opened_model_version`,
  ``PartInspected.opened_model_version``): the partition never stops for it.

:class:`InspectorPool` holds several loaded Inspectors by version (loading happens in the
inference thread): the default, every current promotion's, and every open part's are never
evicted; other versions are dropped, least recently used first, beyond `max_loaded`.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from typing import Callable, Iterable, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from models.core.types import Inspector

log = logging.getLogger(__name__)

PROMOTION_KEY = "*"  # the plant-wide scope
LINE_PREFIX = "*line:"
CAMERA_PREFIX = "*camera:"
PROMOTION_KIND = "model_promotion"
CONTROL_PREFIX = "*"  # every key that starts with it is a control record, never a camera id
MAX_CONTROL_RECORD_BYTES = 64 * 1024  # a promotion is a few hundred bytes; anything this large is not one


class Scope(NamedTuple):
    """Where a promotion applies: kind "plant" (name None), "line" or "camera" (name = its id)."""

    kind: str
    name: str | None = None

    @property
    def key(self) -> str:
        """The `cameras` topic key of this scope."""
        if self.kind == "plant":
            return PROMOTION_KEY
        return (LINE_PREFIX if self.kind == "line" else CAMERA_PREFIX) + str(self.name)

    def __str__(self) -> str:
        return "plant" if self.kind == "plant" else f"{self.kind} {self.name}"


PLANT = Scope("plant")


def scope_of(camera: str | None = None, line: str | None = None) -> Scope:
    """The scope of a promotion for `camera` or `line` (neither: plant-wide).

    Raises:
        ValueError: both are given, or one is empty.
    """
    if camera is not None and line is not None:
        raise ValueError("a promotion is for one camera or one line, not both")
    if camera is not None or line is not None:
        name = camera if camera is not None else line
        if not name or not str(name).strip():
            raise ValueError("an empty camera/line id")
        return Scope("camera" if camera is not None else "line", str(name))
    return PLANT


def parse_scope(key: bytes | str | None) -> Scope | None:
    """The scope a `cameras` record key names; None for a camera-config key (or no key)."""
    if key is None:
        return None
    k = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    if k == PROMOTION_KEY:
        return PLANT
    for prefix, kind in ((LINE_PREFIX, "line"), (CAMERA_PREFIX, "camera")):
        if k.startswith(prefix) and len(k) > len(prefix):
            return Scope(kind, k[len(prefix):])
    return None


class Promotion(NamedTuple):
    """A model promotion: the value of a scope key (``*``, ``*line:<id>``, ``*camera:<id>``) on `cameras`."""

    model_version: str
    model_path: str
    promoted_at: int
    content_hashes: dict[str, str] = {}
    note: str = ""
    scope: str = PROMOTION_KEY  # the key it was published under (records of older releases lack it)

    def to_json(self) -> bytes:
        return json.dumps({"kind": PROMOTION_KIND, **self._asdict()}, sort_keys=True).encode()


class PromotionRecord(BaseModel):
    """The validated value of a promotion record: strict types (no coercion of ``"soon"`` or ``null``
    into a time, of ``[1]`` into hashes), unknown keys ignored (records of newer releases)."""

    model_config = ConfigDict(extra="ignore")

    kind: Literal["model_promotion"]
    model_version: StrictStr = Field(min_length=1, max_length=1024)
    model_path: StrictStr = Field(min_length=1, max_length=4096)
    promoted_at: StrictInt = Field(0, ge=0)
    content_hashes: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    note: StrictStr = ""
    scope: StrictStr | None = None


class BadControlRecord(ValueError):
    """A `cameras` control record that does not validate (the reason is the message)."""


def validate_json(model: type[BaseModel], value: bytes | str) -> BaseModel:
    """`model` validated from a record's JSON value (pydantic's parser: bounded nesting depth, so a
    value nested 200 000 levels deep is an error, not a RecursionError).

    Raises:
        BadControlRecord: too large, not JSON, or not valid for `model`.
    """
    if len(value) > MAX_CONTROL_RECORD_BYTES:
        raise BadControlRecord(f"{len(value)} bytes (more than {MAX_CONTROL_RECORD_BYTES})")
    try:
        return model.model_validate_json(value)
    except ValidationError as exc:
        raise BadControlRecord("; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'value'}: {e['msg']}"
                                         for e in exc.errors()[:5])) from None
    except (ValueError, TypeError, RecursionError) as exc:  # belt and braces: never raise out of a follower
        raise BadControlRecord(f"{type(exc).__name__}: {exc}") from None


def parse_promotion_strict(value: bytes | str, key: bytes | str | None = None) -> Promotion:
    """The promotion in a scope record's value (not a tombstone).

    Raises:
        BadControlRecord: the value is no valid promotion.
    """
    rec = validate_json(PromotionRecord, value)
    assert isinstance(rec, PromotionRecord)
    scope = parse_scope(key)
    return Promotion(rec.model_version, rec.model_path, rec.promoted_at, dict(rec.content_hashes), rec.note,
                     scope.key if scope is not None else (rec.scope or PROMOTION_KEY))


def parse_promotion(value: bytes | str | None, key: bytes | str | None = None) -> Promotion | None:
    """The promotion in a scope record's value; None for a tombstone or a value that is not a valid one.

    When `key` is given, the promotion's `scope` is that key (the key is what workers act on).
    """
    if value is None:
        return None
    try:
        return parse_promotion_strict(value, key)
    except BadControlRecord:
        return None


def is_promotion_key(key: bytes | str | None) -> bool:
    """True for the keys of promotion scopes (``*``, ``*line:<id>``, ``*camera:<id>``)."""
    return parse_scope(key) is not None


def is_control_key(key: bytes | str | None) -> bool:
    """True for every reserved key (starting with ``*``): promotion scopes and the camera control
    records of `streams.inspection.cameras`; never a camera's config."""
    if key is None:
        return False
    return (key.startswith(b"*") if isinstance(key, bytes) else key.startswith(CONTROL_PREFIX))


class ModelSelection:
    """The selection rules (pure; no loading). `available` = versions whose Inspector is loaded."""

    def __init__(self, default_version: str | None = None):
        self.default_version = default_version  # the worker's configured model; set once it is loaded
        self.promotions: dict[Scope, Promotion] = {}
        self.offsets: dict[Scope, int] = {}  # scope -> offset of the record applied last (promotion or tombstone)
        self.applied = 0  # records applied (promotions and tombstones): a re-promotion is a new one
        self.seq: dict[Scope, int] = {}  # scope -> `applied` when its promotion was applied
        self.rejected = 0  # scope records skipped as invalid

    @property
    def promotion(self) -> Promotion | None:
        """The plant-wide promotion (None: none)."""
        return self.promotions.get(PLANT)

    def apply(self, key: bytes | str | None, value: bytes | None, offset: int | None = None) -> bool:
        """Apply one `cameras` record; True when it was a promotion record (a scope key).

        A tombstone clears the scope; a value that is no valid promotion is logged, counted in
        `rejected` and ignored (the scope keeps its promotion). Records are applied in the order
        read, which is the topic's offset order for a key; with `offset`, a record at or before the
        scope's last applied offset (read again) changes nothing. ``promoted_at`` plays no part.
        Never raises.
        """
        scope = parse_scope(key)
        if scope is None:
            return False
        if offset is not None and offset <= self.offsets.get(scope, -1):
            return True  # read again (a re-read of the topic): already applied
        promo: Promotion | None = None
        if value is not None:
            try:
                promo = parse_promotion_strict(value, key)
            except BadControlRecord as exc:
                self.rejected += 1
                log.warning("skipping an invalid model promotion record %r on the cameras topic: %s", scope.key, exc)
                return True
        if offset is not None:
            self.offsets[scope] = offset
        self.applied += 1
        if promo is None:
            self.promotions.pop(scope, None)
            self.seq.pop(scope, None)
            return True
        self.promotions[scope] = promo
        self.seq[scope] = self.applied
        return True

    def promotion_seq(self, promotion: Promotion) -> int:
        """When `promotion` was applied (a counter): a re-promotion of a failed path gets a new one."""
        return self.seq.get(parse_scope(promotion.scope) or PLANT, 0)

    def wanted(self) -> list[Promotion]:
        """Every current promotion (camera, then line, then plant scopes): the models workers should load."""
        order = {"camera": 0, "line": 1, "plant": 2}
        return [self.promotions[s] for s in sorted(self.promotions, key=lambda s: (order[s.kind], s.name or ""))]

    def candidates(self, camera_id: str | None = None, line_id: str | None = None,
                   camera_version: str | None = None, camera_alias: str | None = None) -> list[tuple[str, str]]:
        """(rule, version) in precedence order for a camera; the first loaded one is used.

        Rules: "camera", "pinned", "line", "plant", "default" (see the module doc). `camera_alias`:
        the id the camera had before a rename (`streams.inspection.cameras.CameraAlias`); its camera
        promotion applies when the camera has none of its own.
        """
        out: list[tuple[str, str]] = []
        for rule, scope in (("camera", Scope("camera", camera_id) if camera_id else None), ("pinned", None),
                            ("line", Scope("line", line_id) if line_id else None), ("plant", PLANT)):
            if rule == "pinned":
                if camera_version:
                    out.append((rule, camera_version))
                continue
            promo = self.promotions.get(scope) if scope is not None else None
            if promo is None and rule == "camera" and camera_alias:
                promo = self.promotions.get(Scope("camera", camera_alias))
            if promo is not None:
                out.append((rule, promo.model_version))
        if self.default_version is not None:
            out.append(("default", self.default_version))
        return out

    def version_for_new_part(self, camera_version: str | None, available: Iterable[str], camera_id: str | None = None,
                             line_id: str | None = None, camera_alias: str | None = None) -> str:
        """Model version for a part of `camera_id` on `line_id` that opens now (see the module doc).

        Raises:
            RuntimeError: no default version is set yet and no other rule applies.
        """
        avail = set(available)
        for _rule, version in self.candidates(camera_id, line_id, camera_version, camera_alias):
            if version in avail:
                return version
        if self.default_version is None:
            raise RuntimeError("no default model version yet (load the configured Inspector first)")
        return self.default_version

    def version_for_frame(self, part_id: str, open_part: tuple[str, str] | None, camera_version: str | None,
                          available: Iterable[str], camera_id: str | None = None, line_id: str | None = None,
                          camera_alias: str | None = None) -> str:
        """Model version for a frame of `part_id`, given the camera's open part (id, version).

        A frame of the open part keeps that part's version while it is loaded (in `available`);
        when it is not (no longer promoted after a restart or a rebalance, or a redeploy with another
        default) the frame gets the version a new part would get: the part finishes on it (the
        caller records the switch in the part). Any other frame opens a new part.
        """
        avail = set(available)
        if open_part is not None and open_part[0] == part_id and open_part[1] in avail:
            return open_part[1]
        return self.version_for_new_part(camera_version, avail, camera_id, line_id, camera_alias)


class LoadBackoff(NamedTuple):
    """Retry delays of a promoted model that failed to load: `initial_s`, doubled up to `max_s`."""

    initial_s: float = 5.0
    max_s: float = 300.0

    def delay(self, attempts: int) -> float:
        return min(self.max_s, self.initial_s * 2 ** max(0, attempts - 1))


class LoadFailure(NamedTuple):
    """A promoted model that failed to load: why, how often, when it is tried again."""

    model_version: str
    model_path: str
    error: str
    attempts: int
    retry_at: float  # `clock()` time of the next attempt
    seq: int  # the promotion's `ModelSelection.promotion_seq` at the last attempt

    def to_dict(self) -> dict[str, object]:
        return self._asdict()


class InspectorPool:
    """Loaded Inspectors by model version; thread-safe; `loader(path)` loads one (`models.loading.load_inspector`).

    The default Inspector is never evicted; others are kept while `keep` (open parts' and current
    promotions' versions) names them, and the least recently used beyond `max_loaded` are dropped.
    """

    def __init__(self, default: Inspector, loader: Callable[[str], Inspector], max_loaded: int = 3,
                 backoff: LoadBackoff = LoadBackoff(), clock: Callable[[], float] = time.monotonic,
                 on_failure: Callable[[LoadFailure], None] | None = None):
        self.default = default
        self.loader = loader
        self.max_loaded = max(1, max_loaded)
        self.backoff = backoff
        self.clock = clock
        self.on_failure = on_failure  # called after each failed load (metrics)
        self._by_version: OrderedDict[str, Inspector] = OrderedDict({str(default.model_version): default})
        # (path, promised version) -> the last failure: a path holding another version than one
        # promotion promised may still be right for another (a retrained directory promoted twice)
        self._failed: dict[tuple[str, str], LoadFailure] = {}
        self._lock = threading.Lock()

    @property
    def versions(self) -> list[str]:
        with self._lock:
            return list(self._by_version)

    def get(self, version: str) -> Inspector:
        """The Inspector of `version` (KeyError when not loaded)."""
        with self._lock:
            insp = self._by_version[version]
            self._by_version.move_to_end(version)
            return insp

    @property
    def failures(self) -> list[LoadFailure]:
        """Promoted models whose last load failed (and that are not loaded since)."""
        with self._lock:
            return [f for f in self._failed.values() if f.model_version not in self._by_version]

    def _due(self, p: Promotion, seq: int) -> bool:
        f = self._failed.get((p.model_path, p.model_version))
        return f is None or seq > f.seq or self.clock() >= f.retry_at

    def missing(self, promotions: Iterable[Promotion],
                seqs: Callable[[Promotion], int] = lambda p: 0) -> list[Promotion]:
        """The promotions whose model is not loaded and whose load is due: never tried, its retry
        time reached (backoff), or promoted again since it failed (`seqs(p)` grew)."""
        with self._lock:
            return [p for p in promotions if p.model_version not in self._by_version and self._due(p, seqs(p))]

    def ensure(self, promotion: Promotion | None, in_use: Iterable[str] = (), seq: int = 0) -> bool:
        """Load the promoted checkpoint if it is not loaded yet; True when it is available.

        A checkpoint that fails to load (missing file, hash mismatch) or whose version differs from
        the promotion's leaves the selection unchanged and is tried again after a backoff
        (`LoadBackoff`, doubling), or at once when promoted again (a larger `seq`). A path that
        holds another version than promised keeps what it loaded under its own version when that
        version is wanted too (it is then only evicted like any other). Versions in `in_use` (and
        the default and this promotion's) survive the eviction.
        """
        if promotion is None:
            return True
        key = (promotion.model_path, promotion.model_version)
        with self._lock:
            if promotion.model_version in self._by_version:
                self._failed.pop(key, None)
                return True
            if not self._due(promotion, seq):
                return False
        try:
            insp = self.loader(promotion.model_path)
            error = None
            if str(insp.model_version) != promotion.model_version:
                error = f"the path holds model {insp.model_version}, not {promotion.model_version}"
        except Exception as exc:  # noqa: BLE001 - a bad promotion must not stop the worker
            insp, error = None, f"{type(exc).__name__}: {exc}"
        if error is not None:
            with self._lock:
                prev = self._failed.get(key)
                attempts = (prev.attempts if prev is not None and seq <= prev.seq else 0) + 1
                delay = self.backoff.delay(attempts)
                failure = LoadFailure(promotion.model_version, promotion.model_path, error, attempts,
                                      self.clock() + delay, max(seq, prev.seq if prev is not None else 0))
                self._failed[key] = failure
                if insp is not None and str(insp.model_version) in set(in_use):
                    # a retrained directory promoted twice: what it holds now is another promotion's model
                    self._by_version[str(insp.model_version)] = insp
            log.error("cannot load promoted model %s from %s (attempt %d, next in %.0fs): %s",
                      promotion.model_version, promotion.model_path, attempts, delay, error)
            if self.on_failure is not None:
                self.on_failure(failure)
            return False
        with self._lock:
            self._failed.pop(key, None)
            self._by_version[promotion.model_version] = insp
            self._evict(set(in_use) | {promotion.model_version})
        log.warning("model %s loaded from %s", promotion.model_version, promotion.model_path)
        return True

    def sync(self, promotions: Iterable[Promotion], in_use: Iterable[str] = (),
             seqs: Callable[[Promotion], int] = lambda p: 0) -> set[str]:
        """Load every promotion's model that is missing and due, keep all of them and `in_use`,
        evict the rest beyond `max_loaded`; returns the promoted versions that are available."""
        promos = list(promotions)
        keep = set(in_use) | {p.model_version for p in promos}
        ok = {p.model_version for p in promos if self.ensure(p, keep, seqs(p))}
        self.release(keep)
        return ok | ({p.model_version for p in promos} & set(self.versions))

    def release(self, keep: Iterable[str]) -> None:
        """Drop least recently used Inspectors beyond `max_loaded` that `keep` does not name."""
        with self._lock:
            self._evict(set(keep))

    def _evict(self, keep: set[str]) -> None:
        default = str(self.default.model_version)
        for v in list(self._by_version):
            if len(self._by_version) <= self.max_loaded:
                break
            if v != default and v not in keep:
                del self._by_version[v]
