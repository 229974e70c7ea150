"""Misconfiguration reads as one line naming the setting (streams.preflight), never as a traceback."""
from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from streams import preflight
from streams.settings import KafkaSettings, ModelSettings, PlantSettings, Settings


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_overlapping_shifts_are_refused_with_both_names():
    with pytest.raises(ValidationError) as e:
        PlantSettings(shifts=[{"name": "early", "start": "06:00", "end": "14:00"},
                              {"name": "late", "start": "13:30", "end": "22:00"}])
    assert "'early' (06:00-14:00) and 'late' (13:30-22:00) overlap from 13:30" in str(e.value)


def test_a_night_shift_overlapping_the_morning_is_refused():
    with pytest.raises(ValidationError, match="overlap from 05:00"):
        PlantSettings(shifts=[{"name": "night", "start": "22:00", "end": "06:00"},
                              {"name": "early", "start": "05:00", "end": "13:00"}])


def test_repeated_shift_names_are_refused():
    with pytest.raises(ValidationError, match="repeated: a"):
        PlantSettings(shifts=[{"name": "a", "start": "06:00", "end": "12:00"},
                              {"name": "a", "start": "12:00", "end": "18:00"}])


@pytest.mark.parametrize("shifts", [
    [{"name": "day", "start": "06:00", "end": "06:00"}],  # one 24 h shift
    [{"name": "early", "start": "06:00", "end": "14:00"}, {"name": "late", "start": "14:00", "end": "22:00"},
     {"name": "night", "start": "22:00", "end": "06:00"}],
    [{"name": "early", "start": "06:00", "end": "14:00"}],  # gaps are allowed ("unscheduled")
])
def test_valid_calendars_pass(shifts):
    assert len(PlantSettings(shifts=shifts).shifts) == len(shifts)


def test_invalid_settings_name_the_environment_variable(monkeypatch):
    monkeypatch.setenv("DEFECTSTREAM_PLANT__SHIFTS", '[{"name": "a", "start": "06:00", "end": "25:00"}]')
    with pytest.raises(ValidationError) as e:
        Settings()
    msg = preflight.explain(e.value)
    assert msg is not None and msg.startswith("invalid settings: plant.shifts.0.end (DEFECTSTREAM_PLANT__SHIFTS)")
    assert "Traceback" not in msg


def test_an_unknown_timezone_is_explained(monkeypatch):
    monkeypatch.setenv("DEFECTSTREAM_PLANT__TIMEZONE", "Mars/Olympus")
    with pytest.raises(ValidationError) as e:
        Settings()
    assert "DEFECTSTREAM_PLANT__TIMEZONE" in preflight.explain(e.value)
    assert "unknown timezone 'Mars/Olympus'" in preflight.explain(e.value)


def test_unrelated_errors_are_not_explained():
    assert preflight.explain(ValueError("boom")) is None
    assert preflight.explain(KeyError("x")) is None


def test_clickhouse_errors_are_explained_by_code():
    from clickhouse_driver import errors

    assert "wrong user or password" in preflight.explain(errors.ServerException("x", code=516))
    assert "db migrate" in preflight.explain(errors.ServerException("x", code=81))
    assert "DEFECTSTREAM_CLICKHOUSE__HOST" in preflight.explain(errors.NetworkError("refused"))
    assert preflight.explain(errors.ServerException("syntax", code=62)) is None  # a bug, not a setting


def test_a_missing_checkpoint_names_the_setting(tmp_path):
    with pytest.raises(preflight.PreflightError, match="DEFECTSTREAM_MODEL__PATH=.*does not exist"):
        preflight.check_checkpoint(ModelSettings(path=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(preflight.PreflightError, match="no usable model"):
        preflight.check_checkpoint(ModelSettings(path=str(tmp_path / "empty")))
    preflight.check_checkpoint(ModelSettings())  # the packaged default exists


def test_an_unreachable_broker_is_one_message_within_the_timeout():
    port = _closed_port()
    with pytest.raises(preflight.PreflightError) as e:
        preflight.check_kafka(KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}"), timeout_s=2)
    assert f"cannot reach the Kafka broker 127.0.0.1:{port}" in str(e.value)
    assert "DEFECTSTREAM_KAFKA__BOOTSTRAP_SERVERS" in str(e.value)
