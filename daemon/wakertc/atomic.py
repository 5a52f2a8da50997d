"""Atomic writes for state kept on disk (timers, the companion's devices file, the device config).

A reader, a crash or a power cut sees either the old file or the new one, never a mix: the data
goes to a temporary file in the same directory (a rename is only atomic within one file system),
is fsynced, renamed over the target, and the directory is fsynced so the rename itself survives a
power cut (a Pi's SD card).

It is also safe when root writes into a directory another user owns: the temporary file gets a
random name created with O_EXCL (`tempfile.mkstemp`), so a symlink or a file planted in the
directory is never opened, truncated or chowned; mode and owner are set on the open descriptor,
never by name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(
    path: Path, data: str | bytes, mode: int = 0o600, owner: tuple[int, int] | None = None
) -> None:
    """Replace `path` with `data` (str is UTF-8) with `mode`, and `owner` (uid, gid) if given;
    raises OSError on failure, leaving the old file as it was."""
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
