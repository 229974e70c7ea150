"""Faust codecs for the Avro events of `schemas/` (registered under `avro-<event>` names)."""
from __future__ import annotations

from typing import Any

from faust.serializers import codecs

from schemas.codec import Framing
from schemas.events import DeadLetter, DefectEvent, Event, FrameEvent, PartInspected, ReviewCandidate, ReviewFrame

# codec name -> event class
AVRO_CODECS: dict[str, type[Event]] = {
    "avro-frame": FrameEvent,
    "avro-defect": DefectEvent,
    "avro-part": PartInspected,
    "avro-deadletter": DeadLetter,
    "avro-review-frame": ReviewFrame,
    "avro-review-candidate": ReviewCandidate,
}


class AvroEventCodec(codecs.Codec):
    """Typed event <-> Avro bytes (single-object or Confluent framing, see schemas.codec).

    ``dumps`` accepts the typed event or its Avro dict; ``loads`` returns the typed event and
    raises ``schemas.codec.DecodeError`` on bad bytes (Faust reports it as a value decode error).
    """

    def __init__(self, event_cls: type[Event] = FrameEvent, framing: Framing = "single_object", **kwargs: Any):
        super().__init__(event_cls=event_cls, framing=framing, **kwargs)
        self.event_cls = event_cls
        self.avro = event_cls.codec(framing)

    def _dumps(self, obj: Any) -> bytes:
        if isinstance(obj, Event):
            obj = obj.to_avro()
        return self.avro.encode(obj)

    def _loads(self, s: bytes) -> Any:
        return self.event_cls.from_avro(self.avro.decode(s))


def register_avro_codecs(framing: Framing = "single_object") -> None:
    """Register every `avro-*` codec with Faust (idempotent; the last framing wins)."""
    for name, cls in AVRO_CODECS.items():
        codecs.register(name, AvroEventCodec(event_cls=cls, framing=framing))
