"""The manifest, ``images.toml``: what to build, from where, and how.

``load_manifest`` reads and validates the file (see ``manifest.py``);
``environment.py`` lets the environment add registry mirrors and insecure
hosts so CI can redirect an unchanged manifest; ``source.py`` finds line
numbers for error messages.
"""

from __future__ import annotations

from pipeline.project.config.environment import INSECURE_VAR, MIRRORS_VAR
from pipeline.project.config.manifest import (
                       ImageSpec,
                       Manifest,
                       RegistrySettings,
                       Settings,
                       load_manifest,
                       lock_path_for,
                       parse_manifest,
)

__all__ = ["INSECURE_VAR", "MIRRORS_VAR", "ImageSpec", "Manifest", "RegistrySettings",
           "Settings", "load_manifest", "lock_path_for", "parse_manifest"]
