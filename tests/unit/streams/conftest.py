"""Test doubles for the streaming layer's unit tests (no model, no Kafka)."""
from __future__ import annotations

import numpy as np
import pytest

from models.core.types import BBox, Detection
from streams.settings import PlantSettings, TrackingSettings


def _det(x0: int, y0: int, x1: int, y1: int, cls: str = "scratch", conf: float = 0.9, sev: float = 5.0) -> Detection:
    """A detection as the Inspector would return it."""
    box = BBox(x0, y0, x1, y1)
    return Detection(box, np.ones((box.height, box.width), bool), cls, conf, sev * 0.8, sev, box.area)


@pytest.fixture
def tracking_settings() -> TrackingSettings:
    return TrackingSettings(min_hits=2, min_hit_ratio=0.75)


@pytest.fixture
def plant() -> PlantSettings:
    return PlantSettings(timezone="UTC")


@pytest.fixture
def det():
    """Factory of fake detections: det(x0, y0, x1, y1, cls="scratch", conf=0.9, sev=5.0)."""
    return _det
