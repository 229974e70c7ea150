"""Per-camera settings and camera control records from the compacted `cameras` topic (JSON values).

A camera with no entry runs on the defaults: new cameras need no configuration and no restart.
An entry's settings apply from the camera's next part (the tracker snapshots them when a part
opens). A tombstone (null value) removes the entry. Keys:

* ``<camera id>`` — a `CameraConfig`;
* ``*``, ``*line:<id>``, ``*camera:<id>`` — model promotions (`streams.inspection.model_selection`);
* ``*reset:<camera id>`` — a `CameraReset`: the camera was replaced and counts ``frame_seq`` from
  0 again; each worker forgets that camera's sequence history once per ``reset_id`` at its next
  frame (`defectstream cameras reset`), instead of dead-lettering every frame as out of order
  until the new camera passes the old number;
* ``*alias:<camera id>`` — a `CameraAlias`: the camera is the renamed ``alias_of``; that id's
  camera config (limits, ROI, line, pinned model) and camera-scoped promotion apply to it while
  it has none of its own (`defectstream cameras alias`).

Every record is validated with pydantic (`apply_cameras_record`): an invalid one (bad types, not
JSON, too large, nested deeper than the parser allows) is logged, counted and skipped; the
follower never stops on one. Any other key starting with ``*`` is reserved and skipped as well.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from streams.inspection.model_selection import (
    BadControlRecord,
    is_control_key,
    is_promotion_key,
    validate_json,
)
from streams.tracking.types import PartPolicy

if TYPE_CHECKING:
    from streams.settings import Settings

log = logging.getLogger(__name__)


class CameraConfig(BaseModel):
    """One camera's overrides; every field is optional."""

    camera_id: str | None = None
    line_id: str | None = None
    roi: tuple[int, int, int, int] | None = Field(None, description="x0, y0, x1, y1: detections outside are ignored")
    min_confidence: float | None = Field(None, ge=0.0, le=1.0)
    fail_severity: float | None = Field(None, ge=0.0, le=12.0)
    model_version: str | None = Field(None, description="pinned model version: runs whenever it is loaded, ahead of "
                                                        "line/plant promotions; a camera promotion wins "
                                                        "(streams.inspection.model_selection)")
    frames_per_part: int | None = Field(None, ge=1)

    def policy(self) -> PartPolicy:
        return PartPolicy(
            line_id=self.line_id,
            roi=self.roi,
            min_confidence=self.min_confidence,
            fail_severity=self.fail_severity,
            frames_per_part=self.frames_per_part,
        )

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


RESET_PREFIX = "*reset:"
ALIAS_PREFIX = "*alias:"


class CameraReset(BaseModel):
    """``*reset:<camera id>``: the camera's frame_seq restarts (a replaced camera); applied once per `reset_id`."""

    model_config = ConfigDict(extra="ignore")

    kind: Literal["camera_reset"]
    camera_id: StrictStr = Field(min_length=1)
    reset_id: StrictStr = Field(min_length=1, max_length=256)
    requested_at: StrictInt = Field(0, ge=0)
    note: StrictStr = ""

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class CameraAlias(BaseModel):
    """``*alias:<camera id>``: `camera_id` is the camera formerly called `alias_of`."""

    model_config = ConfigDict(extra="ignore")

    kind: Literal["camera_alias"]
    camera_id: StrictStr = Field(min_length=1)
    alias_of: StrictStr = Field(min_length=1)
    note: StrictStr = ""

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


def _text(key: bytes | str) -> str:
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else key


class CameraRegistry:
    """Latest config, reset and alias per camera id, fed from the `cameras` topic.

    `rejected` counts the records skipped as invalid, by kind (camera_config, camera_reset,
    camera_alias, reserved)."""

    def __init__(self) -> None:
        self._configs: dict[str, CameraConfig] = {}
        self._resets: dict[str, str] = {}
        self._aliases: dict[str, str] = {}
        self.rejected: dict[str, int] = {}

    def _reject(self, kind: str, what: str, why: object) -> bool:
        self.rejected[kind] = self.rejected.get(kind, 0) + 1
        log.warning("skipping an invalid %s record %s on the cameras topic: %s", kind, what, why)
        return False

    def apply(self, key: bytes | str | None, value: bytes | None) -> bool:
        """Apply one `cameras` record; returns False (logged and counted in `rejected`) when it is
        invalid, and False for model promotion keys (``*``, ``*line:…``, ``*camera:…``), which are
        not cameras. Never raises."""
        if key is None:
            return self._reject("camera_config", "without a key", "no camera id")
        if is_promotion_key(key):
            return False  # a model promotion scope (streams.inspection.model_selection), not a camera
        k = _text(key)
        for prefix, kind, model, table in ((RESET_PREFIX, "camera_reset", CameraReset, self._resets),
                                           (ALIAS_PREFIX, "camera_alias", CameraAlias, self._aliases)):
            if k.startswith(prefix) and len(k) > len(prefix):
                cam = k[len(prefix):]
                if value is None:
                    table.pop(cam, None)
                    return True
                try:
                    rec: Any = validate_json(model, value)
                except BadControlRecord as exc:
                    return self._reject(kind, repr(k), exc)
                if rec.camera_id != cam:
                    return self._reject(kind, repr(k), f"names camera {rec.camera_id!r}, its key {cam!r}")
                if kind == "camera_alias" and rec.alias_of == cam:
                    return self._reject(kind, repr(k), "a camera cannot be its own alias")
                table[cam] = rec.reset_id if kind == "camera_reset" else rec.alias_of
                return True
        if is_control_key(key):
            return self._reject("reserved", repr(k[:80]),
                                "an unknown control key (keys starting with '*' are reserved)")
        if value is None:
            self._configs.pop(k, None)
            return True
        try:
            cfg = validate_json(CameraConfig, value)
        except BadControlRecord as exc:
            return self._reject("camera_config", f"for {k!r}", exc)
        assert isinstance(cfg, CameraConfig)
        self._configs[k] = cfg
        return True

    def get(self, camera_id: str) -> CameraConfig | None:
        """The camera's config, else (a renamed camera) its former id's."""
        cfg = self._configs.get(camera_id)
        if cfg is None and camera_id in self._aliases:
            cfg = self._configs.get(self._aliases[camera_id])
        return cfg

    def alias_of(self, camera_id: str) -> str | None:
        """The id `camera_id` had before a rename (None: not renamed)."""
        return self._aliases.get(camera_id)

    def aliases(self) -> dict[str, str]:
        """camera id -> its former id."""
        return dict(self._aliases)

    def reset_id(self, camera_id: str) -> str | None:
        """The id of the camera's latest sequence reset (None: never reset)."""
        return self._resets.get(camera_id)

    def cameras(self) -> list[str]:
        """Ids of the cameras that have a config."""
        return sorted(self._configs)

    def policy(self, camera_id: str) -> PartPolicy:
        cfg = self.get(camera_id)
        return cfg.policy() if cfg else PartPolicy()

    def __len__(self) -> int:
        return len(self._configs)


def apply_cameras_record(key: bytes | str | None, value: bytes | None, registry: CameraRegistry,
                         selection: Any = None, offset: int | None = None,
                         on_rejected: Callable[[str], None] | None = None) -> str:
    """Apply one `cameras` record to `selection` (promotions) or `registry` (everything else).

    Returns what it was: "promotion", "camera_config", "camera_reset", "camera_alias", or
    "rejected:<kind>" for an invalid record (logged, and `on_rejected(kind)` called, e.g. a
    Prometheus counter). Never raises: one bad record must not stop the follower.
    """
    kind = "camera_config"
    try:
        if is_promotion_key(key):
            kind = "promotion"
            if selection is None:
                return kind
            before = selection.rejected
            selection.apply(key, value, offset)
            ok = selection.rejected == before
        else:
            k = _text(key) if key is not None else ""
            kind = ("camera_reset" if k.startswith(RESET_PREFIX) else "camera_alias" if k.startswith(ALIAS_PREFIX)
                    else "reserved" if is_control_key(k) else "camera_config")
            ok = registry.apply(key, value)
    except Exception as exc:  # noqa: BLE001 - belt and braces: a record never stops the follower
        log.error("cameras record %r could not be applied: %r", key, exc)
        ok = False
    if ok:
        return kind
    if on_rejected is not None:
        on_rejected(kind)
    return f"rejected:{kind}"


def publish_cameras_record(settings: "Settings", key: str, value: bytes | None) -> None:
    """Put one record on the compacted `cameras` topic (None = tombstone); waits for the ack."""
    from streams.kafka import clients
    from streams.kafka.topics import ensure_topics

    ensure_topics(settings)
    prod = clients.producer(settings.kafka, acks="all")
    try:
        prod.send(settings.kafka.topics.cameras, key=key.encode(), value=value).get(timeout=30)
    finally:
        prod.close(timeout=10)


def publish_camera_config(settings: "Settings", camera_id: str, config: CameraConfig | None) -> None:
    """Put a camera's config on the compacted `cameras` topic (None = delete it); waits for the ack.

    Workers apply it from the camera's next part.
    """
    publish_cameras_record(settings, camera_id, config.to_json() if config is not None else None)


def publish_camera_reset(settings: "Settings", camera_id: str, note: str = "",
                         reset_id: str | None = None, now_ms: int | None = None) -> CameraReset:
    """Publish a `CameraReset` for a replaced camera (its frame_seq restarts); returns it."""
    import time
    import uuid

    rec = CameraReset(kind="camera_reset", camera_id=camera_id, reset_id=reset_id or uuid.uuid4().hex,
                      requested_at=int(time.time() * 1000) if now_ms is None else now_ms, note=note)
    publish_cameras_record(settings, RESET_PREFIX + camera_id, rec.to_json())
    return rec


def publish_camera_alias(settings: "Settings", camera_id: str, alias_of: str | None,
                         note: str = "") -> CameraAlias | None:
    """Publish that `camera_id` is the renamed `alias_of` (None: remove the alias); returns the record."""
    if alias_of is None:
        publish_cameras_record(settings, ALIAS_PREFIX + camera_id, None)
        return None
    rec = CameraAlias(kind="camera_alias", camera_id=camera_id, alias_of=alias_of, note=note)
    publish_cameras_record(settings, ALIAS_PREFIX + camera_id, rec.to_json())
    return rec
