"""base.files: stamps compared at the precision a cache restore kept."""

from __future__ import annotations

import pytest

from pipeline.base.files import stamp_matches

S = 1_000_000_000
WRITTEN = (4096, 1_700_000_000 * S + 123_456_789)

# (id, recorded stamp as stored, current stamp of the file, matches)
STAMPS = [
    ("same", list(WRITTEN), WRITTEN, True),
    ("tuple-recorded", WRITTEN, WRITTEN, True),
    ("restored-whole-second", list(WRITTEN), (4096, 1_700_000_000 * S), True),
    ("whole-second-other-second", list(WRITTEN), (4096, 1_700_000_001 * S), False),
    ("rewritten-same-second", list(WRITTEN), (4096, 1_700_000_000 * S + 5), False),
    ("other-size", list(WRITTEN), (4097, WRITTEN[1]), False),
    ("restored-but-truncated", list(WRITTEN), (4095, 1_700_000_000 * S), False),
    ("missing-file", list(WRITTEN), None, False),
    ("never-recorded", None, WRITTEN, False),
    ("recorded-garbage", ["4096", WRITTEN[1]], WRITTEN, False),
    ("recorded-short", [4096], WRITTEN, False),
]


@pytest.mark.parametrize("recorded, current, matches", [s[1:] for s in STAMPS],
                         ids=[s[0] for s in STAMPS])
def test_stamp_matches(recorded: object, current: tuple[int, int] | None,
                       matches: bool) -> None:
    assert stamp_matches(recorded, current) is matches
