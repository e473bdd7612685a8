"""Writing files so that a reader sees the old version or the new one, never a part.

Every file statlab writes (plans, probes, comparison checkpoints, figures) goes
through :func:`atomic_write`: the content is written to a temporary file of our
own naming in the same directory, flushed to disk, then renamed over the target
(``os.replace`` is atomic on POSIX and Windows within one file system). A crash
or a kill leaves the old file and, at worst, a temporary that
:func:`remove_stale_temporaries` recognises and deletes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

TEMP_PREFIX = ".statlab-tmp-"  # every temporary we create starts so; nothing else does


def atomic_write(path, content: str | bytes | Callable[[Path], object]) -> Path:
    """Write ``content`` to ``path`` atomically and return ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The target file; its directory is created if missing.
    content : str, bytes or callable
        Text (UTF-8), bytes, or a function that writes the file at the
        temporary path it is given (e.g. ``lambda p: fig.savefig(p, format="png")``;
        the temporary keeps ``path``'s suffix so that format guessing works).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.", suffix=path.suffix)
    tmp = Path(tmp)
    try:
        if callable(content):
            os.close(handle)
            content(tmp)
        else:
            with os.fdopen(handle, "wb") as f:
                f.write(content.encode() if isinstance(content, str) else content)
        os.chmod(tmp, _mode_for(path))  # mkstemp's 0600 would make every file private to its writer
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _mode_for(path: Path) -> int:
    """The permissions a file written at ``path`` gets: the file's own where it exists, else 0666 less the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def remove_stale_temporaries(directory, *, keep=()) -> list[Path]:
    """Delete the temporaries a killed :func:`atomic_write` left in ``directory``; returns them.

    Call it only while no other writer uses the directory (plans hold a lock);
    names in ``keep`` (the lock itself) are left alone.
    """
    removed = []
    for p in Path(directory).glob(f"{TEMP_PREFIX}*"):
        if p.is_file() and p.name not in keep:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
