"""Model families, one folder each; importing this package registers every family (`models.core.families`).

A new family: a folder here with its network, Inspector, options, training hooks and a tiny
example, a `FamilySpec` registered in its `__init__.py`, and one import line below.
"""
from __future__ import annotations

from models.core.families import family_specs, get_family, list_families, register_family
from models.families import (anomaly, boxes, cnn_rnn, gate, image_classifier, okdefect, segmenter,  # noqa: F401
                             severity, track_vote)  # (importing registers them)

__all__ = ["FAMILY_NAMES", "get_family", "list_families", "register_family"]

FAMILY_NAMES = tuple(s.name for s in family_specs())  # the families that inspect, in claim order
