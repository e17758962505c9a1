"""Safe file I/O: atomic writes (temporary file + rename), JSON reading with one-line errors,
paths confined to a folder, and the location of the project's shared data.

Every file the toolkit writes goes through :func:`atomic_write`, so a reader never sees a
half-written file: an interrupted write leaves the previous version (or nothing) in place. Every
JSON file it reads goes through :func:`read_json`, so a bad file is an :class:`Image2VecError`
naming it, never a traceback.
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

__all__ = ["atomic_write", "write_json", "read_json", "resolve_under", "shared_data_dir"]

#: The checkout this package runs from (its ``shared/data`` sibling holds the shared data).
REPO = Path(__file__).resolve().parents[1]


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


def read_json(path: str | os.PathLike, what: str = "file", *, missing_ok: bool = False) -> Any:
    """Parse the UTF-8 JSON file ``path``, with a one-line error naming it on failure.

    Parameters
    ----------
    path : path-like
        The file to read.
    what : str
        What the file is, for the messages (e.g. ``"annotation file"``).
    missing_ok : bool
        Return None instead of raising when ``path`` does not exist.

    Returns
    -------
    object
        The parsed JSON value (None only for a missing file with ``missing_ok``).

    Raises
    ------
    Image2VecError
        If ``path`` does not exist (unless ``missing_ok``), is a folder, cannot be read (any
        OSError), is not UTF-8, or is not valid JSON.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise Image2VecError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise Image2VecError(f"{what} {path} is a folder, not a file") from None
    except OSError as exc:
        raise Image2VecError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise Image2VecError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte "
                             f"{exc.start})") from None
    except json.JSONDecodeError as exc:
        raise Image2VecError(f"{what} {path} is not valid JSON ({exc})") from None


def shared_data_dir() -> Path:
    """The project's shared data folder: ``$IMAGE2VEC_SHARED_DATA``, else ``../shared/data``.

    The default is relative to the checkout (``shared/data`` beside it); the folder may not
    exist, which callers report in their own terms.
    """
    return Path(os.environ.get("IMAGE2VEC_SHARED_DATA") or REPO.parent / "shared" / "data")


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
