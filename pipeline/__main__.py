"""``python -m pipeline``: the same as the ``rootfs`` command (pipeline.cli)."""

import sys

from pipeline.cli import main

sys.exit(main())
