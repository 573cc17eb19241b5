"""Writing files so that a failure never leaves a partial one behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; when the block succeeds it replaces ``target`` (with the
    permissions a newly created file would get), otherwise it is deleted and ``target`` is left as it was.

    The temporary name ends in ``.part`` + ``suffix`` (writers such as SimpleITK choose the format by suffix).
    """
    target = Path(target)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix="." + target.name + ".", suffix=".part" + suffix)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600 files
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
