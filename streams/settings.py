"""Typed settings, one class per external system, read from `DEFECTSTREAM_*` environment variables.

Nested settings use a double underscore: `DEFECTSTREAM_KAFKA__BOOTSTRAP_SERVERS=host:9092`,
`DEFECTSTREAM_CLICKHOUSE__PORT=9000`, `DEFECTSTREAM_MODEL__DEVICE=cuda`. A `.env` file in the
working directory is read too. Build the settings once (`Settings()`) and pass them down.
"""
from __future__ import annotations

import datetime as dt
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class TopicNames(BaseModel):
    """Kafka topic names used by the pipeline."""

    frames: str = "frames"
    defects: str = "defects"
    parts: str = "parts"
    deadletter: str = "deadletter"
    alerts: str = "alerts"
    cameras: str = "cameras"
    ground_truth: str = "ground-truth"


class KafkaSettings(BaseModel):
    """Kafka connection, security and topic layout."""

    bootstrap_servers: str = "127.0.0.1:19092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    topics: TopicNames = Field(default_factory=TopicNames)
    partitions: int = Field(4, ge=1, description="partitions of `frames` (and co-partitioned tables)")
    replication_factor: int = Field(1, ge=1)
    # Confluent wire format (magic byte + schema id) so the topics can sit beside a Schema Registry.
    confluent_wire_format: bool = False

    @property
    def bootstrap_list(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> "KafkaSettings":
        if self.security_protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password):
            raise ValueError(f"security_protocol={self.security_protocol} needs sasl_username and sasl_password")
        return self


class ClickHouseSettings(BaseModel):
    """ClickHouse native-protocol connection."""

    host: str = "127.0.0.1"
    port: int = 19000
    database: str = "defectstream"
    user: str = "default"
    password: SecretStr = SecretStr("")
    secure: bool = False
    connect_timeout_s: float = 5.0


class ModelSettings(BaseModel):
    """Which checkpoint the Inspector loads and where it runs."""

    path: str | None = Field(None, description="checkpoint directory/file; None = the packaged default")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(8, ge=1, description="frames per inference batch (CPU); GPU batches scale up")
    gpu_batch_size: int = Field(32, ge=1)

    def resolve_device(self) -> str:
        """`auto` → `cuda` when a CUDA device is visible, else `cpu`."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


class Shift(BaseModel):
    """One shift of the plant calendar, in local wall-clock time; may cross midnight."""

    name: str
    start: dt.time
    end: dt.time


def _default_shifts() -> list[Shift]:
    return [
        Shift(name="early", start=dt.time(6), end=dt.time(14)),
        Shift(name="late", start=dt.time(14), end=dt.time(22)),
        Shift(name="night", start=dt.time(22), end=dt.time(6)),
    ]


class PlantSettings(BaseModel):
    """The plant's timezone and shift calendar (applied at ingest)."""

    name: str = "plant-1"
    timezone: str = "Europe/Berlin"
    shifts: list[Shift] = Field(default_factory=_default_shifts)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (KeyError, ValueError) as exc:  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(f"unknown timezone {v!r} (use an IANA name such as Europe/Berlin)") from exc
        return v

    @field_validator("shifts")
    @classmethod
    def _shifts_not_empty(cls, v: list[Shift]) -> list[Shift]:
        if not v:
            raise ValueError("the shift calendar needs at least one shift")
        return v


class Settings(BaseSettings):
    """All defectstream settings; `DEFECTSTREAM_` prefix, `__` between nested names."""

    model_config = SettingsConfigDict(
        env_prefix="DEFECTSTREAM_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    plant: PlantSettings = Field(default_factory=PlantSettings)
    app_id: str = "defectstream"
    run_id: str = "production"
    data_dir: str = ".stack/worker"
