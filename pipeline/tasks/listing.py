"""``doit list`` that needs no per-image task: names and docs of the task families only.

A plain ``doit list`` prints the tasks that are not subtasks: here the
families (``resolve``, ``mkfs``, ``fetch-blob``, ``gc``...), each a group
whose name and doc do not depend on the images. Building the whole graph
for it (a ``Task`` per step of every image: 5,000 for 1,000 images) cost
most of its time, so for such a command line the creators yield the family
groups alone, as a no-op run whose stamp matches does (``noop``).

Whatever shows subtasks or looks at them takes the whole graph: ``--all``,
``--status``, ``--deps``, task names, and any option this does not know.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.tasks.cmdline import only_options

__all__ = ["families_only"]

# doit `list` options that print neither subtasks nor anything computed from them.
_VALUE_OPTIONS = frozenset({"-f", "--file", "-d", "--dir", "--template", "--sort",
                            "--backend", "--db-file", "--check_file_uptodate"})
_FLAG_OPTIONS = frozenset({"-q", "--quiet", "-p", "--private", "--seek-file"})


def families_only(args: Sequence[str]) -> bool:
    """True when ``args`` (doit's command line without the program) is a ``list`` of the
    top-level tasks only. Conservative: what this does not understand is not."""
    return bool(args) and args[0] == "list" and only_options(args[1:], _VALUE_OPTIONS,
                                                             _FLAG_OPTIONS)
