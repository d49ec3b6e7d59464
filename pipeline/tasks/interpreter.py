"""The doit process's interpreter, set for a run: GIL hand-offs and the cycle collector.

A cold build of one image is ~1.5 s of which the interpreter's own overheads
were a tenth, all measured on the bench image (``bench/pairs.py``, 2 cores):

- Task threads mostly wait in C (inflate, sha256, writes) with the GIL
  released and then need it back for a few lines of Python; at the default
  5 ms switch interval a thread parsing tar headers keeps them waiting that
  long every time (1.93 s at 1 ms against 2.09-2.11 s at 5 ms).
- The cycle collector ran 224 times in a build, 50-75 ms in all, mostly
  walking objects that live as long as the process (modules, classes, the
  manifest). They are frozen out of it once the dodo namespace is built,
  and young collections wait for 10,000 new objects instead of 700 (a
  flattened tree allocates ~20 per entry): 23-34 ms.
- Exit cleared every module under the collector, 35-140 ms of pure CPU after
  the last task; with everything frozen at exit it takes 10-20 ms. The
  collector then skips reference cycles at exit: nothing of ours relies on
  one being finalised then (files are closed by ``with``, logging flushes in
  its own exit handler, worker processes are ended by multiprocessing's).

Only the doit process is set this way (``tune_for_run``), not a test
session that loads the tasks in-process: frozen objects are never freed.
"""

from __future__ import annotations

import atexit
import gc
import sys

__all__ = ["tune_for_run", "SWITCH_INTERVAL_S", "YOUNG_OBJECTS"]

SWITCH_INTERVAL_S = 0.001
YOUNG_OBJECTS = 10_000
"""New container objects between two young collections (Python's default: 700)."""


def tune_for_run() -> None:
    """Set the running interpreter for a build; call once the tasks' code is loaded."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_OBJECTS, middle, old)
    atexit.register(gc.freeze)
