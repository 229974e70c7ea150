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
  ids belong to one model), so a switch happens at the camera's next part boundary;
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
  skipped, so the camera falls through to the next rule (logged when loading fails);
* within one scope an older promotion read later (``promoted_at``) never replaces a newer one.

:class:`InspectorPool` holds several loaded Inspectors by version (loading happens in the
inference thread): the default, every current promotion's, and every open part's are never
evicted; other versions are dropped, least recently used first, beyond `max_loaded`.
"""
from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from typing import Callable, Iterable, NamedTuple

from models.core.types import Inspector

log = logging.getLogger(__name__)

PROMOTION_KEY = "*"  # the plant-wide scope
LINE_PREFIX = "*line:"
CAMERA_PREFIX = "*camera:"
PROMOTION_KIND = "model_promotion"


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


def parse_promotion(value: bytes | str | None, key: bytes | str | None = None) -> Promotion | None:
    """The promotion in a scope record's value; None for a tombstone or a value that is not one.

    When `key` is given, the promotion's `scope` is that key (the key is what workers act on).
    """
    if value is None:
        return None
    try:
        d = json.loads(value)
    except ValueError:
        return None
    if not isinstance(d, dict) or d.get("kind") != PROMOTION_KIND or not d.get("model_version") or not d.get("model_path"):
        return None
    scope = parse_scope(key)
    return Promotion(str(d["model_version"]), str(d["model_path"]), int(d.get("promoted_at", 0)),
                     dict(d.get("content_hashes") or {}), str(d.get("note", "")),
                     scope.key if scope is not None else str(d.get("scope") or PROMOTION_KEY))


def is_promotion_key(key: bytes | str | None) -> bool:
    """True for the keys of promotion scopes (``*``, ``*line:<id>``, ``*camera:<id>``)."""
    return parse_scope(key) is not None


class ModelSelection:
    """The selection rules (pure; no loading). `available` = versions whose Inspector is loaded."""

    def __init__(self, default_version: str | None = None):
        self.default_version = default_version  # the worker's configured model; set once it is loaded
        self.promotions: dict[Scope, Promotion] = {}

    @property
    def promotion(self) -> Promotion | None:
        """The plant-wide promotion (None: none)."""
        return self.promotions.get(PLANT)

    def apply(self, key: bytes | str | None, value: bytes | None) -> bool:
        """Apply one `cameras` record; True when it was a promotion record (a scope key).

        A tombstone clears the scope; a value that is no promotion is logged and ignored; an
        older promotion than the scope's current one is ignored.
        """
        scope = parse_scope(key)
        if scope is None:
            return False
        promo = parse_promotion(value, key)
        if value is not None and promo is None:
            log.warning("ignoring a %r record on the cameras topic that is not a model promotion: %r", scope.key,
                        value[:200])
            return True
        current = self.promotions.get(scope)
        if promo is None:
            self.promotions.pop(scope, None)
            return True
        if current is not None and promo.promoted_at < current.promoted_at:
            return True  # an older promotion (e.g. re-read out of order) never wins
        self.promotions[scope] = promo
        return True

    def wanted(self) -> list[Promotion]:
        """Every current promotion (camera, then line, then plant scopes): the models workers should load."""
        order = {"camera": 0, "line": 1, "plant": 2}
        return [self.promotions[s] for s in sorted(self.promotions, key=lambda s: (order[s.kind], s.name or ""))]

    def candidates(self, camera_id: str | None = None, line_id: str | None = None,
                   camera_version: str | None = None) -> list[tuple[str, str]]:
        """(rule, version) in precedence order for a camera; the first loaded one is used.

        Rules: "camera", "pinned", "line", "plant", "default" (see the module doc).
        """
        out: list[tuple[str, str]] = []
        for rule, scope in (("camera", Scope("camera", camera_id) if camera_id else None), ("pinned", None),
                            ("line", Scope("line", line_id) if line_id else None), ("plant", PLANT)):
            if rule == "pinned":
                if camera_version:
                    out.append((rule, camera_version))
                continue
            promo = self.promotions.get(scope) if scope is not None else None
            if promo is not None:
                out.append((rule, promo.model_version))
        if self.default_version is not None:
            out.append(("default", self.default_version))
        return out

    def version_for_new_part(self, camera_version: str | None, available: Iterable[str], camera_id: str | None = None,
                             line_id: str | None = None) -> str:
        """Model version for a part of `camera_id` on `line_id` that opens now (see the module doc).

        Raises:
            RuntimeError: no default version is set yet and no other rule applies.
        """
        avail = set(available)
        for _rule, version in self.candidates(camera_id, line_id, camera_version):
            if version in avail:
                return version
        if self.default_version is None:
            raise RuntimeError("no default model version yet (load the configured Inspector first)")
        return self.default_version

    def version_for_frame(self, part_id: str, open_part: tuple[str, str] | None, camera_version: str | None,
                          available: Iterable[str], camera_id: str | None = None, line_id: str | None = None) -> str:
        """Model version for a frame of `part_id`, given the camera's open part (id, version).

        A frame of the open part keeps that part's version; any other frame opens a new part.
        """
        if open_part is not None and open_part[0] == part_id:
            return open_part[1]
        return self.version_for_new_part(camera_version, available, camera_id, line_id)


class InspectorPool:
    """Loaded Inspectors by model version; thread-safe; `loader(path)` loads one (`models.loading.load_inspector`).

    The default Inspector is never evicted; others are kept while `keep` (open parts' and current
    promotions' versions) names them, and the least recently used beyond `max_loaded` are dropped.
    """

    def __init__(self, default: Inspector, loader: Callable[[str], Inspector], max_loaded: int = 3):
        self.default = default
        self.loader = loader
        self.max_loaded = max(1, max_loaded)
        self._by_version: OrderedDict[str, Inspector] = OrderedDict({str(default.model_version): default})
        self._failed: set[str] = set()
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

    def missing(self, promotions: Iterable[Promotion]) -> list[Promotion]:
        """The promotions whose model is neither loaded nor known to fail loading."""
        with self._lock:
            return [p for p in promotions if p.model_version not in self._by_version and p.model_path not in self._failed]

    def ensure(self, promotion: Promotion | None, in_use: Iterable[str] = ()) -> bool:
        """Load the promoted checkpoint if it is not loaded yet; True when it is available.

        A checkpoint that fails to load (missing file, hash mismatch) or whose version differs
        from the promotion's is not retried for that path and leaves the selection unchanged.
        Versions in `in_use` (and the default and this promotion's) survive the eviction.
        """
        if promotion is None:
            return True
        with self._lock:
            if promotion.model_version in self._by_version:
                return True
            if promotion.model_path in self._failed:
                return False
        try:
            insp = self.loader(promotion.model_path)
        except Exception as exc:  # noqa: BLE001 - a bad promotion must not stop the worker
            log.error("cannot load promoted model %s from %s: %s", promotion.model_version, promotion.model_path, exc)
            with self._lock:
                self._failed.add(promotion.model_path)
            return False
        if str(insp.model_version) != promotion.model_version:
            log.error("promoted path %s holds model %s, not %s; ignored", promotion.model_path, insp.model_version,
                      promotion.model_version)
            with self._lock:
                self._failed.add(promotion.model_path)
            return False
        with self._lock:
            self._by_version[promotion.model_version] = insp
            self._evict(set(in_use) | {promotion.model_version})
        log.warning("model %s loaded from %s", promotion.model_version, promotion.model_path)
        return True

    def sync(self, promotions: Iterable[Promotion], in_use: Iterable[str] = ()) -> set[str]:
        """Load every promotion's model that is missing, keep all of them and `in_use`, evict the rest
        beyond `max_loaded`; returns the promoted versions that are available."""
        promos = list(promotions)
        keep = set(in_use) | {p.model_version for p in promos}
        ok = {p.model_version for p in promos if self.ensure(p, keep)}
        self.release(keep)
        return ok

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
