"""bench/procmon.py counts each address space once: a tool started with vfork runs in its
parent's memory until execve, and must not read as a second copy of the parent."""

from __future__ import annotations

import sys

import pytest

from bench.procmon import measure

# A 120 MiB parent that starts a short tool over and over: the sampler catches some of
# the children between vfork and execve.
PARENT = """
import subprocess
x = bytearray(120 << 20)
for i in range(0, len(x), 4096):
    x[i] = 1
for _ in range(150):
    subprocess.run(["true"])
"""


@pytest.mark.slow
def test_a_vforked_child_is_not_a_second_copy_of_its_parent() -> None:
    m = measure([sys.executable, "-c", PARENT])
    assert m.returncode == 0
    # The parent alone holds ~130 MiB (buffer + interpreter); one phantom copy is 250+.
    assert 120 << 20 < m.peak_pss < 180 << 20 and m.peak_rss < 190 << 20
