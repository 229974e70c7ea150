"""Which model inspects a camera's part: promotions from the `cameras` topic, switched at part boundaries.

`defectstream models promote` publishes a :class:`Promotion` under the reserved key ``*`` (plant-wide
defaults) of the compacted `cameras` topic. Workers already follow that topic from its start, so
every worker (and a restarted one) learns the current promotion. The rules, pure and unit-tested:

* a part keeps the model version it was opened with until it closes (its tracks, votes and event
  ids belong to one model), so a switch happens at the camera's next part boundary;
* a new part uses, in this order: the camera's own ``model_version`` when that version is loaded
  (a pinned/canary camera), else the latest plant-wide promotion once its Inspector is loaded,
  else the worker's configured default;
* a promotion whose checkpoint cannot be loaded leaves the previous choice in place (logged).

:class:`InspectorPool` holds several loaded Inspectors by version (loading happens in the
inference thread), and forgets those no open part needs any more beyond `max_loaded`.
"""
from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from typing import Any, Callable, Iterable, NamedTuple

log = logging.getLogger(__name__)

PROMOTION_KEY = "*"
PROMOTION_KIND = "model_promotion"


class Promotion(NamedTuple):
    """A plant-wide model promotion (the value of key ``*`` on the `cameras` topic)."""

    model_version: str
    model_path: str
    promoted_at: int
    content_hashes: dict[str, str] = {}
    note: str = ""

    def to_json(self) -> bytes:
        return json.dumps({"kind": PROMOTION_KIND, **self._asdict()}, sort_keys=True).encode()


def parse_promotion(value: bytes | str | None) -> Promotion | None:
    """The promotion in a `*` record's value; None for a tombstone or a value that is not one."""
    if value is None:
        return None
    try:
        d = json.loads(value)
    except ValueError:
        return None
    if not isinstance(d, dict) or d.get("kind") != PROMOTION_KIND or not d.get("model_version") or not d.get("model_path"):
        return None
    return Promotion(str(d["model_version"]), str(d["model_path"]), int(d.get("promoted_at", 0)),
                     dict(d.get("content_hashes") or {}), str(d.get("note", "")))


def is_promotion_key(key: bytes | str | None) -> bool:
    if key is None:
        return False
    return (key.decode("utf-8", "replace") if isinstance(key, bytes) else key) == PROMOTION_KEY


class ModelSelection:
    """The selection rules (pure; no loading). `available` = versions whose Inspector is loaded."""

    def __init__(self, default_version: str | None = None):
        self.default_version = default_version  # the worker's configured model; set once it is loaded
        self.promotion: Promotion | None = None

    def apply(self, key: bytes | str | None, value: bytes | None) -> bool:
        """Apply one `cameras` record; True when it was a promotion record (key ``*``)."""
        if not is_promotion_key(key):
            return False
        promo = parse_promotion(value)
        if value is not None and promo is None:
            log.warning("ignoring a '*' record on the cameras topic that is not a model promotion: %r", value[:200])
            return True
        if promo is not None and self.promotion is not None and promo.promoted_at < self.promotion.promoted_at:
            return True  # an older promotion (e.g. re-read out of order) never wins
        self.promotion = promo
        return True

    def wanted(self) -> Promotion | None:
        """The promotion workers should have loaded (None: run the default)."""
        return self.promotion

    def version_for_new_part(self, camera_version: str | None, available: Iterable[str]) -> str:
        """Model version for a part that opens now (see module doc for the order)."""
        avail = set(available)
        if camera_version and camera_version in avail:
            return camera_version
        if self.promotion is not None and self.promotion.model_version in avail:
            return self.promotion.model_version
        if self.default_version is None:
            raise RuntimeError("no default model version yet (load the configured Inspector first)")
        return self.default_version

    def version_for_frame(self, part_id: str, open_part: tuple[str, str] | None, camera_version: str | None,
                          available: Iterable[str]) -> str:
        """Model version for a frame of `part_id`, given the camera's open part (id, version).

        A frame of the open part keeps that part's version; any other frame opens a new part.
        """
        if open_part is not None and open_part[0] == part_id:
            return open_part[1]
        return self.version_for_new_part(camera_version, available)


class InspectorPool:
    """Loaded Inspectors by model version; thread-safe; `load(path)` is the loader (Inspector.load).

    The default Inspector is never evicted; others are kept while `in_use` names them, and the
    least recently used beyond `max_loaded` are dropped.
    """

    def __init__(self, default: Any, loader: Callable[[str], Any], max_loaded: int = 3):
        self.default = default
        self.loader = loader
        self.max_loaded = max(1, max_loaded)
        self._by_version: OrderedDict[str, Any] = OrderedDict({str(default.model_version): default})
        self._failed: set[str] = set()
        self._lock = threading.Lock()

    @property
    def versions(self) -> list[str]:
        with self._lock:
            return list(self._by_version)

    def get(self, version: str) -> Any:
        """The Inspector of `version` (KeyError when not loaded)."""
        with self._lock:
            insp = self._by_version[version]
            self._by_version.move_to_end(version)
            return insp

    def ensure(self, promotion: Promotion | None, in_use: Iterable[str] = ()) -> bool:
        """Load the promoted checkpoint if it is not loaded yet; True when it is available.

        A checkpoint that fails to load (missing file, hash mismatch) or whose version differs
        from the promotion's is not retried for that path and leaves the selection unchanged.
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

    def _evict(self, keep: set[str]) -> None:
        default = str(self.default.model_version)
        for v in list(self._by_version):
            if len(self._by_version) <= self.max_loaded:
                break
            if v != default and v not in keep:
                del self._by_version[v]
