"""The typed records at the pipeline's border: Faust events in, outputs out, and table writes."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from schemas.events import DeadLetter
from streams.inspection.agents import source_record
from streams.kafka.records import OutRecord, SourceRecord


def test_a_faust_event_becomes_a_source_record_with_its_raw_message_and_ms_timestamp():
    ev = SimpleNamespace(key="cam-1", value={"decoded": True},
                         message=SimpleNamespace(topic="frames", partition=3, offset=41, key=b"cam-1", value=b"raw",
                                                 timestamp=1_790_000_000.25))
    assert source_record(ev) == SourceRecord("frames", 3, 41, b"cam-1", b"raw", 1_790_000_000_250)
    ev.message.timestamp = None
    assert source_record(ev).timestamp is None


def test_out_records_have_one_of_the_three_kinds():
    dl = DeadLetter(topic="frames", partition=0, offset=1, key=None, original=b"x", reason="r", error_class="c",
                    camera_id=None, failed_at=0)
    assert OutRecord("deadletter", None, dl).event is dl
    with pytest.raises(ValueError, match="unknown output kind"):
        OutRecord("alerts", None, dl)  # type: ignore[arg-type]


def test_table_writes_go_to_the_partition_of_the_source_record():
    from faust.streams import current_event

    from streams.tracking.table import _SourceEvent, event_context

    src = SourceRecord("frames", 5, 9, b"cam-1", None)
    ev = _SourceEvent(src)
    with event_context(ev):
        cur = current_event()
        assert (cur.message.topic, cur.message.partition) == ("frames", 5)
