"""Speaker-independent splits: disjoint speakers, fold coverage, balance, stratified fallback."""

from __future__ import annotations

from collections import Counter

import pytest

from emovox.data.corpora import ManifestRow
from emovox.data.splits import (
    Split,
    resolve_speaker,
    speaker_folds,
    stratified_split,
    test_speaker_split,
    train_val_split,
)

LABELS = ("neutral", "happy", "sad", "angry")


def rows_for(speakers: dict[str, int], corpus: str = "ravdess", labels=LABELS) -> list[ManifestRow]:
    """``{speaker: clips}`` → rows cycling through ``labels``; speaker None means unknown."""
    out = []
    for spk, n in speakers.items():
        for i in range(n):
            out.append(ManifestRow(f"/x/{spk}_{i}.wav", labels[i % len(labels)], spk, corpus, 1.0))
    return out


def ravdess_like(n_actors: int = 20, clips: int = 12) -> list[ManifestRow]:
    return rows_for({f"ravdess_{a:02d}": clips for a in range(1, n_actors + 1)})


def speakers_of(rows, idx) -> set:
    return {rows[i].speaker for i in idx}


def assert_partition(rows, split: Split) -> None:
    assert sorted(split.train + split.test) == list(range(len(rows)))
    assert not set(split.train) & set(split.test)


def test_speaker_folds_disjoint_and_cover_every_speaker():
    rows = ravdess_like() + rows_for({f"crema-d_{a}": 20 for a in range(1001, 1006)}, "crema-d")
    folds = speaker_folds(rows, 5, seed=3)
    assert len(folds) == 5
    seen = Counter()
    for split in folds:
        assert split.kind == "speaker" and split.speaker_independent
        assert_partition(rows, split)
        assert not speakers_of(rows, split.train) & speakers_of(rows, split.test)
        assert set(split.test_speakers) == speakers_of(rows, split.test)
        seen.update(split.test_speakers)
        train, test = split  # unpacks like a (train, test) tuple
        assert train == split.train and test == split.test
    assert set(seen) == {r.speaker for r in rows} and set(seen.values()) == {1}  # each speaker once
    sizes = [len(s.test) for s in folds]
    assert max(sizes) - min(sizes) <= 20  # balanced by clip count (largest speaker has 20 clips)


def test_speaker_folds_balance_uneven_speakers():
    rows = rows_for({"a_1": 100, "a_2": 60, "a_3": 40, "a_4": 30, "a_5": 30, "a_6": 20, "a_7": 10, "a_8": 10})
    sizes = sorted(len(s.test) for s in speaker_folds(rows, 3))
    assert sizes[-1] - sizes[0] <= 20, sizes


def test_speaker_folds_deterministic_and_seeded():
    rows = ravdess_like()
    a = [s.test_speakers for s in speaker_folds(rows, 4, seed=0)]
    assert a == [s.test_speakers for s in speaker_folds(rows, 4, seed=0)]
    assert a != [s.test_speakers for s in speaker_folds(rows, 4, seed=1)]


def test_speaker_folds_errors():
    with pytest.raises(ValueError, match="k must be at least 2"):
        speaker_folds(ravdess_like(), 1)
    with pytest.raises(ValueError, match=r"cannot make 5 speaker folds from 3 speaker\(s\)"):
        speaker_folds(ravdess_like(3), 5)


def test_speaker_folds_without_speakers_are_stratified():
    rows = rows_for({None: 40})
    folds = speaker_folds(rows, 4)
    for split in folds:
        assert split.kind == "stratified" and not split.speaker_independent
        assert "no speaker information" in split.message and "not speaker-independent" in split.message
        assert_partition(rows, split)
        assert len(split.test) == 10 and set(Counter(rows[i].label for i in split.test)) == set(LABELS)
    assert sorted(i for s in folds for i in s.test) == list(range(40))


def test_mixed_known_and_unknown_speakers():
    rows = ravdess_like(4, 8) + rows_for({None: 6})
    for split in speaker_folds(rows, 3):
        known_test = speakers_of(rows, split.test) - {None}
        assert not known_test & (speakers_of(rows, split.train) - {None})
        assert "6 clip(s) without speaker information" in split.message


@pytest.mark.parametrize("name", ["ravdess_03", "3", "03", 3, "Actor_03", "actor_3"])
def test_test_speaker_split_resolves_names(name):
    rows = ravdess_like()
    split = test_speaker_split(rows, [name, "ravdess_07"])
    assert split.kind == "speaker"
    assert split.test_speakers == ("ravdess_03", "ravdess_07")
    assert speakers_of(rows, split.test) == {"ravdess_03", "ravdess_07"}
    assert not speakers_of(rows, split.train) & speakers_of(rows, split.test)
    assert_partition(rows, split)
    assert "ravdess_03, ravdess_07" in split.message


def test_test_speaker_split_comma_string_and_other_corpora():
    rows = ravdess_like(4) + rows_for({"crema-d_1001": 5, "crema-d_1002": 5}, "crema-d") + rows_for(
        {"tess_OAF": 5, "tess_YAF": 5}, "tess")
    split = test_speaker_split(rows, "1001, oaf")
    assert split.test_speakers == ("crema-d_1001", "tess_OAF")


def test_test_speaker_split_errors():
    rows = ravdess_like(5)
    with pytest.raises(ValueError, match=r"unknown speaker 'Actor_40'; known speakers: ravdess_01, ravdess_02"):
        test_speaker_split(rows, ["Actor_40"])
    with pytest.raises(ValueError, match="nothing left to train on"):
        test_speaker_split(rows, [1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="no speaker information"):
        test_speaker_split(rows_for({None: 10}), ["1"])
    both = ravdess_like(2) + rows_for({"emodb_01": 4}, "emodb")
    with pytest.raises(ValueError, match=r"speaker '1' is ambiguous: emodb_01, ravdess_01"):
        resolve_speaker("1", {r.speaker for r in both})


def test_stratified_split_message_and_labels():
    rows = rows_for({None: 100})
    split = stratified_split(rows, 0.2, seed=1)
    assert split.kind == "stratified"
    assert split.message.startswith("no speaker information: stratified random split (not speaker-independent)")
    assert_partition(rows, split)
    assert len(split.test) == 20
    assert Counter(rows[i].label for i in split.test) == {lab: 5 for lab in LABELS}
    assert stratified_split(rows, 0.2, seed=1).test == split.test
    with pytest.raises(ValueError, match="between 0 and 1"):
        stratified_split(rows, 1.5)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.3])
def test_train_val_split_holds_out_whole_speakers(fraction):
    rows = ravdess_like(20, 12)
    split = train_val_split(rows, fraction, seed=0)
    assert split.kind == "speaker"
    assert_partition(rows, split)
    assert not speakers_of(rows, split.train) & speakers_of(rows, split.val)
    assert abs(len(split.val) / len(rows) - fraction) <= 0.05 + 1e-9
    assert {rows[i].label for i in split.val} == set(LABELS)
    assert "speaker-independent split" in split.message


def test_train_val_split_prefers_label_coverage():
    # speakers a_1..a_4 only have 'neutral'/'happy'; b_1, b_2 have all four labels
    rows = (rows_for({f"a_{i}": 10 for i in range(1, 5)}, labels=("neutral", "happy"))
            + rows_for({"b_1": 12, "b_2": 12}))
    split = train_val_split(rows, 0.2, seed=0)
    assert {rows[i].label for i in split.val} == set(LABELS)
    assert {rows[i].label for i in split.train} == set(LABELS)


def test_train_val_split_falls_back_to_stratified():
    split = train_val_split(rows_for({None: 40}), 0.25)
    assert split.kind == "stratified"
    assert "no speaker information: stratified random split (not speaker-independent)" in split.message
    one = train_val_split(rows_for({"ravdess_01": 40}), 0.25)
    assert one.kind == "stratified" and "only one speaker (ravdess_01)" in one.message


def test_splits_accept_dict_rows():
    rows = [r.to_dict() for r in ravdess_like(6)]
    split = train_val_split(rows, 0.3)
    assert split.kind == "speaker"
    assert not {rows[i]["speaker"] for i in split.train} & {rows[i]["speaker"] for i in split.val}


def test_synthetic_corpus_splits(synth_corpus):
    from emovox.data.corpora import scan

    rows = scan(synth_corpus, with_duration=False)
    folds = speaker_folds(rows, 4)
    assert [len(s.test_speakers) for s in folds] == [1, 1, 1, 1]
    assert all(not speakers_of(rows, s.train) & speakers_of(rows, s.test) for s in folds)
