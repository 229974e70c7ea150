"""scrypt password hashes (streams.review.passwords) and which boxes a frame's labels leave (streams.review.export)."""
from __future__ import annotations

import pytest

from streams.review.export import frame_boxes
from streams.review.passwords import hash_password, verify_password
from streams.review.queries import Box, Label
from streams.settings import WebSettings


def test_a_hash_verifies_its_password_only():
    h = hash_password("s3cret", n=2 ** 10)
    assert h.startswith("scrypt:1024:8:1:") and "s3cret" not in h
    assert verify_password("s3cret", h)
    assert not verify_password("s3cret ", h) and not verify_password("", h)
    assert hash_password("s3cret", n=2 ** 10) != h  # a fresh salt each time
    for bad in ("", "plain", "scrypt:x:8:1:AA==:AA==", "bcrypt:1:2:3:4:5"):
        assert not verify_password("s3cret", bad)


def test_settings_refuse_a_password_where_a_hash_belongs():
    with pytest.raises(ValueError, match="not an scrypt hash for alice"):
        WebSettings(users={"alice": "s3cret"})
    assert WebSettings(users={"alice": hash_password("x", n=2 ** 10)}).host == "127.0.0.1"


def lab(cand: str, action: str, cls: str, at: int, box=(1, 1, 5, 5), who="alice") -> Label:
    return Label(f"{cand}-{action}-{at}", "f", cand, "cam", "l", "p", action, cls, Box(*box), "m1", who, at)


def test_the_latest_judgement_of_a_candidate_wins_and_missed_boxes_add_up():
    labels = [lab("c1", "confirm", "crack", 1), lab("c1", "relabel", "scratch", 5, who="bob"),  # bob later: scratch
              lab("c2", "confirm", "crack", 9), lab("c2", "reject", "crack", 3),  # the later confirm wins
              lab("c3", "reject", "crack", 2),
              lab("c4", "confirm", "", 2),  # a confirmed good frame: no box
              lab("c1", "missed", "dent", 4, box=(10, 10, 20, 20)), lab("c1", "missed", "dent", 6, box=(30, 1, 40, 9))]
    assert frame_boxes(labels) == [("scratch", Box(1, 1, 5, 5)), ("crack", Box(1, 1, 5, 5)),
                                   ("dent", Box(10, 10, 20, 20)), ("dent", Box(30, 1, 40, 9))]
    assert frame_boxes([lab("c1", "confirm", "crack", 1), lab("c1", "reject", "crack", 2)]) == []
