"""Delayed task creation whose per-image task names exist before the creator runs.

``mkfs:<image>`` and the tasks under it are made from the lock file, so
after the resolve tasks ran (doit's ``create_after``). doit checks every
``task_dep`` when it loads the tasks, before any creator ran: another
project's ``task_dep: ["mkfs:alpine"]`` then fails with "Task dependency
'mkfs:alpine' does not exist", and only the whole ``mkfs`` group could be
named.

The image names are known from the manifest at load time, so
``create_after_named`` gives doit a placeholder for ``mkfs`` and for each
``mkfs:<image>`` (doit's ``creates``), all loading through the one
``mkfs`` creator (``basename``): whichever placeholder runs first creates
every task once; the others then find their real task.

Only a command that runs tasks takes placeholders (doit's ``allow_delayed``);
``list``, ``info``, ``clean`` and ``forget`` must see the real tasks, so
for them the creator runs at load time as before. doit hands a loader no
hint of which command runs, and reads ``creates`` in exactly one place
(``doit.loader.load_tasks``, beside its ``allow_delayed`` argument), so the
property looks there; should a future doit read it elsewhere, it answers
"no placeholders", which is doit's behaviour before this module.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from doit.task import DelayedLoader

__all__ = ["create_after_named"]

F = TypeVar("F", bound=Callable[..., Any])


class _NamedDelayedLoader(DelayedLoader):  # type: ignore[misc]  # doit is untyped
    def __init__(self, creator: Callable[..., Any], executed: str, basename: str,
                 names: Iterable[str]) -> None:
        self._names = [basename, *names]
        super().__init__(creator, executed=executed)
        # Every placeholder loads through the creator's own name: it runs once.
        self.basename = basename

    @property
    def creates(self) -> list[str]:
        caller = sys._getframe(1)
        if caller.f_code.co_name == "load_tasks" and caller.f_locals.get("allow_delayed"):
            return list(self._names)
        return []

    @creates.setter
    def creates(self, value: list[str]) -> None:
        """DelayedLoader.__init__ assigns the plain list; the names above stand instead."""


def create_after_named(executed: str, basename: str, names: Iterable[str]) -> Callable[[F], F]:
    """doit's ``create_after(executed=...)`` for a creator whose tasks are ``basename``
    and ``basename:<name>`` for each of ``names``, nameable in any ``task_dep``."""
    wanted = [f"{basename}:{name}" for name in names]

    def decorate(creator: F) -> F:
        creator.doit_create_after = _NamedDelayedLoader(  # type: ignore[attr-defined]
            creator, executed, basename, wanted)
        return creator

    return decorate
