"""The command line: ``rootfs`` (or ``python -m pipeline``) runs doit with the pipeline's
tasks, no dodo.py needed.

::

    rootfs                      # build every image in ./images.toml
    rootfs -d <dir> list --all  # any doit command; -d picks the project directory
    rootfs --version            # the pipeline's version (and doit's, Python's)

It is doit itself (``DoitMain``) with one task loader of our own,
``PipelineLoader``: instead of importing a dodo.py it calls
``load_pipeline`` in the project directory, after doit has read the
command line, so ``manifest=``, ``frozen=``, ``log=`` work as with a dodo file.

Plain ``doit`` in a directory with an ``images.toml`` and no ``dodo.py``
would only say "Could not find dodo file". ``MissingDodoHint`` (registered
as doit's ``run`` command through the ``doit.COMMAND`` entry point, so
doit's own plugin mechanism finds it in any environment this package is
installed in) is doit's ``run`` unchanged, except that in exactly that
case it says to run ``rootfs``.

This module imports only doit at start-up; the tasks load when a command
needs them.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

from doit.cmd_base import NamespaceTaskLoader, opt_cwd
from doit.cmd_run import Run
from doit.doit_cmd import DoitMain
from doit.exceptions import InvalidCommand, InvalidDodoFile

__all__ = ["main", "version_text", "PipelineLoader", "MissingDodoHint", "pipeline_version"]

PROGRAM = "rootfs"
HINT = (f"no dodo.py here, but an images.toml: run `{PROGRAM}` (or `python -m pipeline`), which"
        " runs doit with the pipeline's tasks; `-d <dir>` works as with doit")


def pipeline_version() -> str:
    from pipeline import __version__

    return __version__


def version_text() -> str:
    from doit.version import VERSION

    doit_version = ".".join(str(part) for part in VERSION)
    return (f"rootfs-pipeline {pipeline_version()} (doit {doit_version},"
            f" Python {platform.python_version()})")


class PipelineLoader(NamespaceTaskLoader):  # type: ignore[misc]  # doit is untyped
    """doit's task loader for the pipeline: ``load_pipeline`` in the project directory."""

    cmd_options = (opt_cwd,)

    def setup(self, opt_values: dict[str, Any]) -> None:
        where = opt_values.get("cwdPath")
        if where:
            if not os.path.isdir(where):
                raise InvalidCommand(f"-d {where!r}: not a directory; give the project directory"
                                     " that holds images.toml")
            os.chdir(where)
        from pipeline.tasks import load_pipeline  # loads the manifest, the lock, logging

        self.namespace = load_pipeline()


class MissingDodoHint(Run):  # type: ignore[misc]  # doit is untyped
    """doit's ``run``; where no dodo file is but an images.toml is, it says to use rootfs."""

    def execute(self, params: Any, args: list[str]) -> Any:
        dodo, where = params.get("dodoFile"), params.get("cwdPath")
        if (dodo and not params.get("seek_file") and not Path(dodo).is_absolute()
                and not os.path.exists(dodo) and (Path(where or ".") / "images.toml").is_file()):
            raise InvalidDodoFile(HINT)
        return super().execute(params, args)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] in (["--version"], ["version"]):
        print(version_text())
        return 0
    code: int = DoitMain(PipelineLoader()).run(args)
    return code
