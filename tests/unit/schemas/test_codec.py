"""Avro codec: round trips, schema evolution, framings, typed errors on bad bytes."""
from __future__ import annotations

import json
import struct

import avro.schema
import pytest

from schemas.codec import AvroCodec, DecodeError, SchemaStore, crc64_avro, default_store
from schemas.events import Alert, DeadLetter, DefectEvent, FrameEvent, PartInspected, deterministic_id


def frame(**over) -> FrameEvent:
    base = dict(camera_id="cam-1", line_id="line-1", part_id="p-1", frame_seq=7, capture_ts=1_795_000_000_123,
                encoding="PNG", width=4, height=2, channels=1, image=b"\x89PNG...", frame_index=2,
                last_frame=True, conveyor_speed_mm_s=120.5, pixels_per_mm=3.0)
    base.update(over)
    return FrameEvent(**base)


def test_crc64_avro_matches_the_reference_implementation():
    # The `avro` package's own fingerprint of the canonical form "int" (little-endian bytes).
    expected = avro.schema.parse('"int"').fingerprint("CRC-64-AVRO")
    assert crc64_avro(b'"int"').to_bytes(8, "little") == bytes(expected)


@pytest.mark.parametrize("framing", ["single_object", "confluent", "raw"])
def test_frame_round_trip(framing):
    codec = FrameEvent.codec(framing)
    ev = frame()
    data = codec.encode(ev.to_avro())
    assert FrameEvent.from_avro(codec.decode(data)) == ev


def test_single_object_header_names_the_writer_schema():
    codec = AvroCodec("FrameEvent")
    data = codec.encode(frame().to_avro())
    assert data[:2] == b"\xc3\x01"
    assert struct.unpack_from("<Q", data, 2)[0] == codec.entry.fingerprint


def test_confluent_header_carries_the_schema_id():
    codec = AvroCodec("DefectEvent", framing="confluent")
    ev = DefectEvent(event_id="e", camera_id="c", line_id="l", part_id="p", track_id=0, defect_class="scratch",
                     severity=5.5, severity_max=7.0, confidence=0.75, bbox=dict(x0=1, y0=2, x1=3, y1=4),
                     best_frame_seq=3, area_px=4, frames_seen=3, frames_total=4, first_frame_ts=1, last_frame_ts=2,
                     model_version="m1", run_id="production", class_votes={"scratch": 2.5})
    data = codec.encode(ev.to_avro())
    # id 3 stays with the schema it was first given (DefectEvent.v1): bytes already written under it keep decoding
    assert data[0] == 0 and struct.unpack_from(">I", data, 1)[0] == 9
    assert DefectEvent.from_avro(codec.decode(data)) == ev


def test_old_frames_stay_readable_after_fields_were_added():
    old = AvroCodec("FrameEvent.v1")
    rec = frame().to_avro()
    for f in ("frame_index", "last_frame", "pixels_per_mm"):
        rec.pop(f)
    rec["schema_version"] = 1
    decoded = AvroCodec("FrameEvent").decode(old.encode(rec))
    assert decoded["frame_index"] == 0 and decoded["last_frame"] is False and decoded["pixels_per_mm"] is None
    assert decoded["schema_version"] == 1 and decoded["part_id"] == "p-1"


def test_old_frames_readable_in_confluent_framing_too():
    old = AvroCodec("FrameEvent.v1", framing="confluent")
    rec = {k: v for k, v in frame().to_avro().items() if k not in ("frame_index", "last_frame", "pixels_per_mm")}
    assert AvroCodec("FrameEvent", framing="confluent").decode(old.encode(rec))["last_frame"] is False


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty"),
        (b"\xc3\x01\x00", "too_short"),
        (b"\x00\x01" + b"\x00" * 20, "bad_magic"),
        (b"\xc3\x01" + b"\xff" * 8 + b"abc", "unknown_schema"),
    ],
)
def test_bad_bytes_raise_one_typed_error(data, reason):
    with pytest.raises(DecodeError) as info:
        AvroCodec("FrameEvent").decode(data)
    assert info.value.reason == reason
    assert reason in str(info.value)


def test_truncated_and_trailing_bytes_are_reported():
    codec = AvroCodec("FrameEvent")
    data = codec.encode(frame().to_avro())
    with pytest.raises(DecodeError) as info:
        codec.decode(data[:-3])
    assert info.value.reason == "corrupt"
    with pytest.raises(DecodeError) as info:
        codec.decode(data + b"xx")
    assert info.value.reason == "trailing_bytes"


def test_bytes_of_another_event_type_are_rejected():
    alert = Alert(alert_id="a", kind="SPIKE", line_id="l", metric="p", rate=0.2, center=0.05, limit=0.1, rule="WE1",
                  inspected=100, defective=20, window_start=0, window_end=1, created_at=2, message="m")
    data = AvroCodec("Alert").encode(alert.to_avro())
    with pytest.raises(DecodeError) as info:
        AvroCodec("FrameEvent").decode(data)
    assert info.value.reason == "unknown_schema"


def test_confluent_unknown_id():
    with pytest.raises(DecodeError) as info:
        AvroCodec("FrameEvent", framing="confluent").decode(b"\x00\x00\x00\x03\xe7" + b"\x00" * 10)
    assert info.value.reason == "unknown_schema"


def test_encode_error_names_the_schema():
    with pytest.raises(ValueError, match="FrameEvent"):
        AvroCodec("FrameEvent").encode({"camera_id": 3})


def test_every_event_type_round_trips():
    part = PartInspected(event_id=deterministic_id("c", "p", "m", "r"), camera_id="c", line_id="l", part_id="p",
                         verdict="FAIL", defects_total=2, frames=6, first_frame_ts=1, last_frame_ts=9,
                         closed_reason="NEXT_PART", model_version="m", run_id="r", shift_name="night",
                         shift_start=0, defect_counts={"pit": 2})
    dead = DeadLetter(topic="frames", partition=1, offset=99, original=b"\x00junk", reason="bad", error_class="decode_error",
                      failed_at=5, key=b"cam", camera_id=None)
    for ev in (part, dead):
        codec = type(ev).codec()
        assert type(ev).from_avro(codec.decode(codec.encode(ev.to_avro()))) == ev


def test_schemas_have_namespaces_and_docs():
    store = default_store()
    for key in store.keys():
        raw = store.get(key).raw
        assert raw["namespace"] == "io.defectstream.events"
        assert raw.get("doc"), key


def test_registered_schema_is_resolvable(tmp_path):
    store = SchemaStore()
    raw = json.loads(json.dumps(store.get("FrameEvent.v1").raw))
    store.register("FrameEvent.v0-from-registry", raw, confluent_id=4242)
    assert store.by_id(4242).name == "io.defectstream.events.FrameEvent"


def test_deterministic_id_is_stable():
    assert deterministic_id("cam", "p", 1, "m", "run") == deterministic_id("cam", "p", 1, "m", "run")
    assert deterministic_id("cam", "p", 1, "m", "run") != deterministic_id("cam", "p", 2, "m", "run")
    assert len(deterministic_id("x")) == 32


def defect(**over) -> DefectEvent:
    base = dict(event_id="e", camera_id="c", line_id="l", part_id="p", track_id=0, defect_class="scratch",
                severity=5.5, severity_max=7.0, confidence=0.75, bbox=dict(x0=1, y0=2, x1=3, y1=4), best_frame_seq=3,
                area_px=4, frames_seen=3, frames_total=4, first_frame_ts=1, last_frame_ts=2, model_version="m1",
                run_id="production", class_votes={"scratch": 2.5})
    base.update(over)
    return DefectEvent(**base)


def verdict(**over) -> PartInspected:
    base = dict(event_id=deterministic_id("c", "p", "m", "r"), camera_id="c", line_id="l", part_id="p",
                verdict="FAIL", defects_total=2, frames=6, first_frame_ts=1, last_frame_ts=9, closed_reason="NEXT_PART",
                model_version="m", run_id="r", shift_name="night", shift_start=0, defect_counts={"pit": 2})
    base.update(over)
    return PartInspected(**base)


V2_DEFECT_FIELDS = ("shift", "shift_start", "emission_id")
V3_PART_FIELDS = ("shift", "emission_id")


@pytest.mark.parametrize("framing", ["single_object", "confluent"])
def test_defects_written_before_version_2_decode_with_defaults(framing):
    rec = {k: v for k, v in defect().to_avro().items() if k not in V2_DEFECT_FIELDS}
    rec["schema_version"] = 1
    data = AvroCodec("DefectEvent.v1", framing=framing).encode(rec)
    if framing == "confluent":
        assert struct.unpack_from(">I", data, 1)[0] == 3  # as written before version 2
    ev = DefectEvent.from_avro(AvroCodec("DefectEvent", framing=framing).decode(data))
    assert (ev.shift, ev.shift_start, ev.emission_id, ev.schema_version) == ("", 0, "", 1)
    assert ev.event_id == "e" and ev.class_votes == {"scratch": 2.5}


@pytest.mark.parametrize("old_key,old_version", [("PartInspected.v2", 2), ("PartInspected.v1", 1)])
@pytest.mark.parametrize("framing", ["single_object", "confluent"])
def test_verdicts_written_before_version_3_decode_with_their_shift(framing, old_key, old_version):
    rec = {k: v for k, v in verdict(closed_reason="TIMEOUT").to_avro().items() if k not in V3_PART_FIELDS}
    rec["schema_version"] = old_version
    data = AvroCodec(old_key, framing=framing).encode(rec)
    ev = PartInspected.from_avro(AvroCodec("PartInspected", framing=framing).decode(data))
    assert ev.emission_id == "" and ev.schema_version == old_version
    assert ev.shift_name == ev.shift == "night"  # the shift an old verdict carries in shift_name


def test_version_2_defects_and_version_3_verdicts_round_trip_with_shift_and_emission():
    d = defect(shift="late", shift_start=1_699_970_400_000, emission_id="x" * 32)
    v = verdict(shift="late", shift_name="late", emission_id="x" * 32)
    for ev in (d, v):
        for framing in ("single_object", "confluent", "raw"):
            codec = type(ev).codec(framing)
            assert type(ev).from_avro(codec.decode(codec.encode(ev.to_avro()))) == ev
    assert (d.schema_version, v.schema_version) == (2, 4)


def test_new_versions_stay_readable_by_old_readers():
    # forward compatibility: a consumer still on the old schema ignores the added fields
    d = defect(shift="late", shift_start=5, emission_id="x")
    old = AvroCodec("DefectEvent.v1").decode(AvroCodec("DefectEvent").encode(d.to_avro()), writer="DefectEvent")
    assert "shift" not in old and old["event_id"] == "e"
    v = verdict(emission_id="x")
    old = AvroCodec("PartInspected.v2").decode(AvroCodec("PartInspected").encode(v.to_avro()), writer="PartInspected")
    assert "emission_id" not in old and old["shift_name"] == "night"


def test_part_shift_and_shift_name_are_one_value():
    assert verdict(shift_name="late").shift == "late"
    assert verdict(shift_name="", shift="late").shift_name == "late"


def test_emission_id_follows_what_the_close_produced():
    from schemas.events import emission_id_of

    v = verdict()
    d0, d1 = defect(event_id="a", track_id=0), defect(event_id="b", track_id=1)
    assert emission_id_of(v, [d0, d1]) == emission_id_of(v, [d1, d0])  # order of emission does not matter
    assert emission_id_of(v, [d0, d1]) != emission_id_of(v, [d0])
    assert emission_id_of(v, [d0]) != emission_id_of(v, [defect(event_id="c", track_id=2)])
    assert emission_id_of(v, [d0]) != emission_id_of(verdict(event_id="other"), [d0])
    assert emission_id_of(v, [d0]) == emission_id_of(verdict(), [defect(event_id="a", track_id=0, emission_id="z")])


@pytest.mark.parametrize("framing", ["single_object", "confluent"])
def test_verdicts_written_before_version_4_decode_without_a_model_switch(framing):
    rec = {k: v for k, v in verdict(emission_id="x").to_avro().items() if k != "opened_model_version"}
    rec["schema_version"] = 3
    data = AvroCodec("PartInspected.v3", framing=framing).encode(rec)
    if framing == "confluent":
        assert struct.unpack_from(">I", data, 1)[0] == 10  # the id version 3 had
    ev = PartInspected.from_avro(AvroCodec("PartInspected", framing=framing).decode(data))
    assert (ev.opened_model_version, ev.schema_version, ev.emission_id) == ("", 3, "x")
    v = verdict(model_version="v3", opened_model_version="v2")
    for fr in ("single_object", "confluent", "raw"):
        codec = PartInspected.codec(fr)
        assert PartInspected.from_avro(codec.decode(codec.encode(v.to_avro()))) == v
    old = AvroCodec("PartInspected.v3").decode(AvroCodec("PartInspected").encode(v.to_avro()), writer="PartInspected")
    assert "opened_model_version" not in old and old["model_version"] == "v3"
