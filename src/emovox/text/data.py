"""Reading text inputs: GoEmotions-style TSV files, one-text-per-line files, and input checks.

A TSV file has no header and three tab-separated columns: the text, the comma-separated label
ids (``27`` or ``3,15``; ids index the model's label list) and an example id. Only the first two
are required. Files must be UTF-8; anything else is a :class:`TextError` that names the file and
the byte offset of the first bad byte.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TextError, TextModelError  # noqa: F401  (TextModelError: re-exported)


def check_text(text: object, *, where: str = "text") -> str:
    """Return ``text`` if it is a non-blank string, else raise :class:`TextError`."""
    if not isinstance(text, str):
        raise TextError(f"{where}: expected a string, got {type(text).__name__}")
    if not text.strip():
        raise TextError(f"{where}: empty or whitespace-only text; give at least one non-space character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone UTF-16 surrogate ("\ud800" in JSON): no tokenizer takes it
        raise TextError(f"{where}: not valid Unicode: a lone surrogate code point U+{ord(text[e.start]):04X} at "
                        f"character {e.start}") from None
    return text


def read_utf8(path: str | os.PathLike) -> str:
    """The file's text; a :class:`TextError` naming the file and byte offset when it is not UTF-8."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise TextError(f"{path}: is a directory, expected a UTF-8 text file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = data[e.start:e.start + 4].hex(" ")
        raise TextError(
            f"{path}: not valid UTF-8 at byte offset {e.start} (bytes {bad}: {e.reason}); "
            "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from e
    return text.removeprefix("\ufeff")


def read_lines(path: str | os.PathLike) -> list[str]:
    """One text per line (``\\n`` or ``\\r\\n``); blank lines are kept so callers can report them."""
    text = read_utf8(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline does not start another text
    return [line.removesuffix("\r") for line in lines]


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class TextDataset:
    """Texts with multi-hot targets ``(n, n_labels)`` read from one TSV file."""

    texts: list[str]
    targets: np.ndarray
    ids: list[str]
    path: Path
    sha256: str

    def __len__(self) -> int:
        return len(self.texts)


def read_tsv(path: str | os.PathLike, n_labels: int) -> TextDataset:
    """Read a GoEmotions-style TSV (text, label ids, id); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file (expected a TSV: text<TAB>label ids<TAB>id)")
    lines = read_lines(path)
    texts, ids, rows = [], [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2:
            raise TextError(f"{path}:{i}: expected at least 2 tab-separated columns (text, label ids), got {len(cols)}")
        text, label_field = cols[0], cols[1]
        check_text(text, where=f"{path}:{i}")
        try:
            label_ids = [int(x) for x in label_field.split(",") if x.strip()]
        except ValueError:
            raise TextError(f"{path}:{i}: label ids must be comma-separated integers, got {label_field!r}") from None
        if not label_ids or any(not 0 <= j < n_labels for j in label_ids):
            raise TextError(f"{path}:{i}: label ids {label_field!r} outside 0..{n_labels - 1}")
        texts.append(text)
        rows.append(label_ids)
        ids.append(cols[2] if len(cols) > 2 else str(i))
    if not texts:
        raise TextError(f"{path}: no examples")
    targets = np.zeros((len(texts), n_labels), dtype=np.float32)
    for r, label_ids in enumerate(rows):
        targets[r, label_ids] = 1.0
    return TextDataset(texts=texts, targets=targets, ids=ids, path=path, sha256=file_sha256(path))


def read_label_names(path: str | os.PathLike) -> list[str]:
    """A labels file: one label per line, line i = label id i."""
    names = [line.strip() for line in read_lines(path) if line.strip()]
    if len(set(names)) != len(names):
        raise TextError(f"{path}: duplicate label names")
    return names
