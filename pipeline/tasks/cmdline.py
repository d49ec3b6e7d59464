"""What the user typed: task names, ``name=value`` variables, ROOTFS_* values, Ctrl-C.

doit accepts any ``name=value`` and, for a task created late (``mkfs:*``
comes from the lock file), any task name: ``doit mkfs:alpnie`` used to
exit 0 having built nothing, ``doit fozen=1`` to run unfrozen, and
``ROOTFS_FROZEN=2`` to mean "no". A typo is an error here, naming what is
allowed, before anything runs (doit prints it as one ``ERROR:`` line and
exits 3).

doit keeps the positional arguments to itself, so task names are read from
``sys.argv``: only words of the form ``<family>:<name>`` for our families
are looked at, which no option value of doit's has.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Collection, Mapping, Sequence
from types import TracebackType
from typing import TextIO

from pipeline.errors import SettingError

__all__ = ["only_options", "KNOWN_VARS", "IMAGE_FAMILIES", "NEEDS_LOCK_COMMANDS", "check_vars",
           "parse_switch", "requested_images", "check_requested", "install_interrupt_hook",
           "INTERRUPTED"]

KNOWN_VARS = ("manifest", "frozen", "log", "log_level", "shard", "shards", "fetch")
"""Every ``doit name=value`` the pipeline reads."""
IMAGE_FAMILIES = ("resolve", "remote", "flatten", "mkfs")
"""Task families whose subtask names are image names."""
NEEDS_LOCK_COMMANDS = frozenset({"info", "forget", "ignore", "clean"})
"""doit commands that look tasks up without running resolve first."""
_DOIT_COMMANDS = frozenset({"run", "list", "info", "clean", "forget", "ignore", "strace",
                            "dumpdb", "reset-dep", "help", "tabcompletion", "auto"})
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
_TASK = re.compile(rf"({'|'.join(IMAGE_FAMILIES)}):(.*)", re.DOTALL)
INTERRUPTED = ("interrupted (Ctrl-C): stopped; finished steps are kept, unfinished ones left"
               " no output; run `doit` again to continue")


def check_vars(given: Mapping[str, str]) -> None:
    """Refuse any ``doit name=value`` we do not read (a typo would be silently ignored)."""
    for name, value in given.items():
        if name not in KNOWN_VARS:
            raise SettingError(name, value, "a variable among " + ", ".join(
                f"{known}=..." for known in KNOWN_VARS) + f" (unknown variable {name!r})")


def parse_switch(name: str, value: str | None) -> bool:
    """An on/off setting: 1/true/yes/on or 0/false/no/off (any case); anything else refused."""
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SettingError(name, value or "", "one of 1, true, yes, on, 0, false, no, off")


def requested_images(argv: Sequence[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """The doit command (None for run) and the ``(family, image)`` task names in ``argv``."""
    command = None
    found = []
    for arg in argv[1:]:
        if command is None and arg in _DOIT_COMMANDS:
            command = arg
        match = _TASK.fullmatch(arg)
        if match and not arg.startswith("-"):
            found.append((match.group(1), match.group(2)))
    return command, found


def only_options(args: Sequence[str], values: Collection[str], flags: Collection[str]) -> bool:
    """True when ``args`` hold only ``name=value`` variables and the options in ``values``
    (with their value: ``-n 2``, ``-n2``, ``--process 2``, ``--process=2``) and ``flags``.

    Conservative: a task name, any other option, or a value missing at the end is not.
    """
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg.startswith("--"):
            name, eq, _ = arg.partition("=")
        elif arg.startswith("-") and len(arg) >= 2:
            name, eq = arg[:2], "=" if len(arg) > 2 else ""
        elif "=" in arg and not arg.startswith("="):
            continue  # a doit variable: manifest=..., log=..., frozen=...
        else:
            return False  # a task name or a command
        if name in flags and not eq:
            continue
        if name not in values:
            return False
        if not eq:
            if not rest:
                return False
            rest.pop(0)
    return True


def check_requested(argv: Sequence[str], images: Collection[str],
                    locked: Collection[str], *, shard: object = None,
                    selected: Collection[str] | None = None) -> None:
    """Refuse task names of unknown images; say what to run first for unresolved ones.

    In a sharded run (``shard``, whose images are ``selected``) a task of an
    image of another shard is refused too: it has no task in this run.
    """
    command, requested = requested_images(argv)
    for family, image in requested:
        shown = f"{family}:{image}"
        if image not in images:
            listed = ", ".join(f"{family}:{name}" for name in sorted(images)) or "none"
            raise SettingError("task", shown, f"a task of an image in the manifest: {listed}")
        if selected is not None and image not in selected:
            raise SettingError("task", shown, f"an image of shard {shard} ({len(selected)} "
                               f"images); {image!r} is in another shard: run without shard= "
                               "to build it here")
        if (command in NEEDS_LOCK_COMMANDS and family != "resolve" and image not in locked):
            raise SettingError("task", shown, f"a resolved image: {image!r} is not in the lock"
                               f" file yet; run `doit resolve:{image}` (or `doit`) first")


def install_interrupt_hook(stream: TextIO | None = None) -> None:
    """Ctrl-C ends the run with one line instead of a traceback; the exit status stays 130.

    Python still exits by SIGINT after an unhandled KeyboardInterrupt (so the
    shell and CI see 130), whatever the hook prints.
    """
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException,
             traceback: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            (stream or sys.stderr).write(INTERRUPTED + "\n")
            return
        previous(kind, value, traceback)

    sys.excepthook = hook
