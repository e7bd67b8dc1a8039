"""Emotional-speech corpora on disk → manifest rows (path, label, speaker, corpus, duration).

Supported layouts (``CORPORA``):

- ``ravdess``: ``03-01-05-01-02-01-12.wav`` (speech ``03-01-…`` and song ``03-02-…``), any folders.
- ``crema-d``: ``1001_DFA_ANG_XX.wav`` (actor, sentence, emotion, level), any folders.
- ``tess``: ``OAF_back_angry.wav`` / ``YAF_dog_ps.wav`` (label from the file-name suffix).
- ``emodb``: ``03a01Fa.wav`` (speaker, text, emotion letter, version).
- ``savee``: ``DC_a01.wav`` flat, or ``DC/a01.wav`` inside a speaker folder.
- ``nemo``: ``EB0_anger_1.opus`` (speaker, emotion, number); its ``data.tsv`` is read when present.
- ``csv``: a ``labels.csv`` with header ``path,label[,speaker][,corpus]`` (paths relative to the CSV).
- ``folders``: one sub-folder per class, the folder name is the label.

Every label is a canonical emotion name (:func:`emovox.data.labels.canonical`). Speakers are namespaced
by corpus (``ravdess_01``, ``crema-d_1001``, ``tess_OAF``) so corpora can be merged.
:func:`scan` detects the corpus from file names (or nEMO's ``data.tsv``) when it is not given.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from emovox.audio import AUDIO_EXTENSIONS, AudioError, audio_info, find_audio_files
from emovox.data.labels import CANONICAL_ORDER, SYNONYMS, LabelError, canonical
from emovox.errors import CorpusError

#: Name of the label file the ``csv`` layout looks for inside a folder.
LABELS_CSV = "labels.csv"
#: Fraction of a folder's audio files that must follow one corpus's naming for auto-detection.
DETECT_MIN_FRACTION = 0.9
#: Above this many files, durations are read by a thread pool.
_PARALLEL_MIN_FILES = 32


@dataclass(frozen=True)
class ManifestRow:
    """One clip: absolute ``path``, canonical ``label``, namespaced ``speaker`` (or None)."""

    path: str
    label: str
    speaker: str | None
    corpus: str
    duration_s: float | None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ManifestRow:
        dur = d.get("duration_s")
        return cls(
            path=str(d["path"]),
            label=canonical(d["label"]),
            speaker=d.get("speaker") or None,
            corpus=str(d.get("corpus") or "csv"),
            duration_s=float(dur) if dur not in (None, "") else None,
        )


def _ns(corpus: str, speaker: str | None) -> str | None:
    """Namespace a raw speaker id by corpus (idempotent: ``ravdess_01`` stays ``ravdess_01``)."""
    if speaker is None or str(speaker).strip() == "":
        return None
    speaker = str(speaker).strip()
    return speaker if speaker.startswith(f"{corpus}_") else f"{corpus}_{speaker}"


def _audio_files(root: Path) -> list[Path]:
    """Audio files under ``root``, sorted, skipping hidden files/folders (``._x.wav``, ``.git``)."""
    return find_audio_files(root)


def _check_folder(root: Path) -> list[Path]:
    if not root.exists():
        raise CorpusError(f"'{root}': no such folder")
    if not root.is_dir():
        raise CorpusError(f"'{root}': not a folder (pass a corpus folder, or a labels .csv file)")
    files = _audio_files(root)
    if not files:
        if not any(root.iterdir()):
            raise CorpusError(f"'{root}': empty folder")
        raise CorpusError(
            f"'{root}': no audio files found (looked recursively for {', '.join(AUDIO_EXTENSIONS)})"
        )
    return files


def _unknown_code(path: Path, corpus: str, code: str, codes: dict[str, str],
                  line: int | None = None) -> CorpusError:
    accepted = ", ".join(f"{k} {v}" for k, v in codes.items())
    where = f"'{path}'" + (f" line {line}" if line is not None else "")
    return CorpusError(f"{where}: unknown {corpus} emotion code {code!r}; accepted: {accepted}")


def _read_table(path: Path, required: tuple[str, ...], expected: str,
                delimiter: str = ",") -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """Lower-cased header columns and ``(line number, fields)`` of the non-blank rows of a label table.

    Raises :class:`CorpusError` naming the file (and line) for an unreadable or empty file, a missing
    ``required`` column or a short row; ``expected`` describes the header in those messages.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"'{path}': cannot read label file: {e}") from e
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise CorpusError(f"'{path}': empty label file (expected header {expected})")
    cols = [h.strip().lower() for h in header]
    missing = [c for c in required if c not in cols]
    if missing:
        raise CorpusError(
            f"'{path}' line 1: missing column(s) {', '.join(missing)}; header is {','.join(header)!r}, "
            f"expected {expected}"
        )

    def rows() -> Iterator[tuple[int, list[str]]]:
        for lineno, fields in enumerate(reader, start=2):
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) < len(cols):
                raise CorpusError(
                    f"'{path}' line {lineno}: {len(fields)} field(s), the header has {len(cols)} ({','.join(header)})"
                )
            yield lineno, fields

    return cols, rows()


def _table_clip(table: Path, lineno: int, rel: str, seen: dict[str, int]) -> Path:
    """The audio file a label table's row names (relative to the table's folder), checked to exist once."""
    rel = rel.strip()
    if not rel:
        raise CorpusError(f"'{table}' line {lineno}: empty path")
    path = Path(rel) if os.path.isabs(rel) else table.parent / rel
    if not path.is_file():
        raise CorpusError(f"'{table}' line {lineno}: audio file {rel!r} not found (looked for '{path}')")
    key = os.path.normpath(os.path.abspath(path))
    if key in seen:
        raise CorpusError(f"'{table}' line {lineno}: {rel!r} is listed twice (first on line {seen[key]})")
    seen[key] = lineno
    return path


# --------------------------------------------------------------------------- file-name corpora


@dataclass(frozen=True)
class FileNameCorpus:
    """A corpus whose labels and speakers are written in its file names."""

    name: str
    example: str
    #: Loose pattern used for auto-detection (unknown codes still match, so they get a clear error).
    pattern: re.Pattern
    #: ``parse(path) -> (label, raw speaker)``; raises :class:`CorpusError` naming the file.
    parse_file: Callable[[Path], tuple[str, str | None]]

    def matches(self, path: Path) -> bool:
        return bool(self.pattern.fullmatch(path.stem))

    def entries(self, root: Path) -> list[tuple[Path, str, str | None]]:
        out = []
        for p in _check_folder(root):
            label, speaker = self.parse_file(p)
            out.append((p, canonical(label), _ns(self.name, speaker)))
        return out


RAVDESS_EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry",
                    "06": "fearful", "07": "disgust", "08": "surprised"}
_RAVDESS_RE = re.compile(r"(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)")
_RAVDESS_HELP = (
    "expected seven 2-digit fields MM-VV-EE-II-SS-RR-AA such as 03-01-05-01-02-01-12.wav "
    "(modality 01 audio-video, 02 video-only, 03 audio-only; vocal channel 01 speech, 02 song; "
    "emotion 01..08; intensity 01/02; statement 01/02; repetition 01/02; actor 01..24)"
)


def _parse_ravdess(path: Path) -> tuple[str, str]:
    m = _RAVDESS_RE.fullmatch(path.stem)
    if not m:
        raise CorpusError(f"'{path}': not a RAVDESS file name: {_RAVDESS_HELP}")
    modality, channel, emotion, intensity, statement, repetition, actor = m.groups()
    checks = [("modality", modality, ("01", "02", "03")), ("vocal channel", channel, ("01", "02")),
              ("intensity", intensity, ("01", "02")), ("statement", statement, ("01", "02")),
              ("repetition", repetition, ("01", "02"))]
    for field, value, ok in checks:
        if value not in ok:
            raise CorpusError(f"'{path}': RAVDESS {field} {value!r} is not one of {', '.join(ok)}: {_RAVDESS_HELP}")
    if actor == "00":
        raise CorpusError(f"'{path}': RAVDESS actor '00' is not valid: {_RAVDESS_HELP}")
    if emotion not in RAVDESS_EMOTIONS:
        raise _unknown_code(path, "RAVDESS", emotion, RAVDESS_EMOTIONS)
    return RAVDESS_EMOTIONS[emotion], actor


CREMA_EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral",
                  "SAD": "sad"}
# Level is LO/MD/HI/XX; one real file is '1040_ITH_SAD_X' (a single X), so 1-2 letters are accepted.
_CREMA_RE = re.compile(r"(\d{4})_([A-Za-z]{3})_([A-Za-z]{3})_([A-Za-z]{1,2})")


def _parse_crema(path: Path) -> tuple[str, str]:
    m = _CREMA_RE.fullmatch(path.stem)
    if not m:
        raise CorpusError(
            f"'{path}': not a CREMA-D file name: expected AAAA_SSS_EEE_LL such as 1001_DFA_ANG_XX.wav "
            "(4-digit actor, 3-letter sentence, emotion ANG/DIS/FEA/HAP/NEU/SAD, level LO/MD/HI/XX)"
        )
    actor, _sentence, emotion, _level = m.groups()
    if emotion.upper() not in CREMA_EMOTIONS:
        raise _unknown_code(path, "CREMA-D", emotion, CREMA_EMOTIONS)
    return CREMA_EMOTIONS[emotion.upper()], actor


TESS_EMOTIONS = {"angry": "angry", "disgust": "disgust", "fear": "fearful", "happy": "happy",
                 "neutral": "neutral", "ps": "surprised", "sad": "sad"}
# Speaker prefix OAF (older) / YAF (younger); one real TESS file is 'OA_bite_neutral.wav' (no F).
_TESS_RE = re.compile(r"(OAF|YAF|OA)_(.+)_([A-Za-z]+)", re.IGNORECASE)


def _parse_tess(path: Path) -> tuple[str, str]:
    m = _TESS_RE.fullmatch(path.stem)
    if not m:
        raise CorpusError(
            f"'{path}': not a TESS file name: expected SPEAKER_WORD_EMOTION such as OAF_back_angry.wav "
            f"(speaker OAF or YAF; emotion {', '.join(TESS_EMOTIONS)})"
        )
    speaker, _word, emotion = m.groups()
    speaker = speaker.upper()
    if speaker == "OA":
        speaker = "OAF"
    if emotion.lower() not in TESS_EMOTIONS:
        raise _unknown_code(path, "TESS", emotion, TESS_EMOTIONS)
    return TESS_EMOTIONS[emotion.lower()], speaker


EMODB_EMOTIONS = {"W": "angry", "L": "boredom", "E": "disgust", "A": "fearful", "F": "happy", "T": "sad",
                  "N": "neutral"}
_EMODB_RE = re.compile(r"(\d\d)([a-z]\d\d)([A-Z])([a-z])")


def _parse_emodb(path: Path) -> tuple[str, str]:
    m = _EMODB_RE.fullmatch(path.stem)
    if not m:
        raise CorpusError(
            f"'{path}': not an EmoDB file name: expected SSTTTEV such as 03a01Fa.wav (2-digit speaker, "
            "text a01..b10, emotion letter W anger, L boredom, E disgust, A fear, F happiness, T sadness, "
            "N neutral; version letter)"
        )
    speaker, _text, emotion, _version = m.groups()
    if emotion not in EMODB_EMOTIONS:
        raise _unknown_code(path, "EmoDB", emotion, EMODB_EMOTIONS)
    return EMODB_EMOTIONS[emotion], speaker


SAVEE_EMOTIONS = {"a": "angry", "d": "disgust", "f": "fearful", "h": "happy", "n": "neutral", "sa": "sad",
                  "su": "surprised"}
_SAVEE_FLAT_RE = re.compile(r"([A-Za-z]{2})_([a-z]{1,2})(\d\d)")
_SAVEE_DIR_RE = re.compile(r"([a-z]{1,2})(\d\d)")
_SAVEE_SPEAKER_RE = re.compile(r"[A-Za-z]{2}")
_SAVEE_HELP = ("expected DC_a01.wav, or a01.wav inside a speaker folder such as DC/ (speakers DC, JE, JK, KL; "
               "codes a anger, d disgust, f fear, h happiness, n neutral, sa sadness, su surprise)")


def _savee_matches(path: Path) -> bool:
    if _SAVEE_FLAT_RE.fullmatch(path.stem):
        return True
    return bool(_SAVEE_DIR_RE.fullmatch(path.stem) and _SAVEE_SPEAKER_RE.fullmatch(path.parent.name))


def _parse_savee(path: Path) -> tuple[str, str]:
    m = _SAVEE_FLAT_RE.fullmatch(path.stem)
    if m:
        speaker, code, _n = m.groups()
    else:
        m = _SAVEE_DIR_RE.fullmatch(path.stem)
        if not m:
            raise CorpusError(f"'{path}': not a SAVEE file name: {_SAVEE_HELP}")
        if not _SAVEE_SPEAKER_RE.fullmatch(path.parent.name):
            raise CorpusError(
                f"'{path}': SAVEE file without a speaker: its folder '{path.parent.name}' is not a "
                f"2-letter speaker code; {_SAVEE_HELP}"
            )
        code, _n = m.groups()
        speaker = path.parent.name
    if code not in SAVEE_EMOTIONS:
        raise _unknown_code(path, "SAVEE", code, SAVEE_EMOTIONS)
    return SAVEE_EMOTIONS[code], speaker.upper()


class _SaveeCorpus(FileNameCorpus):
    def matches(self, path: Path) -> bool:
        return _savee_matches(path)


NEMO_EMOTIONS = {"anger": "angry", "fear": "fearful", "happiness": "happy", "neutral": "neutral",
                 "sadness": "sad", "surprised": "surprised"}
#: nEMO's label file: one row per clip, header file_id, emotion, raw_text, normalized_text, speaker_id, ...
NEMO_TSV = "data.tsv"
_NEMO_COLUMNS = ("file_id", "emotion", "speaker_id")
_NEMO_RE = re.compile(r"([A-Za-z]{2}\d+)_([A-Za-z]+)_(\d+)")


def _nemo_label(emotion: str, where: Path, line: int | None = None) -> str:
    key = emotion.strip().lower()
    if key not in NEMO_EMOTIONS:
        raise _unknown_code(where, "nEMO", emotion.strip(), NEMO_EMOTIONS, line)
    return NEMO_EMOTIONS[key]


def _parse_nemo(path: Path) -> tuple[str, str]:
    m = _NEMO_RE.fullmatch(path.stem)
    if not m:
        raise CorpusError(
            f"'{path}': not a nEMO file name: expected SPEAKER_EMOTION_N such as EB0_anger_1.opus "
            f"(speaker two letters and a digit; emotion {', '.join(NEMO_EMOTIONS)})"
        )
    speaker, emotion, _n = m.groups()
    return _nemo_label(emotion, path), speaker.upper()


def _has_nemo_tsv(root: Path) -> bool:
    """Whether ``root`` holds a ``data.tsv`` whose header has nEMO's file_id, emotion, speaker_id."""
    try:
        with (root / NEMO_TSV).open(encoding="utf-8-sig") as f:
            header = f.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return set(_NEMO_COLUMNS) <= {c.strip().lower() for c in header.split("\t")}


class _NemoCorpus(FileNameCorpus):
    """nEMO: labels and speakers from ``data.tsv`` when the folder has one, else from the file names."""

    def entries(self, root: Path) -> list[tuple[Path, str, str | None]]:
        tsv = root / NEMO_TSV
        if not tsv.is_file():
            return super().entries(root)
        cols, rows = _read_table(tsv, _NEMO_COLUMNS, "file_id<TAB>emotion<TAB>...<TAB>speaker_id", "\t")
        i_file, i_emotion, i_spk = (cols.index(c) for c in _NEMO_COLUMNS)
        out, seen = [], {}
        for lineno, fields in rows:
            label = _nemo_label(fields[i_emotion], tsv, lineno)
            path = _table_clip(tsv, lineno, fields[i_file], seen)
            out.append((path, label, _ns(self.name, fields[i_spk])))
        if not out:
            raise CorpusError(f"'{tsv}': no rows after the header")
        return out


# --------------------------------------------------------------------------- labels.csv / folders


class CsvCorpus:
    """A ``labels.csv`` with header ``path,label[,speaker][,corpus]``; other columns are ignored.

    Paths are relative to the CSV's folder (absolute paths are accepted too). Without a ``corpus``
    column rows belong to corpus ``csv`` and speakers become ``csv_<speaker>``; the CSV written by
    ``emovox manifest --format csv`` reads back unchanged.
    """

    name = "csv"
    example = f"{LABELS_CSV} with header path,label[,speaker]"

    def matches(self, path: Path) -> bool:  # never detected from audio file names
        return False

    def entries(self, root: Path) -> list[tuple[Path, str, str | None, str]]:
        csv_path = root if root.is_file() else root / LABELS_CSV
        if not csv_path.is_file():
            if not root.exists():
                raise CorpusError(f"'{root}': no such folder or file")
            raise CorpusError(f"'{root}': no {LABELS_CSV} in this folder (expected header path,label[,speaker])")
        cols, rows = _read_table(csv_path, ("path", "label"), "path,label[,speaker]")
        i_path, i_label = cols.index("path"), cols.index("label")
        i_spk = cols.index("speaker") if "speaker" in cols else None
        i_corpus = cols.index("corpus") if "corpus" in cols else None
        out, seen = [], {}
        for lineno, fields in rows:
            try:
                label = canonical(fields[i_label])
            except LabelError as e:
                raise CorpusError(f"'{csv_path}' line {lineno}: {e}") from None
            path = _table_clip(csv_path, lineno, fields[i_path], seen)
            corpus = (fields[i_corpus].strip() if i_corpus is not None else "") or self.name
            speaker = _ns(corpus, fields[i_spk]) if i_spk is not None else None
            out.append((path, label, speaker, corpus))
        if not out:
            raise CorpusError(f"'{csv_path}': no rows after the header")
        return out


class FoldersCorpus:
    """One sub-folder per class (``angry/``, ``Happy/``, ``anger/``...); no speaker information."""

    name = "folders"
    example = "one sub-folder per class: angry/x.wav, happy/y.wav"

    def matches(self, path: Path) -> bool:
        return False

    @staticmethod
    def class_folder(root: Path, path: Path) -> str | None:
        parts = path.relative_to(root).parts
        return parts[0] if len(parts) > 1 else None

    def entries(self, root: Path) -> list[tuple[Path, str, None]]:
        files = _check_folder(root)
        out, labels = [], {}
        for p in files:
            folder = self.class_folder(root, p)
            if folder is None:
                raise CorpusError(
                    f"'{p}': audio file directly in '{root}'; the folders layout needs one sub-folder per class "
                    f"(e.g. {root}/angry/{p.name})"
                )
            if folder not in labels:
                try:
                    labels[folder] = canonical(folder)
                except LabelError as e:
                    raise CorpusError(f"'{root / folder}': class folder name is not an emotion label: {e}") from None
            out.append((p, labels[folder], None))
        return out


CORPORA: dict[str, FileNameCorpus | CsvCorpus | FoldersCorpus] = {
    "ravdess": FileNameCorpus("ravdess", "03-01-05-01-02-01-12.wav", _RAVDESS_RE, _parse_ravdess),
    "crema-d": FileNameCorpus("crema-d", "1001_DFA_ANG_XX.wav", _CREMA_RE, _parse_crema),
    "tess": FileNameCorpus("tess", "OAF_back_angry.wav", _TESS_RE, _parse_tess),
    "emodb": FileNameCorpus("emodb", "03a01Fa.wav", _EMODB_RE, _parse_emodb),
    "savee": _SaveeCorpus("savee", "DC_a01.wav or DC/a01.wav", _SAVEE_FLAT_RE, _parse_savee),
    "nemo": _NemoCorpus("nemo", f"EB0_anger_1.opus, or nEMO's {NEMO_TSV}", _NEMO_RE, _parse_nemo),
    "csv": CsvCorpus(),
    "folders": FoldersCorpus(),
}


def corpus_name(name: str) -> str:
    """Resolve a corpus name or spelling (``'CREMA-D'``, ``'cremad'``, ``'emo-db'``) to a key of CORPORA."""
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    aliases = {re.sub(r"[^a-z0-9]", "", k): k for k in CORPORA}
    aliases.update({"crema": "crema-d", "labelscsv": "csv", "labels": "csv", "folder": "folders",
                    "classfolders": "folders"})
    if key in aliases:
        return aliases[key]
    raise CorpusError(f"unknown corpus {name!r}; accepted: {', '.join(CORPORA)}")


def _layouts() -> str:
    return "; ".join(f"{name} ({c.example})" for name, c in CORPORA.items())


def detect_corpus(root: str | os.PathLike) -> str:
    """Tell which corpus layout ``root`` holds (a key of :data:`CORPORA`), from its files' names.

    A folder holding ``labels.csv`` (or a ``.csv`` file itself) is ``csv``; one holding a ``data.tsv``
    with nEMO's columns is ``nemo``. Otherwise the corpus whose naming at least
    :data:`DETECT_MIN_FRACTION` of the audio files follow wins; failing that, sub-folders named after
    emotions mean ``folders``.
    """
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".csv":
        return "csv"
    if root.is_dir() and (root / LABELS_CSV).is_file():
        return "csv"
    if root.is_dir() and _has_nemo_tsv(root):
        return "nemo"
    files = _check_folder(root)
    counts = {name: sum(c.matches(p) for p in files) for name, c in CORPORA.items()
              if isinstance(c, FileNameCorpus)}
    best = max(counts, key=counts.get)
    if counts[best] >= DETECT_MIN_FRACTION * len(files):
        return best
    folders = {FoldersCorpus.class_folder(root, p) for p in files}
    if None not in folders and all(f.strip().lower() in SYNONYMS for f in folders):
        return "folders"
    matched = ", ".join(f"{n} {c}" for n, c in counts.items() if c)
    raise CorpusError(
        f"'{root}': cannot tell which corpus this is ({len(files)} audio files, e.g. '{files[0].name}'"
        + (f"; file names matching: {matched}" if matched else "")
        + f"); accepted layouts: {_layouts()}. Scan one corpus folder at a time, or pass corpus=... (--corpus)"
    )


def _duration(path: Path) -> float:
    try:
        return audio_info(path).duration_s
    except AudioError as e:
        raise CorpusError(f"{e} (reading durations; pass with_duration=False / --no-duration to skip)") from e


def durations(paths: Iterable[str | os.PathLike], *, max_workers: int | None = None) -> list[float]:
    """Durations in seconds from the files' headers, read in parallel for many files."""
    paths = [Path(p) for p in paths]
    if len(paths) < _PARALLEL_MIN_FILES:
        return [_duration(p) for p in paths]
    workers = max_workers or min(8, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(_duration, paths, chunksize=64))


def scan(root: str | os.PathLike, corpus: str | None = None, *, with_duration: bool = True) -> list[ManifestRow]:
    """Manifest rows for every clip of the corpus in ``root``, sorted by path.

    ``corpus`` is a key of :data:`CORPORA` (detected with :func:`detect_corpus` when None). ``root``
    may also be a ``labels.csv``-style file. Raises :class:`CorpusError` naming the folder or file
    for an empty folder, a folder without audio, a malformed file name, an unknown label code.
    """
    root = Path(root)
    name = corpus_name(corpus) if corpus is not None else detect_corpus(root)
    parser = CORPORA[name]
    if isinstance(parser, CsvCorpus):
        entries = parser.entries(root)
    else:
        if root.is_file():
            raise CorpusError(f"'{root}': the {name} layout needs a folder, not a file")
        entries = [(p, label, spk, name) for p, label, spk in parser.entries(root)]
    entries.sort(key=lambda e: os.path.abspath(e[0]))
    durs = durations(p for p, *_ in entries) if with_duration else [None] * len(entries)
    return [ManifestRow(os.path.abspath(p), label, spk, corp, d) for (p, label, spk, corp), d in zip(entries, durs)]


def summarize(rows: Iterable[ManifestRow]) -> dict:
    """Clips, hours, speakers and clips per label, overall and per corpus.

    ``hours`` is None when no duration is known; ``speakers`` counts distinct speakers and
    ``clips_without_speaker`` the clips that have none.
    """
    rows = list(rows)

    def block(rs: list[ManifestRow]) -> dict:
        durs = [r.duration_s for r in rs if r.duration_s is not None]
        labels = Counter(r.label for r in rs)
        order = [lab for lab in CANONICAL_ORDER if lab in labels] + sorted(set(labels) - set(CANONICAL_ORDER))
        speakers = {r.speaker for r in rs if r.speaker is not None}
        return {
            "clips": len(rs),
            "hours": round(sum(durs) / 3600.0, 4) if durs else None,
            "clips_without_duration": len(rs) - len(durs),
            "speakers": len(speakers),
            "clips_without_speaker": sum(r.speaker is None for r in rs),
            "labels": {lab: labels[lab] for lab in order},
        }

    out = block(rows)
    out["corpora"] = {c: block([r for r in rows if r.corpus == c]) for c in sorted({r.corpus for r in rows})}
    return out
