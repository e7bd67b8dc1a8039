"""Corpus layouts → manifest rows: every naming convention, detection, errors, real data, CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emovox.cli import main
from emovox.data.corpora import (
    CORPORA,
    NEMO_EMOTIONS,
    CorpusError,
    ManifestRow,
    corpus_name,
    detect_corpus,
    durations,
    scan,
    summarize,
)
from emovox.data.splits import resolve_speaker
from emovox.data.splits import test_speaker_split as speaker_split

SR = 16000


def wav(path: Path, seconds: float = 0.1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(SR * seconds)
    subtype = "PCM_16" if path.suffix in (".wav", ".flac") else None
    sf.write(path, (0.1 * np.sin(np.arange(n) * 0.05)).astype(np.float32), SR, subtype=subtype)
    return path


def tree(root: Path, names: list[str]) -> Path:
    for name in names:
        wav(root / name)
    return root


def by_name(rows: list[ManifestRow]) -> dict[str, ManifestRow]:
    return {Path(r.path).name: r for r in rows}


# ------------------------------------------------------------------------------- RAVDESS


def test_ravdess_speech_and_song(tmp_path):
    root = tree(tmp_path, [
        "Actor_01/03-01-01-01-01-01-01.wav",
        "Actor_01/03-01-05-02-01-02-01.wav",
        "Actor_12/03-02-08-01-02-01-12.wav",  # song
        "Actor_12/01-01-02-01-01-01-12.wav",  # modality 01 (audio-video) still names the emotion
        "Actor_24/03-01-07-02-02-02-24.flac",
    ])
    assert detect_corpus(root) == "ravdess"
    rows = scan(root)
    assert [r.path for r in rows] == sorted(r.path for r in rows)
    got = {Path(r.path).name: (r.label, r.speaker, r.corpus) for r in rows}
    assert got == {
        "03-01-01-01-01-01-01.wav": ("neutral", "ravdess_01", "ravdess"),
        "03-01-05-02-01-02-01.wav": ("angry", "ravdess_01", "ravdess"),
        "03-02-08-01-02-01-12.wav": ("surprised", "ravdess_12", "ravdess"),
        "01-01-02-01-01-01-12.wav": ("calm", "ravdess_12", "ravdess"),
        "03-01-07-02-02-02-24.flac": ("disgust", "ravdess_24", "ravdess"),
    }
    assert all(abs(r.duration_s - 0.1) < 1e-6 for r in rows)
    assert all(Path(r.path).is_absolute() for r in rows)


@pytest.mark.parametrize("name, message", [
    ("03-01-05-01-02-01.wav", "not a RAVDESS file name"),
    ("03-01-09-01-02-01-01.wav", "unknown RAVDESS emotion code '09'"),
    ("04-01-05-01-02-01-01.wav", "modality '04'"),
    ("03-03-05-01-02-01-01.wav", "vocal channel '03'"),
])
def test_ravdess_malformed_names_are_rejected(tmp_path, name, message):
    root = tree(tmp_path, [f"Actor_01/03-01-0{e}-01-01-01-01.wav" for e in range(1, 9)])
    wav(root / "Actor_01" / name)
    with pytest.raises(CorpusError) as e:
        scan(root, "ravdess")
    assert message in str(e.value)
    assert name in str(e.value)  # the file is named


# ------------------------------------------------------------------------------- CREMA-D


def test_crema_d(tmp_path):
    root = tree(tmp_path, ["1001_DFA_ANG_XX.wav", "1001_IEO_HAP_HI.wav", "1060_TIE_NEU_XX.wav",
                           "1040_ITH_SAD_X.wav", "1002_DFA_DIS_XX.ogg", "1003_DFA_FEA_LO.wav"])
    assert detect_corpus(root) == "crema-d"
    got = {n: (r.label, r.speaker) for n, r in by_name(scan(root, with_duration=False)).items()}
    assert got == {
        "1001_DFA_ANG_XX.wav": ("angry", "crema-d_1001"),
        "1001_IEO_HAP_HI.wav": ("happy", "crema-d_1001"),
        "1060_TIE_NEU_XX.wav": ("neutral", "crema-d_1060"),
        "1040_ITH_SAD_X.wav": ("sad", "crema-d_1040"),  # the real corpus has this one-letter level
        "1002_DFA_DIS_XX.ogg": ("disgust", "crema-d_1002"),
        "1003_DFA_FEA_LO.wav": ("fearful", "crema-d_1003"),
    }
    assert all(r.duration_s is None for r in scan(root, with_duration=False))


def test_crema_d_unknown_code(tmp_path):
    root = tree(tmp_path, ["1001_DFA_ANG_XX.wav", "1001_DFA_SUR_XX.wav"])
    with pytest.raises(CorpusError, match=r"1001_DFA_SUR_XX\.wav.*unknown CREMA-D emotion code 'SUR'.*ANG angry"):
        scan(root, "crema-d")


# ------------------------------------------------------------------------------- TESS


def test_tess_quirks(tmp_path):
    root = tree(tmp_path / "TESS Toronto emotional speech set data", [
        "OAF_angry/OAF_back_angry.wav",
        "OAF_Fear/OAF_bath_fear.wav",
        "YAF_fear/YAF_bean_fear.wav",
        "OAF_Pleasant_surprise/OAF_base_ps.wav",
        "YAF_pleasant_surprised/YAF_bite_ps.wav",
        "OAF_neutral/OA_bite_neutral.wav",  # the real corpus's one file without the F
        "OAF_neutral/OAF_youth_neutral.wav",
        "YAF_disgust/YAF_chair_disgust.wav",
        "OAF_happy/OAF_when_happy.wav",
        "YAF_sad/YAF_wheat_sad.wav",
    ])
    assert detect_corpus(root) == "tess"
    got = {n: (r.label, r.speaker) for n, r in by_name(scan(root)).items()}
    assert got["OAF_back_angry.wav"] == ("angry", "tess_OAF")
    assert got["OAF_bath_fear.wav"] == ("fearful", "tess_OAF")
    assert got["YAF_bean_fear.wav"] == ("fearful", "tess_YAF")
    assert got["OAF_base_ps.wav"] == ("surprised", "tess_OAF")
    assert got["YAF_bite_ps.wav"] == ("surprised", "tess_YAF")
    assert got["OA_bite_neutral.wav"] == ("neutral", "tess_OAF")
    assert got["YAF_chair_disgust.wav"] == ("disgust", "tess_YAF")
    assert {r.speaker for r in scan(root)} == {"tess_OAF", "tess_YAF"}


def test_tess_unknown_suffix(tmp_path):
    root = tree(tmp_path, ["OAF_angry/OAF_back_angry.wav", "OAF_calm/OAF_back_calm.wav"])
    with pytest.raises(CorpusError, match=r"OAF_back_calm\.wav.*unknown TESS emotion code 'calm'.*ps surprised"):
        scan(root)


# ------------------------------------------------------------------------------- EmoDB


def test_emodb(tmp_path):
    root = tree(tmp_path / "wav", ["03a01Fa.wav", "03a01Wa.wav", "08b02Lb.wav", "10a04Eb.wav", "11b09Ac.wav",
                                   "15a05Td.wav", "16b10Na.wav"])
    assert detect_corpus(root) == "emodb"
    got = {n: (r.label, r.speaker) for n, r in by_name(scan(root)).items()}
    assert got == {
        "03a01Fa.wav": ("happy", "emodb_03"), "03a01Wa.wav": ("angry", "emodb_03"),
        "08b02Lb.wav": ("boredom", "emodb_08"), "10a04Eb.wav": ("disgust", "emodb_10"),
        "11b09Ac.wav": ("fearful", "emodb_11"), "15a05Td.wav": ("sad", "emodb_15"),
        "16b10Na.wav": ("neutral", "emodb_16"),
    }


def test_emodb_unknown_letter(tmp_path):
    root = tree(tmp_path, ["03a01Fa.wav", "03a01Xa.wav"])
    with pytest.raises(CorpusError, match=r"03a01Xa\.wav.*unknown EmoDB emotion code 'X'.*W angry"):
        scan(root, "emodb")


# ------------------------------------------------------------------------------- SAVEE

SAVEE_EXPECTED = {"a01": "angry", "d02": "disgust", "f03": "fearful", "h04": "happy", "n05": "neutral",
                  "sa06": "sad", "su07": "surprised"}


def test_savee_flat(tmp_path):
    root = tree(tmp_path / "ALL", [f"{spk}_{code}.wav" for spk in ("DC", "JE", "JK", "KL") for code in SAVEE_EXPECTED])
    assert detect_corpus(root) == "savee"
    rows = scan(root)
    assert len(rows) == 28
    assert {r.speaker for r in rows} == {"savee_DC", "savee_JE", "savee_JK", "savee_KL"}
    for name, r in by_name(rows).items():
        assert r.label == SAVEE_EXPECTED[name[3:-4]], name


def test_savee_speaker_folders(tmp_path):
    root = tree(tmp_path / "AudioData", [f"{spk}/{code}.wav" for spk in ("DC", "KL") for code in SAVEE_EXPECTED])
    assert detect_corpus(root) == "savee"
    rows = scan(root)
    assert len(rows) == 14
    for r in rows:
        assert r.speaker == f"savee_{Path(r.path).parent.name}"
        assert r.label == SAVEE_EXPECTED[Path(r.path).stem]
    # 'sa' and 'su' are not read as 's' + digits or as 'a' anger
    assert {r.label for r in rows if Path(r.path).stem.startswith("s")} == {"sad", "surprised"}


def test_savee_unknown_code(tmp_path):
    root = tree(tmp_path, ["DC_a01.wav", "DC_sx02.wav"])
    with pytest.raises(CorpusError, match=r"DC_sx02\.wav.*unknown SAVEE emotion code 'sx'.*sa sad"):
        scan(root, "savee")


# ------------------------------------------------------------------------------- nEMO

NEMO_HEADER = "file_id\temotion\traw_text\tnormalized_text\tspeaker_id\tgender\tage\n"
NEMO_SPEAKERS = {"EB0": "female", "WR0": "male"}


def nemo_name(speaker: str, emotion: str, n: int) -> str:
    return f"{speaker}_{emotion}_{n}{'.flac' if speaker == 'WR0' else '.wav'}"


def nemo_tree(root: Path, with_tsv: bool = True) -> Path:
    """Two speakers x nEMO's six emotions (WAV and FLAC), with a data.tsv whose speaker ids have leading spaces."""
    rows = []
    for spk, gender in NEMO_SPEAKERS.items():
        for n, emotion in enumerate(NEMO_EMOTIONS, start=1):
            name = nemo_name(spk, emotion, n)
            wav(root / name)
            rows.append(f"{name}\t{emotion}\tZdanie {n}.\tzdanie {n}\t        {spk}\t{gender}\t2{n}\n")
    if with_tsv:
        (root / "data.tsv").write_text(NEMO_HEADER + "".join(reversed(rows)), encoding="utf-8")
    return root


def test_nemo_data_tsv(tmp_path, capsys):
    root = nemo_tree(tmp_path / "nemo")
    wav(root / "extra" / "unlisted.wav")  # not in data.tsv: not a clip of the corpus
    assert detect_corpus(root) == "nemo"
    rows = scan(root)
    assert [r.path for r in rows] == sorted(r.path for r in rows)
    got = {n: (r.label, r.speaker, r.corpus) for n, r in by_name(rows).items()}
    assert got == {nemo_name(spk, emo, n): (NEMO_EMOTIONS[emo], f"nemo_{spk}", "nemo")
                   for spk in NEMO_SPEAKERS for n, emo in enumerate(NEMO_EMOTIONS, start=1)}
    assert {r.label for r in rows} == {"angry", "fearful", "happy", "neutral", "sad", "surprised"}
    assert all(abs(r.duration_s - 0.1) < 1e-6 for r in rows)
    assert main(["datasets", str(root), "--format", "json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["corpora"]["nemo"]["clips"] == 12 and s["speakers"] == 2 and s["clips_without_speaker"] == 0


def test_nemo_file_names_without_tsv(tmp_path):
    with_tsv = scan(nemo_tree(tmp_path / "a"), with_duration=False)
    root = nemo_tree(tmp_path / "b", with_tsv=False)
    assert detect_corpus(root) == "nemo"
    rows = scan(root, with_duration=False)
    assert [(Path(r.path).name, r.label, r.speaker) for r in rows] == \
        [(Path(r.path).name, r.label, r.speaker) for r in with_tsv]
    assert by_name(scan(tree(tmp_path / "c", ["wr0_Happiness_7.wav"]), "nemo"))["wr0_Happiness_7.wav"].speaker \
        == "nemo_WR0"  # same speaker id whatever the case of the file name


def test_nemo_speaker_independent_split(tmp_path):
    rows = scan(nemo_tree(tmp_path), with_duration=False)
    assert resolve_speaker("EB0", {r.speaker for r in rows}) == "nemo_EB0"
    split = speaker_split(rows, "EB0")
    assert {rows[i].speaker for i in split.test} == {"nemo_EB0"}
    assert {rows[i].speaker for i in split.train} == {"nemo_WR0"}


@pytest.mark.parametrize("name, message", [
    ("EB0_disgust_13.wav", r"EB0_disgust_13\.wav': unknown nEMO emotion code 'disgust'; accepted: anger angry"),
    ("EB0_anger.wav", r"EB0_anger\.wav': not a nEMO file name: expected SPEAKER_EMOTION_N"),
])
def test_nemo_bad_file_names(tmp_path, name, message):
    root = nemo_tree(tmp_path, with_tsv=False)
    wav(root / name)
    with pytest.raises(CorpusError, match=message):
        scan(root, "nemo")


@pytest.mark.parametrize("row, message", [
    ("EB0_disgust_1.wav\tdisgust\tx\tx\t  EB0\tfemale\t27\n",
     r"data\.tsv' line 14: unknown nEMO emotion code 'disgust'; accepted: anger angry, fear fearful"),
    ("EB0_anger_99.wav\tanger\tx\tx\t  EB0\tfemale\t27\n", r"data\.tsv' line 14: audio file 'EB0_anger_99.wav' not found"),
    ("EB0_anger_1.wav\tanger\tx\tx\t  EB0\tfemale\t27\n", r"line 14: 'EB0_anger_1.wav' is listed twice \(first on line"),
    ("EB0_anger_1.wav\tanger\n", r"data\.tsv' line 14: 2 field\(s\), the header has 7"),
])
def test_nemo_bad_data_tsv_rows(tmp_path, row, message):
    root = nemo_tree(tmp_path)
    with (root / "data.tsv").open("a", encoding="utf-8") as f:
        f.write(row)
    with pytest.raises(CorpusError, match=message):
        scan(root)


def test_nemo_detection_is_not_confused(tmp_path):
    others = ["03-01-05-01-02-01-12.wav", "1001_DFA_ANG_XX.wav", "1040_ITH_SAD_X.wav", "OAF_back_angry.wav",
              "YAF_dog_ps.wav", "OA_bite_neutral.wav", "03a01Fa.wav", "DC_a01.wav", "DC_sa01.wav"]
    assert not any(CORPORA["nemo"].matches(Path(n)) for n in others)
    for name in ["EB0_anger_1.opus", "WR0_surprised_64.opus", "MP0_fear_256.wav", "EB0_disgust_2.wav"]:
        assert [k for k, c in CORPORA.items() if c.matches(Path(name))] == ["nemo"], name
    # a data.tsv with other columns (e.g. Common Voice's) says nothing: the file names decide
    root = tree(tmp_path / "r", ["Actor_01/03-01-05-01-02-01-01.wav", "Actor_01/03-01-03-01-02-01-01.wav"])
    (root / "data.tsv").write_text("client_id\tpath\tsentence\n1\tx.mp3\thello\n")
    assert detect_corpus(root) == "ravdess"
    with pytest.raises(CorpusError, match=r"data\.tsv' line 1: missing column\(s\) file_id, emotion, speaker_id"):
        scan(root, "nemo")  # forced: its data.tsv is read, and it is not nEMO's


# ------------------------------------------------------------------------------- labels.csv


def test_labels_csv_with_and_without_speaker(tmp_path):
    tree(tmp_path / "a", ["clips/x.wav", "clips/y.flac", "z.wav"])
    (tmp_path / "a" / "labels.csv").write_text("path,label,speaker\nclips/x.wav,Anger,alice\nclips/y.flac,HAP,bob\n"
                                               "z.wav,pleasant surprise,\n")
    assert detect_corpus(tmp_path / "a") == "csv"
    got = {n: (r.label, r.speaker, r.corpus) for n, r in by_name(scan(tmp_path / "a")).items()}
    assert got == {"x.wav": ("angry", "csv_alice", "csv"), "y.flac": ("happy", "csv_bob", "csv"),
                   "z.wav": ("surprised", None, "csv")}

    tree(tmp_path / "b", ["one.wav", "two.wav"])
    (tmp_path / "b" / "labels.csv").write_text("\ufeffpath,label\r\none.wav,sad\r\n\r\ntwo.wav,neutral\r\n")  # BOM, CRLF
    rows = scan(tmp_path / "b")
    assert [(r.label, r.speaker) for r in rows] == [("sad", None), ("neutral", None)]
    assert scan(tmp_path / "b" / "labels.csv") == rows  # the CSV file itself may be given


@pytest.mark.parametrize("content, message", [
    ("path,label\nx.wav,angry\ny.wav,grumpy\n", r"labels\.csv' line 3: unknown emotion label 'grumpy'; accepted:"),
    ("path,label\nx.wav,angry\nmissing.wav,sad\n", r"labels\.csv' line 3: audio file 'missing.wav' not found"),
    ("file,label\nx.wav,angry\n", r"labels\.csv' line 1: missing column\(s\) path.*expected path,label\[,speaker\]"),
    ("path,emotion\nx.wav,angry\n", r"missing column\(s\) label"),
    ("path,label\nx.wav,angry\nx.wav,sad\n", r"line 3: 'x.wav' is listed twice \(first on line 2\)"),
    ("path,label,speaker\nx.wav,angry\n", r"line 2: 2 field\(s\), the header has 3"),
    ("path,label\n", r"no rows after the header"),
    ("", r"empty label file"),
])
def test_bad_labels_csv(tmp_path, content, message):
    wav(tmp_path / "x.wav")
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(CorpusError, match=message):
        scan(tmp_path)


def test_manifest_csv_reads_back(tmp_path, capsys):
    root = tree(tmp_path / "crema", ["1001_DFA_ANG_XX.wav", "1002_DFA_HAP_XX.wav"])
    assert main(["manifest", str(root), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "path,label,speaker,corpus,duration_s"
    (tmp_path / "m.csv").write_text(out)
    assert scan(tmp_path / "m.csv") == scan(root)  # corpus column kept, speakers not re-namespaced


# ------------------------------------------------------------------------------- class folders


def test_class_folders(tmp_path):
    root = tree(tmp_path, ["angry/a.wav", "Happy/b.wav", "anger/c.wav", "sad/deeper/d.wav"])
    assert detect_corpus(root) == "folders"
    got = {n: (r.label, r.speaker, r.corpus) for n, r in by_name(scan(root)).items()}
    assert got == {"a.wav": ("angry", None, "folders"), "b.wav": ("happy", None, "folders"),
                   "c.wav": ("angry", None, "folders"), "d.wav": ("sad", None, "folders")}


def test_class_folders_errors(tmp_path):
    root = tree(tmp_path / "r", ["angry/a.wav", "grumpy/b.wav"])
    with pytest.raises(CorpusError, match=r"grumpy': class folder name is not an emotion label.*accepted:"):
        scan(root, "folders")
    with pytest.raises(CorpusError, match=r"cannot tell which corpus.*accepted layouts: ravdess"):
        scan(root)
    root2 = tree(tmp_path / "r2", ["angry/a.wav", "loose.wav"])
    with pytest.raises(CorpusError, match=r"loose\.wav': audio file directly in"):
        scan(root2, "folders")


# ------------------------------------------------------------------------------- folder errors


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=r"empty'?: empty folder"):
        scan(tmp_path / "empty")
    (tmp_path / "noaudio").mkdir()
    (tmp_path / "noaudio" / "notes.txt").write_text("hi")
    wav(tmp_path / "noaudio" / ".hidden.wav")  # hidden files (macOS ._ forks) are not clips
    with pytest.raises(CorpusError, match=r"noaudio': no audio files found \(looked recursively for .wav"):
        scan(tmp_path / "noaudio")
    with pytest.raises(CorpusError, match=r"nowhere': no such folder"):
        scan(tmp_path / "nowhere", "ravdess")
    with pytest.raises(CorpusError, match=r"unknown corpus 'iemocap'; accepted: ravdess, crema-d, tess"):
        scan(tmp_path, "iemocap")


def test_corpus_name_spellings():
    assert corpus_name("CREMA-D") == corpus_name("cremad") == corpus_name("crema_d") == "crema-d"
    assert corpus_name("EmoDB") == corpus_name("emo-db") == "emodb"
    assert corpus_name("nEMO") == "nemo"
    assert set(CORPORA) == {"ravdess", "crema-d", "tess", "emodb", "savee", "nemo", "csv", "folders"}


def test_unreadable_audio_names_the_file(tmp_path):
    root = tree(tmp_path, ["1001_DFA_ANG_XX.wav"])
    (root / "1002_DFA_ANG_XX.wav").write_bytes(b"not audio at all")
    with pytest.raises(CorpusError, match=r"1002_DFA_ANG_XX\.wav.*--no-duration"):
        scan(root)
    assert len(scan(root, with_duration=False)) == 2


def test_summarize_and_row_dict(tmp_path):
    rows = scan(tree(tmp_path, ["1001_DFA_ANG_XX.wav", "1001_DFA_HAP_XX.wav", "1002_DFA_ANG_XX.wav"]))
    s = summarize(rows)
    assert s["clips"] == 3 and s["speakers"] == 2 and s["clips_without_speaker"] == 0
    assert s["labels"] == {"happy": 1, "angry": 2}  # canonical order, not alphabetical
    assert s["hours"] == pytest.approx(0.3 / 3600, abs=1e-4)
    assert s["corpora"]["crema-d"]["clips"] == 3
    d = rows[0].to_dict()
    assert set(d) == {"path", "label", "speaker", "corpus", "duration_s"}
    assert ManifestRow.from_dict(json.loads(json.dumps(d))) == rows[0]
    assert summarize([])["clips"] == 0


# ------------------------------------------------------------------------------- CLI


def test_cli_manifest_and_datasets(tmp_path, capsys):
    root = tree(tmp_path, ["Actor_01/03-01-03-01-01-01-01.wav", "Actor_02/03-01-04-01-01-01-02.wav"])
    assert main(["manifest", str(root)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(d["label"], d["speaker"]) for d in lines] == [("happy", "ravdess_01"), ("sad", "ravdess_02")]
    assert lines[0]["duration_s"] == pytest.approx(0.1)

    assert main(["manifest", str(root), "--no-duration"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["duration_s"] is None

    assert main(["datasets", str(root), "--format", "json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["clips"] == 2 and s["speakers"] == 2 and s["labels"] == {"happy": 1, "sad": 1}

    assert main(["datasets", str(root)]) == 0
    out = capsys.readouterr().out
    assert "clips     2" in out and "speakers  2" in out and "happy" in out


def test_cli_datasets_without_speakers_says_so(tmp_path, capsys):
    root = tree(tmp_path, ["angry/a.wav", "sad/b.wav"])
    assert main(["datasets", str(root)]) == 0
    assert "speakers  unknown (no speaker information" in capsys.readouterr().out


def test_cli_error_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["manifest", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emovox manifest: error: ") and "empty folder" in err and "\n" not in err


# ------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_ravdess(shared_data):
    t0 = time.perf_counter()
    rows = scan(shared_data / "ravdess")
    elapsed = time.perf_counter() - t0
    s = summarize(rows)
    assert s["clips"] == 1200 and s["speakers"] == 20 and len(s["labels"]) == 8
    assert s["labels"]["neutral"] == 80 and s["labels"]["calm"] == 160
    assert all(r.corpus == "ravdess" for r in rows)
    assert {r.speaker for r in rows} == {f"ravdess_{i:02d}" for i in range(1, 21)}
    assert all(r.duration_s is not None and 2.5 < r.duration_s < 6.0 for r in rows)
    assert 1.1 < s["hours"] < 1.4
    assert elapsed < 15, f"scanning 1200 FLAC headers took {elapsed:.1f} s"


@pytest.mark.realdata
def test_real_crema_d(shared_data):
    root = shared_data / "crema-d"
    assert detect_corpus(root) == "crema-d"
    rows = scan(root, with_duration=False)
    s = summarize(rows)
    assert s["clips"] == 4901 and s["speakers"] == 60 and len(s["labels"]) == 6
    assert set(s["labels"]) == {"neutral", "happy", "sad", "angry", "fearful", "disgust"}
    assert {r.speaker for r in rows} == {f"crema-d_{i}" for i in range(1001, 1061)}
    # durations from the Opus headers, on a few files
    durs = durations([rows[i].path for i in (0, 1000, 4900)])
    assert all(1.0 < d < 6.0 for d in durs)


@pytest.mark.realdata
def test_real_nemo(shared_data):
    root = shared_data / "nemo"
    if not (root / "data.tsv").is_file():
        pytest.skip(f"real nEMO not available: {root / 'data.tsv'} is absent")
    assert detect_corpus(root) == "nemo"
    rows = scan(root, with_duration=False)
    s = summarize(rows)
    assert s["clips"] == 4481 and s["speakers"] == 9 and s["clips_without_speaker"] == 0
    assert s["labels"] == {"neutral": 809, "happy": 749, "sad": 769, "angry": 749, "fearful": 736, "surprised": 669}
    assert "disgust" not in s["labels"] and all(r.corpus == "nemo" for r in rows)
    assert {r.speaker for r in rows} == {f"nemo_{spk}" for spk in ("EB0", "IC0", "KD0", "KS0", "MK0", "MP0", "SM0",
                                                                     "TP0", "WR0")}
    # the file names say what data.tsv says
    parse = CORPORA["nemo"].parse_file
    assert all(parse(Path(r.path)) == (r.label, r.speaker.removeprefix("nemo_")) for r in rows)
    durs = durations([rows[i].path for i in (0, 2000, 4480)])  # from the Opus headers
    assert all(0.5 < d < 15.0 for d in durs)


@pytest.mark.realdata
def test_real_data_cli(shared_data, capsys):
    assert main(["datasets", str(shared_data / "ravdess"), "--format", "json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["clips"] == 1200 and s["speakers"] == 20
    assert main(["manifest", str(shared_data / "crema-d"), "--no-duration"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4901
    first = json.loads(lines[0])
    assert first["label"] == "angry" and first["speaker"] == "crema-d_1001" and first["path"].endswith(".opus")
