"""``emovox classify`` records: inputs (files, folders, globs, manifests) → one record per clip → a file.

One function builds a record (:func:`build_record`), errors included, for every engine: the local
``emovox classify`` and the Ray Data actors of :mod:`emovox.scale.ray_batch` call the same one on
what :meth:`EmotionModel.predict_batch` returns, so their records are the same.

>>> paths = expand_inputs(["clips/", "manifest.jsonl"])
>>> results = model.predict_batch(paths, errors="return")
>>> records = [build_record(p, r) for p, r in zip(paths, results)]
>>> with RecordWriter("results.parquet") as out:
...     out.write(records)
>>> read_records("results.parquet") == records
True

Output files: ``.jsonl`` (one JSON object per line, as ``--format jsonl`` prints) or ``.parquet``
(one row per record, columns :data:`FIELDS` plus ``error``, ``scores`` as a map from label to
probability; a field a record does not have is null). :func:`read_records` reads either back into
the records that were written.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from emovox.atomic import move_into_place

#: What a record can hold (``Prediction.to_dict`` plus the path), for ``--fields``; error records have
#: ``path`` and ``error`` only.
FIELDS = ("path", "emotion", "confidence", "scores", "music_mood", "low_confidence", "warning", "silent",
          "unsupported_labels", "quality")
#: ``--output`` file types, by extension.
OUTPUT_SUFFIXES = {".jsonl": "jsonl", ".parquet": "parquet"}
#: Inputs read as manifests (``emovox manifest``'s two formats): rows with a ``path``.
MANIFEST_SUFFIXES = (".jsonl", ".csv")
#: Rows buffered before a parquet row group is written.
PARQUET_ROWS = 1024


def build_record(path: str, result: Any, *, top_k: int | None = None) -> dict[str, Any]:
    """One clip's record: ``{"path", **prediction.to_dict()}``, or ``{"path", "error"}`` when ``result``
    is the exception :meth:`EmotionModel.predict_batch` returned in the clip's place."""
    if isinstance(result, Exception):
        return {"path": path, "error": str(result)}
    return {"path": path, **result.to_dict(top_k=top_k)}


def keep_fields(record: dict[str, Any], fields: Sequence[str] | None) -> dict[str, Any]:
    """Only ``fields`` of a record (all when None); an ``error`` is always kept."""
    if fields is None:
        return record
    return {k: record[k] for k in fields if k in record} | ({"error": record["error"]} if "error" in record else {})


# ---------------------------------------------------------------------------------------------
# Inputs


def read_manifest(path: str | os.PathLike) -> list[str]:
    """The clip paths of a manifest: ``.jsonl`` (one object with ``"path"`` a line) or ``.csv`` (a header
    with a ``path`` column), as ``emovox manifest`` writes them. A relative path is taken from the
    manifest's folder (as in ``labels.csv``), or from the working directory when only it has the file.
    Raises ValueError naming the file and line when the manifest cannot be read."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the manifest '{p}': {e}") from None
    rows = _jsonl_paths(p, text) if p.suffix.lower() == ".jsonl" else _csv_paths(p, text)
    if not rows:
        raise ValueError(f"manifest '{p}' lists no clips")
    return [_from_manifest(p, r) for r in rows]


def _jsonl_paths(p: Path, text: str) -> list[str]:
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"manifest '{p}' line {lineno}: not JSON ({e})") from None
        if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not row["path"]:
            raise ValueError(f"manifest '{p}' line {lineno}: expected an object with a \"path\" string")
        out.append(row["path"])
    return out


def _csv_paths(p: Path, text: str) -> list[str]:
    reader = csv.reader(text.splitlines())
    header = [h.strip() for h in next(reader, [])]
    if "path" not in header:
        raise ValueError(f"manifest '{p}': its header has no 'path' column (got {','.join(header) or 'nothing'})")
    i = header.index("path")
    out = []
    for lineno, row in enumerate(reader, 2):
        if not any(c.strip() for c in row):
            continue
        if len(row) <= i or not row[i].strip():
            raise ValueError(f"manifest '{p}' line {lineno}: no path")
        out.append(row[i].strip())
    return out


def _from_manifest(manifest: Path, path: str) -> str:
    if os.path.isabs(path):
        return path
    beside = manifest.parent / path
    return path if not beside.exists() and Path(path).exists() else str(beside)


def expand_inputs(paths: Iterable[str]) -> list[str]:
    """Files as given, folders recursively, globs expanded, manifests (``.jsonl``, ``.csv``) read; order
    kept, duplicates dropped. A path that matches nothing is kept so that its record reports the error."""
    from emovox.audio import find_audio_files

    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out += [str(f) for f in find_audio_files(path)]
        elif path.suffix.lower() in MANIFEST_SUFFIXES:
            out += read_manifest(path)
        elif not path.exists() and any(c in p for c in "*?["):
            matches = sorted(glob.glob(p, recursive=True))
            out += [m for m in matches if Path(m).is_file()] or [p]
        else:
            out.append(p)
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


# ---------------------------------------------------------------------------------------------
# Output files


def output_format(path: str | os.PathLike) -> str:
    """``"jsonl"`` or ``"parquet"`` from ``--output``'s extension; ValueError for any other."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"--output {str(path)!r}: unknown extension {suffix or '(none)'!r}; "
                         f"use {' or '.join(OUTPUT_SUFFIXES)}")
    return OUTPUT_SUFFIXES[suffix]


def _parquet_schema(fields: Sequence[str] | None, extra: Sequence[str] = ()):
    import pyarrow as pa

    types = {"path": pa.string(), "segment": pa.int64(), "start": pa.float64(), "end": pa.float64(),
             "emotion": pa.string(), "confidence": pa.float64(),
             "scores": pa.map_(pa.string(), pa.float64()), "music_mood": pa.string(), "low_confidence": pa.bool_(),
             "warning": pa.string(), "silent": pa.bool_(), "unsupported_labels": pa.list_(pa.string()),
             "quality": pa.struct([("snr_db", pa.float64()), ("speech_dbfs", pa.float64()),
                                   ("clipped_fraction", pa.float64()), ("bandwidth_hz", pa.float64()),
                                   ("issues", pa.list_(pa.string()))])}
    names = [f for f in (*extra, *FIELDS) if fields is None or f in fields]
    return pa.schema([pa.field(n, types[n]) for n in names] + [pa.field("error", pa.string())])


class RecordWriter:
    """Writes records to ``.jsonl`` or ``.parquet`` as they come (``fields``: the columns of a parquet
    file when ``--fields`` chose some; ``extra``: columns before those, e.g. a segment's ``start`` and ``end``).
    The file appears complete only on a clean close: it is written beside, then renamed."""

    def __init__(self, path: str | os.PathLike, *, fields: Sequence[str] | None = None, extra: Sequence[str] = ()):
        self.path = Path(path)
        self.format = output_format(path)
        self.fields = fields
        self.count = 0
        self._tmp = self.path.with_name(f".{self.path.name}.partial")
        self._rows: list[dict[str, Any]] = []
        self._file = None
        self._parquet = None
        if self.format == "parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise ValueError("--output *.parquet needs pyarrow: pip install pyarrow (or 'emovox[ray]')") from None
            self._schema = _parquet_schema(fields, extra)
            self._parquet = pq.ParquetWriter(self._tmp, self._schema)
        else:
            self._file = open(self._tmp, "w", encoding="utf-8")  # closed in close()

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self.count += 1
            if self._file is not None:
                self._file.write(json.dumps(r) + "\n")
            else:
                self._rows.append(r)
                if len(self._rows) >= PARQUET_ROWS:
                    self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._rows:
            return
        columns = {n: [_to_parquet(n, r.get(n)) for r in self._rows] for n in self._schema.names}
        self._parquet.write_table(pa.table(columns, schema=self._schema))
        self._rows = []

    def close(self, *, ok: bool = True) -> None:
        if self._file is not None:
            self._file.close()
        else:
            if ok:
                self._flush()
            self._parquet.close()
        if ok:
            move_into_place(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


def _to_parquet(name: str, value: Any) -> Any:
    return list(value.items()) if name == "scores" and value is not None else value


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``.jsonl`` or ``.parquet`` file written by :class:`RecordWriter` (null columns left out)."""
    if output_format(path) == "jsonl":
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    import pyarrow.parquet as pq

    out = []
    for row in pq.read_table(path).to_pylist():
        rec = {k: v for k, v in row.items() if v is not None}
        if "scores" in rec:
            rec["scores"] = dict(rec["scores"])
        out.append(rec)
    return out
