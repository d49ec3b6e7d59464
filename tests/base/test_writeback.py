"""base.writeback: the kernel is asked to write back what was written, in order,
once per ``every`` bytes and for the rest at the end; a refusal is asked no more."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.base.writeback import Writeback


def test_real_call_on_a_real_file(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        wb = Writeback(fd, every=1 << 20)
        assert wb.call is not None                  # glibc has it on every supported host
        for i in range(1, 6):
            os.write(fd, bytes([i]) * (700 << 10))
            wb.written(i * (700 << 10))
        wb.finish(5 * (700 << 10))
        assert wb.call is not None                  # an ordinary file accepted every call
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"".join(bytes([i]) * (700 << 10)
                                                      for i in range(1, 6))


def test_ranges_follow_the_writes_and_a_refusal_stops_the_asking() -> None:
    calls: list[tuple[int, int, int]] = []

    def accept(fd: int, offset: int, length: int, flags: int) -> int:
        calls.append((offset, length, flags))
        return 0

    wb = Writeback(99, 10, every=100)
    wb.call = accept
    for upto in (50, 109, 110, 150, 260, 300):
        wb.written(upto)
    wb.finish(333)
    assert calls == [(10, 100, 2), (110, 150, 2), (260, 73, 2)]

    def refuse(fd: int, offset: int, length: int, flags: int) -> int:
        calls.append((offset, length, flags))
        return -1

    calls.clear()
    wb = Writeback(99, every=10)
    wb.call = refuse
    for upto in (10, 20, 30):
        wb.written(upto)
    wb.finish(40)
    assert calls == [(0, 10, 2)]
