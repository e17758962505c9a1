"""Safe file I/O: atomic writes (temporary file + rename) and paths confined to a folder.

Every file the toolkit writes goes through :func:`atomic_write`, so a reader never sees a
half-written file: an interrupted write leaves the previous version (or nothing) in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from image2vec.errors import Image2VecError

__all__ = ["atomic_write", "write_json", "resolve_under"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it onto ``path``.

    The temporary file lives in the same folder (same file system), is flushed and fsynced before
    :func:`os.replace`, and is removed if the block raises.

    Parameters
    ----------
    path : path-like
        Final destination; its folder is created if missing.
    mode : {"wb", "w"}
        Binary or text (UTF-8) mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON, atomically."""
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=1, ensure_ascii=False)
        fh.write("\n")


def resolve_under(root: str | os.PathLike, name: str) -> Path:
    """The path of file ``name`` inside folder ``root``, refusing names that leave it.

    The check is on the name itself (after collapsing ``.`` and ``..``): an annotation file
    cannot reach ``../../etc/passwd`` or an absolute path, while symlinks that the user placed
    inside ``root`` (images kept on another disk) are followed as usual.

    Parameters
    ----------
    root : path-like
        The folder that must contain the file.
    name : str
        A relative file name as found in an annotation file.

    Raises
    ------
    Image2VecError
        If ``name`` is empty, not a string, absolute, contains a NUL byte, or leaves ``root``.
    """
    if not isinstance(name, str) or not name.strip():
        raise Image2VecError(f"file name {name!r} is empty or not a string")
    if "\x00" in name:
        raise Image2VecError(f"file name {name!r} contains a NUL byte")
    if os.path.isabs(name):
        raise Image2VecError(f"file name {name!r} is an absolute path; only names inside "
                             f"the image folder {root} are accepted")
    norm = os.path.normpath(name)
    if norm in (".", os.pardir) or norm.startswith(os.pardir + os.sep):
        raise Image2VecError(f"file name {name!r} points outside the image folder {root}")
    return Path(root).resolve() / norm
