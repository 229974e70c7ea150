"""The winning-defects subquery shared by the SPC report's defect set and `compare` (apart, so that
`streams.replay.queries` needs nothing of `streams.spc.queries`, whose query catalogue includes compare's)."""
from __future__ import annotations

from typing import Sequence


def winning_defects_sql(cols: Sequence[str], where: str, winners: str) -> str:
    """Subquery: one row per defect event id (`d_row`, a tuple of `cols` from its latest delivery), only
    defects of the closes in `winners` (a SELECT of (camera, part, model version, emission id) rows:
    each part's winning verdict). Shared by the report's defect set and `compare`."""
    return f"""
    SELECT event_id, argMax(d_tuple, (version, d_tuple)) AS d_row
    FROM
    (
        SELECT event_id, version, tuple({", ".join(cols)}) AS d_tuple
        FROM defects
        WHERE {where}
          AND (camera_id, part_id, model_version, emission_id) IN
              ({winners})
    )
    GROUP BY event_id"""
