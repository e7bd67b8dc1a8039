"""A text model's tokenizer on the ``tokenizers`` library (Rust; no PyTorch, no transformers).

It reads the model's own ``tokenizer.json`` (the file transformers' fast tokenizers are built from) and
reproduces what :func:`emovox.text.encoder.tokenize` does with transformers: special tokens added,
texts longer than ``max_length`` tokens cut to their first ``max_length`` (special tokens included),
full token counts and truncation flags kept, padded length-sorted batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .data import TextError, TextModelError


def as_text(value: object, where: str) -> str:
    """A ``str`` as it is; UTF-8 ``bytes`` decoded; anything else (or invalid UTF-8, or a lone surrogate, which
    is what undecodable bytes become through ``surrogateescape``) a :class:`TextError` saying where."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            bad = bytes(value)[e.start:e.start + 4].hex(" ")
            raise TextError(f"{where}: not valid UTF-8 at byte offset {e.start} (bytes {bad}: {e.reason}); "
                            "give UTF-8 text") from None
    if not isinstance(value, str):
        raise TextError(f"{where}: expected a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise TextError(f"{where}: not valid Unicode: a lone surrogate code point U+{ord(value[e.start]):04X} at "
                        f"character {e.start} (undecodable bytes?); give UTF-8 text") from None
    return value


class TextTokenizer:
    """``tokenizer.json`` → token ids, truncated at ``max_length``; full counts; padded batches."""

    def __init__(self, path: str | Path, max_length: int):
        from tokenizers import Tokenizer

        self.path = Path(path)
        if max_length < 4:
            raise ValueError(f"max_length must be at least 4 tokens, got {max_length}")
        try:
            self._tok = Tokenizer.from_file(str(self.path))  # one copy: reading the file costs ~60 ms
        except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception type (and OSError)
            raise TextModelError(f"{self.path}: cannot read the tokenizer ({str(e).splitlines()[0][:200]})") from e
        self.pad_id = self._pad_id()
        self._tok.no_padding()
        self._tok.no_truncation()  # never changed afterwards: the object is shared by threads
        self.max_length = int(max_length)
        self._room = self.max_length - self._tok.num_special_tokens_to_add(False)
        if self._room < 1:
            raise ValueError(f"max_length {max_length} leaves no room for text beside the special tokens")

    def _pad_id(self) -> int:
        """The padding id the file configures, else that of a usual padding token, else 0 (the attention
        mask hides padded positions, so the id only has to be a valid one)."""
        padding = self._tok.padding
        if padding and padding.get("pad_id") is not None:
            return int(padding["pad_id"])
        for token in ("[PAD]", "<pad>", "<|padding|>"):
            idx = self._tok.token_to_id(token)
            if idx is not None:
                return int(idx)
        return 0

    def tokenize(self, texts: Sequence[object]) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
        """Token ids (truncated at ``max_length``), full token counts and truncation flags.

        Each text is a ``str`` or UTF-8 ``bytes``; invalid UTF-8 and lone surrogates are refused
        (:class:`TextError` naming the text and the offset)."""
        strings = [as_text(t, f"text {i}") for i, t in enumerate(texts)]
        if not strings:
            return [], np.zeros(0, np.int64), np.zeros(0, bool)
        full = self._tok.encode_batch(strings)
        n_tokens = np.array([len(e.ids) for e in full], dtype=np.int64)
        truncated = n_tokens > self.max_length
        ids = [e.ids for e in full]
        for i in np.flatnonzero(truncated):  # cut the text's own tokens, then add the special tokens again
            raw = self._tok.encode(strings[i], add_special_tokens=False)
            raw.truncate(self._room)
            ids[i] = self._tok.post_process(raw).ids
        return ids, n_tokens, truncated

    def batches(self, ids: list[list[int]], batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Length-sorted batches: (original indices, ``input_ids``, ``attention_mask``), int64, right-padded."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = np.argsort([len(x) for x in ids], kind="stable")
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                input_ids[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1
            yield idx, input_ids, mask
