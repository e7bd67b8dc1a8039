"""Property tests of emovox's other input boundaries (hypothesis, bounded and derandomized to stay fast):
corpus scanners on odd folder trees, label specs, YAML/JSON config files, and text inputs.

The contract everywhere: an input is accepted, or refused with the boundary's own error
(:class:`CorpusError`, :class:`LabelError`, :class:`OptionError`, :class:`TextError`) whose message
names the problem; never another exception, never a hang. The long campaign is ``benchmarks/fuzz.py``;
every failure it found is a regression case here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emovox.data.corpora import scan
from emovox.data.labels import TAXONOMIES, LabelMap, parse_label_spec
from emovox.errors import CorpusError, LabelError, OptionError, TextError
from emovox.text.data import check_text, read_lines, read_tsv

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@contextmanager
def within(seconds: int):
    """Fail (instead of hanging the suite) when the block takes longer than ``seconds``."""
    def alarm(*_):
        raise TimeoutError(f"took longer than {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- corpus scanners -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wav_clip(synth_corpus) -> bytes:
    return next(synth_corpus.rglob("*.wav")).read_bytes()


#: Name pieces: emotion words, corpus-like codes, separators, dots, non-ASCII and control characters.
NAME_BITS = ["angry", "happy", "sad", "neutral", "Happy", "anger", "03-01-05-01-02-01-12", "1001_DFA_ANG_XX",
             "OAF_back_angry", "03a01Fa", "DC_a01", "EB0_anger_1", "x", " ", ".", "..", "-", "_", "é", "日本",
             "\t", "\x01", "labels", "data"]
#: Raw bytes that are not UTF-8, for names the file system allows and Python sees as surrogate escapes.
BAD_BYTES = [b"\xff", b"\xfe\xfd", b"\xc3(", b"\xed\xa0\x80", b"\x80"]


def name_bytes() -> st.SearchStrategy[bytes]:
    piece = st.one_of(st.sampled_from(NAME_BITS).map(str.encode), st.sampled_from(BAD_BYTES))
    return st.lists(piece, min_size=1, max_size=4).map(b"".join).filter(
        lambda b: b not in (b".", b"..") and b"/" not in b and b"\0" not in b and len(b) < 200)


@st.composite
def trees(draw):
    """A folder tree: (relative bytes paths of files with their kind, folders, links)."""
    folders = draw(st.lists(st.lists(name_bytes(), min_size=1, max_size=3).map(b"/".join), max_size=5))
    files = draw(st.lists(st.tuples(st.sampled_from([b""] + folders), name_bytes(),
                                    st.sampled_from([b".wav", b".WAV", b".flac", b".txt", b".csv", b""]),
                                    st.sampled_from(["clip", "empty", "junk", "fifo", "dir", "dangling"])),
                          max_size=8))
    links = draw(st.lists(st.tuples(st.sampled_from([b""] + folders), name_bytes(),
                                    st.sampled_from(["root", "parent", "self"])), max_size=2))
    labels_csv = draw(st.one_of(st.none(), st.binary(max_size=200),
                                st.sampled_from([b"path,label\n", b"path,label\nx.wav,angry\n", b"\xff\xfe,\n"])))
    return folders, files, links, labels_csv


def build(root: bytes, tree, clip: bytes) -> None:
    folders, files, links, labels_csv = tree
    for f in folders:
        os.makedirs(os.path.join(root, f), exist_ok=True)
    for folder, stem, ext, kind in files:
        path = os.path.join(root, folder, stem + ext)
        if os.path.lexists(path):
            continue
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "dir":
            os.makedirs(path, exist_ok=True)
        elif kind == "dangling":
            os.symlink(b"/nonexistent/" + stem, path)
        else:
            with open(path, "wb") as fh:
                fh.write({"clip": clip, "empty": b"", "junk": b"RIFF\0\0\0\0WAVEjunk"}[kind])
    for folder, stem, target in links:
        path = os.path.join(root, folder, stem)
        if not os.path.lexists(path):
            os.symlink({"root": root, "parent": os.path.join(root, folder, b".."), "self": path}[target], path)
    if labels_csv is not None:
        with open(os.path.join(root, b"labels.csv"), "wb") as fh:
            fh.write(labels_csv)


@FUZZ
@given(tree=trees(), corpus=st.sampled_from([None, "folders", "csv", "ravdess", "tess"]),
       duration=st.booleans())
def test_corpus_scan_accepts_or_names_the_problem(tmp_path, wav_clip, tree, corpus, duration):
    root = os.path.join(os.fsencode(tmp_path), b"corpus")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    build(root, tree, wav_clip)
    with within(20):
        try:
            rows = scan(os.fsdecode(root), corpus, with_duration=duration)
        except CorpusError as e:
            assert str(e)
            return
    assert rows and all(os.path.isfile(r.path) for r in rows)  # never a FIFO, folder or dangling link
    assert all(r.duration_s is not None and r.duration_s > 0 for r in rows) or not duration
    json.dumps([r.to_dict() for r in rows])  # manifest rows serialise, non-UTF-8 names included


def test_fifo_named_like_audio_does_not_hang_the_scan(tmp_path, wav_clip):
    """Regression: a FIFO named angry/x.wav blocked the duration read forever."""
    (tmp_path / "angry").mkdir()
    (tmp_path / "angry" / "a.wav").write_bytes(wav_clip)
    os.mkfifo(tmp_path / "angry" / "fifo.wav")
    os.symlink("/nonexistent.wav", tmp_path / "angry" / "dangling.wav")
    with within(20):
        rows = scan(tmp_path, "folders")
    assert [Path(r.path).name for r in rows] == ["a.wav"]


def test_symlink_loops_non_utf8_names_and_empty_folders(tmp_path, wav_clip):
    root = os.fsencode(tmp_path)
    os.makedirs(os.path.join(root, b"happy"))
    with open(os.path.join(root, b"happy", b"\xff\xfe.wav"), "wb") as fh:
        fh.write(wav_clip)
    os.symlink(root, os.path.join(root, b"happy", b"loop"))
    os.makedirs(os.path.join(root, b"empty", b"deeper"))
    with within(20):
        rows = scan(tmp_path, "folders")
    assert len(rows) == 1 and os.fsencode(rows[0].path).endswith(b"happy/\xff\xfe.wav") and rows[0].label == "happy"
    with pytest.raises(CorpusError, match="empty folder"):
        scan(tmp_path / "empty" / "deeper")
    with pytest.raises(CorpusError, match="no audio files"):
        scan(tmp_path / "empty")


# -- label specs -----------------------------------------------------------------------------------

SPEC_BITS = ["happy", "sad", "angry", "neutral", "calm", "fearful", "disgust", "surprised", "ekman7", "core4",
             "app6", "basic5", "=", ",", " ", "", "\x00", "é", "a" * 300, "\ud800", "..", "/", ".json", "1"]
SOURCE = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]


def check_spec(spec) -> None:
    try:
        m = LabelMap.build(SOURCE, spec)
    except LabelError as e:
        assert str(e)
        return
    assert set(m.mapping) == set(SOURCE) and all(t is None or t in m.target for t in m.mapping.values())


@FUZZ
@given(st.lists(st.sampled_from(SPEC_BITS), max_size=14).map("".join))
def test_label_spec_strings(spec):
    check_spec(spec)


@FUZZ
@given(st.one_of(st.lists(st.one_of(st.text(max_size=12), st.sampled_from(SPEC_BITS)), max_size=8),
                 st.dictionaries(st.sampled_from(SPEC_BITS), st.sampled_from(SPEC_BITS), max_size=6)))
def test_label_spec_lists_and_mappings(spec):
    check_spec(spec)


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                     st.sampled_from(SPEC_BITS)),
                           lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                   st.dictionaries(st.sampled_from(SPEC_BITS), inner, max_size=5)),
                           max_leaves=20)


@FUZZ
@given(content=st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=300)))
def test_label_spec_json_files(tmp_path, content):
    path = tmp_path / "spec.json"
    path.write_bytes(content)
    check_spec(str(path))


@pytest.mark.parametrize("text", ["[" * 100000, "{\"a\": " * 50000, "[" * 1000 + "]" * 1000])
def test_deep_label_spec_json_is_a_label_error(tmp_path, text):
    """Regression: 100000 nested '[' raised RecursionError."""
    path = tmp_path / "deep.json"
    path.write_text(text)
    with pytest.raises(LabelError, match=r"nested too deeply|unreadable JSON|label name|must hold"):
        parse_label_spec(str(path))


def test_every_taxonomy_is_a_spec():
    for name in TAXONOMIES:
        assert LabelMap.build(SOURCE, name).target == tuple(TAXONOMIES[name])


# -- YAML / JSON config files ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def train_options():
    from emovox.commands import train

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return parser.get_default("_train_options")


KEYS = ["epochs", "lr", "labels", "model", "batch_size", "data_dir", "model_options", "recipe", "config",
        "num_epochs", "train_split", "learning_rate", "unknown_key", "features"]
yaml_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
                                     st.text(max_size=20), st.sampled_from(SPEC_BITS + ["cnn", "crnn", "ssl"])),
                           lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
yaml_snippets = ["&a [x, y]", "*a", "!!python/object:os.system 'echo'", "!!binary AAAA", "{a: 1", "- - -",
                 "? [a, b]\n: 1", "'unterminated", "\t", "%YAML 1.1\n---", "---\n---", "0x10", "1e400", ".nan", "~",
                 "<<: *a"]


@FUZZ
@given(data=st.one_of(
    st.dictionaries(st.sampled_from(KEYS), yaml_values, max_size=5).map(lambda d: json.dumps(d).encode()),
    st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(yaml_snippets)), max_size=4).map(
        lambda kv: "\n".join(f"{k}: {v}" for k, v in kv).encode()),
    st.binary(max_size=300)))
def test_config_files_load_or_raise_option_error(train_options, tmp_path, data):
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    with within(20):
        try:
            values = train_options.read_config(path)
        except OptionError as e:
            assert str(path) in str(e)
            return
    assert set(values) <= set(train_options.table)


def billion_laughs(levels: int, key: str = "labels") -> str:
    items = ["&a0 [" + ",".join(["lol"] * 9) + "]"]
    items += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return f"{key}: [" + ", ".join(items) + "]\n"


@pytest.mark.parametrize("text, said", [
    (billion_laughs(9), "aliases"),  # 440 bytes that expand to 387 M strings
    ("labels: " + "[" * 5000 + "]" * 5000, "nested deeper than"),
    ("labels: " + "[" * 20000 + "]" * 20000, "nested deeper than"),  # 40 KB the YAML scanner took 7 s over
    ("labels: " + "[" * 17 + "]" * 17, "nested deeper than"),
    ("epochs: " + "{a: " * 3000 + "1" + "}" * 3000, "nested deeper than"),
    ("labels: &x happy\nmodel: *x\n", "aliases"),
])
def test_yaml_bombs_and_deep_nesting_are_refused_quickly(train_options, tmp_path, text, said):
    """Regression: an 8-level alias bomb of 353 bytes took 12 s and 0.9 GB (9 levels: out of memory); 5000
    nested lists raised RecursionError; 20000 took the scanner 7 s (found by benchmarks/fuzz.py)."""
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    t = time.perf_counter()
    with pytest.raises(OptionError, match=said) as e:
        train_options.read_config(path)
    assert time.perf_counter() - t < 2 and "line" in str(e.value)


def test_config_without_aliases_still_reads_nested_values(train_options, tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("epochs: 3\nlabels: [happy, sad]\nmodel_options: {hidden: 32, dropout: 0.1}\n")
    values = train_options.read_config(path)
    assert values["epochs"] == 3 and values["labels"] == "happy,sad"
    assert values["model_options"] == ["hidden=32", "dropout=0.1"]


# -- text inputs -----------------------------------------------------------------------------------

@FUZZ
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape")),
                 st.sampled_from(["\ud800", "a\udfffb", "\x00", "\u202e\ufeff", " \t\r\n", "\x07" * 50])))
def test_check_text_accepts_valid_unicode_only(text):
    try:
        out = check_text(text)
    except TextError as e:
        assert "text" in str(e)
        return
    assert out == text and text.strip()
    text.encode("utf-8")  # what the tokenizer gets is valid Unicode


def test_lone_surrogates_are_a_text_error():
    """Regression: {"texts": ["\\udfff x"]} reached the tokenizer and answered 500 (TypeError)."""
    with pytest.raises(TextError, match="lone surrogate code point U\\+DFFF at character 1"):
        check_text("a\udfffb", where="text 0")


@FUZZ
@given(st.binary(max_size=2000))
def test_text_files_read_or_raise_text_error(tmp_path, blob):
    path = tmp_path / "t.tsv"
    path.write_bytes(blob)
    try:
        lines = read_lines(path)
        assert all("\n" not in line for line in lines)
        read_tsv(path, n_labels=28)
    except TextError as e:
        assert str(path) in str(e)


def test_huge_binary_text_file_is_named(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"ok line\n" * 100000 + b"\xff\xfe\x00binary" + b"x" * 1000)
    with pytest.raises(TextError, match=r"not valid UTF-8 at byte offset 800000 \(bytes ff fe 00 62"):
        read_lines(path)
