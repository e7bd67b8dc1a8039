"""Writing files and folders atomically: the one module that renames a finished temporary into place.

A file is written to a temporary beside its destination and renamed over it (``os.replace``, atomic on
one file system), so a reader sees the old file or the new one, never half of one, and an interrupted
write (a full disk, a kill) leaves the old file as it was. Folders are built beside their destination
and renamed into place the same way. Standard library only (the torch-free inference path uses it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: ``write(tmp_path)`` fills the temporary file whose path it is given.
Writer = Callable[[str], Any]


def write_files(writes: Sequence[tuple[Path, Writer]]) -> None:
    """Write several files (``(path, write(tmp_path))`` pairs) so that a failure part-way (a full disk, a
    kill) leaves every one of them as it was: all are staged as temporary files first, then renamed."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, write in writes:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            staged.append((tmp, path))
            write(tmp)
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary readable files
    except BaseException as e:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None:
            where = staged[-1][1] if staged else writes[0][0]
            raise OSError(e.errno, f"cannot write {where} ({e.strerror}); the files already there are "
                                   f"unchanged") from e
        raise
    for tmp, path in staged:
        os.replace(tmp, path)


def write_file(path: str | os.PathLike, write: Writer) -> None:
    """One file, filled by ``write(tmp_path)``, renamed into place when it is complete."""
    write_files([(Path(path), write)])


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    write_file(path, lambda t: Path(t).write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    write_file(path, lambda t: Path(t).write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, ensure_ascii: bool = True) -> None:
    """``obj`` as indented JSON with a final newline."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=ensure_ascii) + "\n")


def move_into_place(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Rename a finished file or folder ``src`` to ``dest`` (same file system), replacing what is there:
    an existing ``dest`` is first renamed aside, then removed once ``src`` has taken its place."""
    src, dest = Path(src), Path(dest)
    if not dest.exists():
        os.replace(src, dest)
        return
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    os.replace(dest, old)
    os.replace(src, dest)
    shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)


def write_folder(dest: str | os.PathLike, fill: Callable[[Path], Any]) -> Path:
    """Build a folder with ``fill(tmp)`` beside ``dest`` and rename it into place (a failure leaves nothing)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        fill(tmp)
        move_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
