"""Safe file I/O: atomic writes (temporary file + rename), reading regular files only, JSON
reading with one-line errors, paths confined to a folder, the cache folder, and the files that
ship inside the package (the embedded sample, the pretrained model).

Every file the toolkit writes goes through :func:`atomic_write`, so a reader never sees a
half-written file: an interrupted write leaves the previous version (or nothing) in place. Every
file it reads is opened by :func:`open_regular`, so a folder, a named pipe or a device is refused
at once instead of hanging, and every JSON file through :func:`read_json`, so a bad file is an
:class:`Image2VecError` naming it, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

from image2vec.errors import Image2VecError

__all__ = ["atomic_write", "write_json", "open_regular", "read_json", "parse_json", "resolve_under",
           "cache_dir", "resource_path"]


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
        Binary or text mode. Text is UTF-8; a file name that is not valid UTF-8 (kept by Python
        as lone surrogates) is written as its ``\\udcXX`` escape, which JSON reads back unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a short temporary name: any name the file system takes for ``path`` can be written
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=".tmp", dir=path.parent)
    text = {} if "b" in mode else {"encoding": "utf-8", "errors": "backslashreplace"}
    try:
        with open(fd, mode, **text) as fh:
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


def open_regular(path: str | os.PathLike, what: str = "file") -> BinaryIO:
    """Open ``path`` for binary reading, refusing anything but a regular file.

    The file is opened without blocking and checked with ``fstat`` on the open descriptor, so a
    named pipe called ``x.jpg`` is refused at once (a plain ``open`` waits for a writer forever)
    and nothing can swap the file between the check and the read.

    Parameters
    ----------
    path : path-like
    what : str
        What the file is, for the messages (e.g. ``"image"``).

    Raises
    ------
    Image2VecError
        ``{what} {path} does not exist``, ``is a folder, not a file``, ``is not a regular file``
        (a named pipe, socket or device), or ``cannot read {what} {path}: ...`` (permissions, ...).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise Image2VecError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise Image2VecError(f"{what} {path} is a folder, not a file") from None
    except OSError as exc:
        raise Image2VecError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        problem = ("is a folder, not a file" if stat.S_ISDIR(kind)
                   else "is not a regular file (a named pipe, socket or device)")
        raise Image2VecError(f"{what} {path} {problem}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


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
        If ``path`` does not exist (unless ``missing_ok``), is not a regular file, cannot be
        read, is not UTF-8, is not valid JSON, or is nested too deeply to parse.
    """
    if missing_ok and not os.path.lexists(path):
        return None
    with open_regular(path, what) as fh:
        try:
            return parse_json(fh.read(), f"{what} {path}")
        except OSError as exc:
            raise Image2VecError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def parse_json(document: bytes | str, what: str) -> Any:
    """Parse a JSON document (bytes are UTF-8), with a one-line error naming ``what``.

    Raises
    ------
    Image2VecError
        ``{what} is not UTF-8 text``, ``is not valid JSON``, ``is nested too deeply`` (a
        hostile document of 100,000 nested lists exhausts the parser's recursion) or ``holds
        an integer`` out of the 64-bit range (no id, count or size is larger; Python refuses to
        convert one of over 4300 digits at all).
    """
    def integer(text: str) -> int:
        digits = len(text.lstrip("-"))
        if digits > 19:
            raise Image2VecError(f"{what} holds an integer of {digits} digits, out of the 64-bit range")
        value = int(text)
        if not -2**63 <= value < 2**63:
            raise Image2VecError(f"{what} holds the integer {value}, out of the 64-bit range")
        return value

    try:
        return json.loads(document.decode("utf-8") if isinstance(document, bytes) else document,
                          parse_int=integer)
    except UnicodeDecodeError as exc:
        raise Image2VecError(f"{what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise Image2VecError(f"{what} is not valid JSON ({exc})") from None
    except RecursionError:
        raise Image2VecError(f"{what} is nested too deeply to be read (hostile or broken JSON)") from None


def cache_dir() -> Path:
    """The toolkit's cache folder, following the platform convention.

    ``$IMAGE2VEC_CACHE`` if set, else ``$XDG_CACHE_HOME/image2vec``, else
    ``~/.cache/image2vec``. The folder may not exist yet.
    """
    if os.environ.get("IMAGE2VEC_CACHE"):
        return Path(os.environ["IMAGE2VEC_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "image2vec"


def resource_path(*parts: str) -> Path:
    """The path of a file shipped inside the package, under ``image2vec/resources``.

    Read through :mod:`importlib.resources`, so it is the installed package's own copy wherever
    the package is installed (a wheel, an editable checkout); nothing outside the package is
    read. The package must be installed as files (not imported from a zip archive).

    Parameters
    ----------
    *parts : str
        Path components below ``resources``, e.g. ``("sample", "tags.tsv")``.
    """
    from importlib.resources import files

    return Path(str(files("image2vec").joinpath("resources", *parts)))


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
