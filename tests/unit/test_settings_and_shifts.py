"""Typed settings from DEFECTSTREAM_* variables, and the plant shift calendar."""
from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from streams.settings import PlantSettings, Settings, Shift
from streams.shifts import shift_at


def ms(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("DEFECTSTREAM_KAFKA__BOOTSTRAP_SERVERS", "a:1,b:2")
    monkeypatch.setenv("DEFECTSTREAM_KAFKA__PARTITIONS", "8")
    monkeypatch.setenv("DEFECTSTREAM_CLICKHOUSE__PASSWORD", "s3cret")
    monkeypatch.setenv("DEFECTSTREAM_MODEL__DEVICE", "cpu")
    s = Settings()
    assert s.kafka.bootstrap_list == ["a:1", "b:2"]
    assert s.kafka.partitions == 8
    assert s.clickhouse.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    assert s.model.resolve_device() == "cpu"


def test_sasl_without_credentials_is_rejected(monkeypatch):
    monkeypatch.setenv("DEFECTSTREAM_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ValidationError, match="sasl_username"):
        Settings()


def test_bad_device_and_timezone_are_rejected(monkeypatch):
    monkeypatch.setenv("DEFECTSTREAM_MODEL__DEVICE", "tpu")
    with pytest.raises(ValidationError):
        Settings()
    with pytest.raises(ValidationError):
        PlantSettings(timezone="Mars/Olympus")


@pytest.mark.parametrize(
    "local,name,start",
    [
        ("2026-11-21T06:00:00+01:00", "early", "2026-11-21T06:00:00+01:00"),
        ("2026-11-21T13:59:59+01:00", "early", "2026-11-21T06:00:00+01:00"),
        ("2026-11-21T14:00:00+01:00", "late", "2026-11-21T14:00:00+01:00"),
        ("2026-11-21T23:30:00+01:00", "night", "2026-11-21T22:00:00+01:00"),
        # After midnight the night shift still belongs to the evening it started.
        ("2026-11-22T05:59:00+01:00", "night", "2026-11-21T22:00:00+01:00"),
    ],
)
def test_shift_at_default_calendar(local, name, start):
    slot = shift_at(ms(local), PlantSettings(timezone="Europe/Berlin"))
    assert slot.name == name and slot.start_ms == ms(start)


def test_night_shift_across_dst_end_is_nine_hours():
    # Europe/Berlin leaves summer time on 2026-10-25 at 03:00 local: the night is one hour longer.
    slot = shift_at(ms("2026-10-25T02:30:00+01:00"), PlantSettings(timezone="Europe/Berlin"))
    assert slot.name == "night" and (slot.end_ms - slot.start_ms) == 9 * 3600 * 1000


def test_calendar_gap_is_reported():
    plant = PlantSettings(timezone="UTC", shifts=[Shift(name="day", start=dt.time(8), end=dt.time(16))])
    with pytest.raises(LookupError, match="no shift"):
        shift_at(ms("2026-11-21T20:00:00+00:00"), plant)


def test_kafka_client_kwargs_carry_sasl_credentials(monkeypatch):
    monkeypatch.setenv("DEFECTSTREAM_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("DEFECTSTREAM_KAFKA__SASL_USERNAME", "line-7")
    monkeypatch.setenv("DEFECTSTREAM_KAFKA__SASL_PASSWORD", "pw")
    kw = Settings().kafka.client_kwargs()
    assert kw["bootstrap_servers"] == ["127.0.0.1:19092"]
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_plain_username"] == "line-7"
    assert kw["sasl_plain_password"] == "pw"
    assert "sasl_mechanism" not in Settings.model_construct().kafka.security_kwargs()


def test_settings_with_env_leaves_the_environment_alone(monkeypatch):
    import os

    from streams.settings import settings_with_env

    monkeypatch.delenv("DEFECTSTREAM_APP_ID", raising=False)
    s = settings_with_env({"DEFECTSTREAM_APP_ID": "plant-9", "DEFECTSTREAM_KAFKA__TOPICS__FRAMES": "p9-frames"})
    assert s.app_id == "plant-9" and s.kafka.topics.frames == "p9-frames"
    assert "DEFECTSTREAM_APP_ID" not in os.environ and Settings().app_id == "defectstream"
