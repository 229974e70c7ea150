"""Per-camera settings from the compacted `cameras` topic (JSON values keyed by camera id).

A camera with no entry runs on the defaults: new cameras need no configuration and no restart.
An entry's settings apply from the camera's next part (the tracker snapshots them when a part
opens). A tombstone (null value) removes the entry.
"""
from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, ValidationError

from streams.inspection.model_selection import is_promotion_key
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


class CameraRegistry:
    """Latest config per camera id, fed from the `cameras` topic."""

    def __init__(self) -> None:
        self._configs: dict[str, CameraConfig] = {}

    def apply(self, key: bytes | str | None, value: bytes | None) -> bool:
        """Apply one `cameras` record; returns False (and logs) when it is unusable, and False for
        model promotion keys (``*``, ``*line:…``, ``*camera:…``), which are not cameras."""
        if key is None:
            log.warning("cameras record without key ignored")
            return False
        if is_promotion_key(key):
            return False  # a model promotion scope (streams.inspection.model_selection), not a camera
        cam = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        if value is None:
            self._configs.pop(cam, None)
            return True
        try:
            cfg = CameraConfig.model_validate(json.loads(value))
        except (ValueError, ValidationError) as exc:
            log.warning("bad cameras record for %s ignored: %s", cam, exc)
            return False
        self._configs[cam] = cfg
        return True

    def get(self, camera_id: str) -> CameraConfig | None:
        return self._configs.get(camera_id)

    def cameras(self) -> list[str]:
        """Ids of the cameras that have a config."""
        return sorted(self._configs)

    def policy(self, camera_id: str) -> PartPolicy:
        cfg = self._configs.get(camera_id)
        return cfg.policy() if cfg else PartPolicy()

    def __len__(self) -> int:
        return len(self._configs)


def publish_camera_config(settings: "Settings", camera_id: str, config: CameraConfig | None) -> None:
    """Put a camera's config on the compacted `cameras` topic (None = delete it); waits for the ack.

    Workers apply it from the camera's next part.
    """
    from streams.kafka import clients
    from streams.kafka.topics import ensure_topics

    ensure_topics(settings)
    prod = clients.producer(settings.kafka, acks="all")
    try:
        value = config.to_json() if config is not None else None
        prod.send(settings.kafka.topics.cameras, key=camera_id.encode(), value=value).get(timeout=30)
    finally:
        prod.close(timeout=10)
