"""Avro codec for defectstream events: schema store, framing, writer/reader schema resolution.

Three framings are supported:

* ``single_object`` (default) — the Avro spec's single-object encoding: ``C3 01`` + the writer
  schema's 8-byte CRC-64-AVRO fingerprint (little endian) + Avro binary. The fingerprint names the
  writer schema, so events written with an older schema version stay readable after a field was
  added with a default (the old schema is kept under ``schemas/avro/history/``).
* ``confluent`` — Confluent wire format: ``00`` + 4-byte big-endian schema id + Avro binary, so the
  topics can sit beside a Schema Registry. Ids come from ``schemas/avro/registry.json`` or
  :meth:`SchemaStore.register`.
* ``raw`` — bare Avro binary; the writer schema must be the reader schema or given explicitly.

fastavro is used on the hot path (``ops/bench/codec.py`` measures it against the ``avro``
package on a 1600×256 frame event). Every decoding failure raises :class:`DecodeError` with a
machine-readable ``reason``.
"""
from __future__ import annotations

import copy
import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import fastavro
from fastavro.schema import to_parsing_canonical_form

AVRO_DIR = Path(__file__).resolve().parent / "avro"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
Framing = Literal["single_object", "confluent", "raw"]

_EMPTY64 = 0xC15D213AA4D7A795


def _fp_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp & 0xFFFFFFFFFFFFFFFF)
    return table


_FP_TABLE = _fp_table()


def crc64_avro(data: bytes) -> int:
    """The Avro spec's CRC-64-AVRO (Rabin) fingerprint of ``data``."""
    fp = _EMPTY64
    for b in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ b) & 0xFF]
    return fp


class DecodeError(ValueError):
    """Bytes that are not a valid event; ``reason`` says which way they are wrong.

    Reasons: ``empty``, ``too_short``, ``bad_magic``, ``unknown_schema``, ``corrupt``,
    ``trailing_bytes``.
    """

    def __init__(self, reason: str, message: str, *, schema: str | None = None):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.schema = schema


def _strip_logical_types(node: Any) -> Any:
    """Drop ``logicalType`` so timestamps stay plain epoch-millisecond ints (no datetime churn)."""
    if isinstance(node, dict):
        out = {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
        if node.get("logicalType") and isinstance(node.get("type"), str) and len(out) == 1:
            return out["type"]
        return out
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


@dataclass(frozen=True)
class SchemaEntry:
    """One known schema version."""

    key: str  # file stem, e.g. "FrameEvent" or "FrameEvent.v1"
    name: str  # full Avro name, e.g. io.defectstream.events.FrameEvent
    raw: dict
    parsed: dict
    fingerprint: int
    confluent_id: int | None


class SchemaStore:
    """All schema versions the system knows: current ones plus history, by fingerprint and id."""

    def __init__(self, root: Path = AVRO_DIR):
        self._by_key: dict[str, SchemaEntry] = {}
        self._by_fp: dict[int, SchemaEntry] = {}
        self._by_id: dict[int, SchemaEntry] = {}
        ids: dict[str, int] = {}
        reg = root / "registry.json"
        if reg.exists():
            ids = json.loads(reg.read_text())["ids"]
        for path in sorted(root.glob("*.avsc")) + sorted((root / "history").glob("*.avsc")):
            self._add(path.stem, json.loads(path.read_text()), ids.get(path.stem))

    def _add(self, key: str, raw: dict, confluent_id: int | None) -> SchemaEntry:
        parsed = fastavro.parse_schema(_strip_logical_types(copy.deepcopy(raw)), _write_hint=False)
        canonical = to_parsing_canonical_form(parsed).encode()
        entry = SchemaEntry(key, parsed["name"], raw, parsed, crc64_avro(canonical), confluent_id)
        self._by_key[key] = entry
        self._by_fp[entry.fingerprint] = entry
        if confluent_id is not None:
            self._by_id[confluent_id] = entry
        return entry

    def register(self, key: str, raw: dict, confluent_id: int | None = None) -> SchemaEntry:
        """Add a schema version (e.g. one fetched from a Schema Registry under ``confluent_id``)."""
        return self._add(key, raw, confluent_id)

    def get(self, key: str) -> SchemaEntry:
        try:
            return self._by_key[key]
        except KeyError:
            raise KeyError(f"unknown schema {key!r}; known: {sorted(self._by_key)}") from None

    def by_fingerprint(self, fp: int) -> SchemaEntry | None:
        return self._by_fp.get(fp)

    def by_id(self, schema_id: int) -> SchemaEntry | None:
        return self._by_id.get(schema_id)

    def keys(self) -> list[str]:
        return sorted(self._by_key)


_DEFAULT_STORE: SchemaStore | None = None


def default_store() -> SchemaStore:
    """The store of the packaged schemas (built once)."""
    global _DEFAULT_STORE
    if _DEFAULT_STORE is None:
        _DEFAULT_STORE = SchemaStore()
    return _DEFAULT_STORE


class AvroCodec:
    """Encode/decode one event type (by schema key, e.g. ``"FrameEvent"``).

    ``encode`` writes with this codec's schema; ``decode`` finds the writer schema from the framing
    header (or ``writer`` for raw framing) and resolves it to this codec's schema, filling
    defaults for fields the writer did not have.
    """

    def __init__(self, key: str, framing: Framing = "single_object", store: SchemaStore | None = None):
        self.store = store or default_store()
        self.entry = self.store.get(key)
        self.framing: Framing = framing
        if framing == "single_object":
            self._header = SINGLE_OBJECT_MAGIC + struct.pack("<Q", self.entry.fingerprint)
        elif framing == "confluent":
            if self.entry.confluent_id is None:
                raise ValueError(f"schema {key} has no Confluent schema id (schemas/avro/registry.json)")
            self._header = CONFLUENT_MAGIC + struct.pack(">I", self.entry.confluent_id)
        elif framing == "raw":
            self._header = b""
        else:
            raise ValueError(f"unknown framing {framing!r}")

    @property
    def schema_name(self) -> str:
        return self.entry.name

    def encode(self, record: dict) -> bytes:
        """Serialize ``record``; raises ``ValueError`` naming the field when it does not fit."""
        buf = io.BytesIO()
        buf.write(self._header)
        try:
            fastavro.schemaless_writer(buf, self.entry.parsed, record)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ValueError(f"record does not match {self.entry.key}: {exc}") from exc
        return buf.getvalue()

    def _writer_for(self, data: bytes) -> tuple[SchemaEntry, int]:
        if self.framing == "raw":
            return self.entry, 0
        if self.framing == "single_object":
            if len(data) < 10:
                raise DecodeError("too_short", f"{len(data)} bytes, the single-object header alone is 10", schema=self.entry.key)
            if data[:2] != SINGLE_OBJECT_MAGIC:
                raise DecodeError("bad_magic", f"expected C3 01, got {data[:2].hex(' ')}", schema=self.entry.key)
            fp = struct.unpack_from("<Q", data, 2)[0]
            writer = self.store.by_fingerprint(fp)
            if writer is None:
                raise DecodeError("unknown_schema", f"no known schema has fingerprint {fp:016x}", schema=self.entry.key)
            return writer, 10
        if len(data) < 5:
            raise DecodeError("too_short", f"{len(data)} bytes, the Confluent header alone is 5", schema=self.entry.key)
        if data[:1] != CONFLUENT_MAGIC:
            raise DecodeError("bad_magic", f"expected 00, got {data[:1].hex()}", schema=self.entry.key)
        sid = struct.unpack_from(">I", data, 1)[0]
        writer = self.store.by_id(sid)
        if writer is None:
            raise DecodeError("unknown_schema", f"schema id {sid} is not registered", schema=self.entry.key)
        return writer, 5

    def decode(self, data: bytes | None, writer: str | None = None) -> dict:
        """Deserialize bytes into a dict shaped like this codec's (reader) schema.

        Args:
            data: the message value.
            writer: raw framing only — key of the schema the bytes were written with.
        Raises:
            DecodeError: empty, truncated, wrong magic, unknown writer schema, corrupt body,
                a writer schema that cannot be resolved to this one, or bytes left over.
        """
        if not data:
            raise DecodeError("empty", "no bytes", schema=self.entry.key)
        entry, start = self._writer_for(data)
        if writer is not None:
            entry = self.store.get(writer)
        if entry.name != self.entry.name:
            raise DecodeError("unknown_schema", f"bytes hold a {entry.name}, expected {self.entry.name}", schema=self.entry.key)
        buf = io.BytesIO(data)
        buf.seek(start)
        try:
            if entry is self.entry:
                record = fastavro.schemaless_reader(buf, entry.parsed, None)
            else:
                record = fastavro.schemaless_reader(buf, entry.parsed, self.entry.parsed)
        except Exception as exc:  # fastavro raises EOFError, UnicodeDecodeError, IndexError, ...
            raise DecodeError("corrupt", f"{type(exc).__name__}: {exc}", schema=self.entry.key) from exc
        if buf.tell() != len(data):
            raise DecodeError("trailing_bytes", f"{len(data) - buf.tell()} bytes after the record", schema=self.entry.key)
        return record
