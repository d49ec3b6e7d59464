"""A layer's contents as a file each, made from its pack once, for hard links to them.

The mkfs builder's staging tree gives ``mkfs.ext4 -d`` one host file per
image file. Copied out of the packs, a batch of ten images sharing a base
copied the base's ~200 MB ten times (cold batch with the mkfs builder: 20 s
against 14 s with a file per member); hard links cost nothing per image.
So the first staging tree that needs a layer's files makes them::

    <layers_root>/<hex>/files/<offset>   the bytes at <offset> of the pack
                                         (mode 0444; staging trees link them)

The directory is built under a temporary name and renamed into place
complete, under an exclusive ``flock`` of the store directory so that
concurrent builds make it once. Only the mkfs builder asks for it: the
native writer copies from the pack, and a store used only by native images
never has one. Not fsynced (as the staging trees made from it are not): it
can be made again from the pack at any time, and a staging tree that
disagrees with the flat image's entries is refused (``ext4.inodes``).

Trusts: the store's index (written by ``unpack``); names are offsets we
format, never paths from the tar.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from pipeline.base.files import publish_dir, remove_path, temp_path
from pipeline.layers.store import LayerStore

__all__ = ["FILES_DIR", "extracted_files", "content_file_name", "copy_range"]

FILES_DIR = "files"
_NO_COPY_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)


def content_file_name(content: int) -> bytes:
    """The name under ``files/`` of the content at offset ``content`` of the pack."""
    return b"%d" % content


def extracted_files(store: LayerStore) -> Path:
    """``<store>/files``, made from the pack first if it is not there yet."""
    final = store.root / FILES_DIR
    if final.is_dir():
        return final
    lock = os.open(store.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not final.is_dir():
            _extract(store, final)
    finally:
        os.close(lock)                      # releases the lock
    return final


def _extract(store: LayerStore, final: Path) -> None:
    tmp = temp_path(final)
    os.mkdir(tmp, 0o700)
    try:
        dir_fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        pack = os.open(store.pack_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for entry in store.entries():
                if entry.content is None:
                    continue
                out = os.open(content_file_name(entry.content),
                              os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444,
                              dir_fd=dir_fd)
                try:
                    copy_range(pack, entry.content, out, entry.size)
                finally:
                    os.close(out)
        finally:
            os.close(pack)
            os.close(dir_fd)
        publish_dir(tmp, final)
    finally:
        if tmp.exists():
            remove_path(tmp)


def copy_range(src: int, offset: int, dst: int, size: int) -> None:
    """The ``size`` bytes at ``offset`` in ``src`` to ``dst``'s position (in the kernel
    where it can); AssertionError if ``src`` holds fewer."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, size - done, offset + done)
            if n == 0:
                break
            done += n
    except OSError as e:
        if e.errno not in _NO_COPY_RANGE:
            raise
        while done < size and (chunk := os.pread(src, min(size - done, 1 << 20),
                                                  offset + done)):
            os.write(dst, chunk)
            done += len(chunk)
    if done != size:
        raise AssertionError(f"internal error: a layer pack holds {done} of the {size} bytes"
                             f" at {offset}")
