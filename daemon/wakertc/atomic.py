"""Atomic file replacement, safe when root writes into a directory another user owns.

The temporary file gets a random name created with O_EXCL (`tempfile.mkstemp`), so a symlink or a
file planted in the directory is never opened, truncated or chowned; mode and owner are set on the
open descriptor, never by name. After the rename the directory is fsynced so the new entry survives
a power cut (a Pi's SD card).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(
    path: Path, data: str | bytes, mode: int, owner: tuple[int, int] | None = None
) -> None:
    """Replace `path` with `data` (str is UTF-8) with `mode`, and `owner` (uid, gid) if given."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)  # mkstemp's 0600 and any umask: be explicit
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
