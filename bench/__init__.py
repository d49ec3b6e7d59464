"""Benchmarks of rootfs-pipeline against the usual alternative (skopeo, umoci, mkfs.ext4 -d).

Run ``.venv/bin/python bench/run.py``; see bench/README.md. Not part of the
installed package and not part of the test suite.
"""
