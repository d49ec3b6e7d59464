"""doit entry point: build every image in images.toml into out/<name>.ext4.

See README.md for the commands. Another project's dodo.py gets the same
tasks with these two lines (and `manifest=<path>` picks its manifest).
"""

from pipeline.tasks import load_pipeline

globals().update(load_pipeline())
