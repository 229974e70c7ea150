"""Box-only detections (the RetinaNet family's: no mask) through the tracker, DefectEvent, Kafka and the sink into
ClickHouse: the mask-derived columns stay empty (area_px 0, severities 0), nothing is invented on the way."""
from __future__ import annotations

from schemas.events import DefectEvent, PartInspected
from sinks.migrations import migrate
from sinks.sql import DriverExecutor
from streams.commands.sink import run_sink
from streams.settings import PlantSettings, TrackingSettings
from streams.tracking.tracker import CameraState, PartTracker
from streams.tracking.types import FrameMeta

from models.core.types import BBox, Detection

from .test_clickhouse_sink import produce, settings_for, topics

W, H, SPEED, FRAME_MS = 512, 256, 120, 100
T0 = 1_763_900_000_000


def box_only(x0: int, y0: int, size: int, cls: str, conf: float) -> Detection:
    """A detection as `BoxesInspector` returns it: a box, a class and a score; no mask, area or severity."""
    return Detection(BBox(x0, y0, x0 + size, y0 + size), None, cls, conf, 0.0, 0.0, 0)  # type: ignore[arg-type]


def test_box_only_detections_reach_clickhouse_with_empty_mask_columns(
        stack, kafka_bootstrap, fresh_topic, clickhouse_connect, fresh_database):
    tracker = PartTracker(TrackingSettings(min_hits=2, min_hit_ratio=0.75, fail_classes=["scratches"]))
    cam, plant = CameraState("box-cam"), PlantSettings(timezone="UTC")
    outcomes = []
    for part, defects in (("p1", [(420, 60, 30, "scratches", 0.9), (300, 160, 24, "inclusion", 0.8)]), ("p2", [])):
        for i in range(4):
            meta = FrameMeta("box-cam", "line-1", part, (0 if part == "p1" else 4) + i,
                             T0 + (0 if part == "p1" else 1000) + i * FRAME_MS, W, H, i, i == 3,
                             SPEED * 1000 / FRAME_MS)
            dets = [box_only(x - i * SPEED, y, s, c, p) for x, y, s, c, p in defects if x - i * SPEED >= 0]
            outcomes += cam.observe(tracker, meta, dets, model_version="boxes-lite0-retinanet-test", run_id="production",
                                    plant=plant)
    events = [o.part for o in outcomes] + [d for o in outcomes for d in o.defects]
    defects = [e for e in events if isinstance(e, DefectEvent)]
    assert sorted(d.defect_class for d in defects) == ["inclusion", "scratches"]
    assert all(d.area_px == 0 and d.severity == 0 and d.severity_max == 0 for d in defects)
    verdicts = {e.part_id: e.verdict for e in events if isinstance(e, PartInspected)}
    assert verdicts == {"p1": "FAIL", "p2": "PASS"}  # a box detector fails parts by class (it has no severity)

    migrate(DriverExecutor(clickhouse_connect(database=fresh_database)))
    names = topics(fresh_topic)
    produce(kafka_bootstrap, names, events)
    run_sink(settings_for(kafka_bootstrap, names, stack.host, stack.clickhouse_port, fresh_database),
             idle_s=2.0, max_seconds=90)

    ch = clickhouse_connect(database=fresh_database)
    rows = ch.execute("SELECT defect_class, area_px, severity, severity_max, bbox_x1 - bbox_x0, bbox_y1 - bbox_y0, "
                      "frames_seen, model_version FROM defects ORDER BY defect_class")
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [("inclusion", 0, 0.0, 0.0), ("scratches", 0, 0.0, 0.0)]
    assert [(r[4], r[5]) for r in rows] == [(24, 24), (30, 30)]  # the boxes as detected
    assert all(r[6] >= 3 and r[7] == "boxes-lite0-retinanet-test" for r in rows)
    assert sorted(ch.execute("SELECT part_id, verdict, defects_total FROM parts")) == [("p1", "FAIL", 2),
                                                                                       ("p2", "PASS", 0)]
