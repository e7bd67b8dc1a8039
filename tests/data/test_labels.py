"""emovox.data.labels: taxonomies, mappings, probability folding, music moods."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emovox.data.labels import (
    APP6,
    BASIC5,
    CORE4,
    EKMAN7,
    FOLD_FALLBACKS,
    GOEMOTIONS28,
    MUSIC_MOODS,
    RAVDESS8,
    LabelError,
    LabelMap,
    canonical,
    fold_scores,
    music_mood,
    parse_label_spec,
    taxonomy,
)


def test_taxonomies_as_specified():
    assert taxonomy("ravdess8") == ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
    assert taxonomy("ekman7") == ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised")
    assert taxonomy("basic5") == ("happy", "sad", "angry", "surprised", "neutral")
    assert taxonomy("app6") == ("happy", "sad", "angry", "neutral", "fearful", "surprised")
    assert taxonomy("core4") == ("neutral", "happy", "sad", "angry")
    assert set(taxonomy("crema6")) == {"neutral", "happy", "sad", "angry", "fearful", "disgust"}
    assert len(GOEMOTIONS28) == 28 and GOEMOTIONS28[-1] == "neutral"
    with pytest.raises(LabelError, match="unknown label taxonomy 'x'; available: ravdess8, ekman7"):
        taxonomy("x")


def test_canonical_spellings():
    assert [canonical(c) for c in ("ANG", "Anger", "ps", "FEA", "happiness", " Neutral ")] == [
        "angry", "angry", "surprised", "fearful", "happy", "neutral"]
    with pytest.raises(LabelError, match="unknown emotion label 'excited'; accepted: angry, boredom, calm"):
        canonical("excited")


def test_ravdess_to_ekman_maps_calm_to_neutral():
    lm = LabelMap.build(RAVDESS8, "ekman7")
    assert lm("calm") == "neutral" and lm("surprised") == "surprised" and lm.lossless


def test_training_map_drops_inexpressible_labels():
    lm = LabelMap.build(EKMAN7, "core4")
    assert lm.unmapped == ("fearful", "disgust", "surprised")
    with pytest.raises(LabelError, match="fearful, disgust, surprised have no target"):
        lm.fold(np.ones(7) / 7)


def test_user_merges_from_string_dict_and_json(tmp_path):
    lm = LabelMap.build(EKMAN7, "disgust=angry,surprised=happy")
    assert lm("disgust") == "angry" and lm.target == ("neutral", "happy", "sad", "angry", "fearful")
    (tmp_path / "m.json").write_text(json.dumps({"disgust": "angry"}))
    assert LabelMap.build(EKMAN7, str(tmp_path / "m.json"))("disgust") == "angry"
    assert LabelMap.build(EKMAN7, {"ANG": "angry", "disgust": "angry"})("disgust") == "angry"


@pytest.mark.parametrize("target", ["basic5", "app6", "core4", "crema6", "ekman7"])
def test_folding_probabilities_keeps_all_mass(target):
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(8), size=5)
    for source in (RAVDESS8, EKMAN7):
        probs = p[:, : len(source)] / p[:, : len(source)].sum(1, keepdims=True)
        scores = fold_scores(dict(zip(source, probs[0])), target)
        assert list(scores) == list(taxonomy(target))
        assert sum(scores.values()) == pytest.approx(1.0)


def test_fold_sums_the_right_mass():
    probs = dict(zip(EKMAN7, [0.05, 0.1, 0.15, 0.2, 0.25, 0.15, 0.1]))
    b5 = fold_scores(probs, "basic5")
    assert list(b5) == list(BASIC5)
    assert b5["angry"] == pytest.approx(0.2 + 0.15)  # disgust → angry
    assert b5["sad"] == pytest.approx(0.15 + 0.25)  # fearful → sad
    a6 = fold_scores(probs, "app6")
    assert list(a6) == list(APP6) and a6["angry"] == pytest.approx(0.35) and a6["fearful"] == 0.25
    c4 = fold_scores(dict(zip(RAVDESS8, [0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.2, 0.1])), "core4")
    assert list(c4) == list(CORE4) and c4["neutral"] == pytest.approx(0.2)  # calm → neutral
    custom = fold_scores(probs, {"fearful": "surprised", "disgust": "angry"})
    assert custom["surprised"] == pytest.approx(0.35)


def test_music_moods_cover_every_emotion():
    assert (music_mood("neutral"), music_mood("calm"), music_mood("happy")) == ("chill", "relaxing", "upbeat")
    for lab in RAVDESS8:
        assert lab in MUSIC_MOODS


def test_label_list_with_merges_keeps_the_list_order():
    """Seed 003's six classes with disgust merged: the list's order, merges first, calm→neutral as usual."""
    lm = LabelMap.build(RAVDESS8, "happy,sad,angry,neutral,fearful,surprised,disgust=angry")
    assert lm.target == APP6 and lm.lossless
    assert (lm("disgust"), lm("calm"), lm("happy")) == ("angry", "neutral", "happy")
    lm = LabelMap.build(EKMAN7, "app6,fearful=sad")  # a taxonomy with merges: merged labels leave it
    assert lm.target == ("happy", "sad", "angry", "neutral", "surprised") and lm("fearful") == "sad"
    assert parse_label_spec(["Happiness", "ANG", "disgust=anger"]).merges == {"disgust": "angry"}
    assert parse_label_spec({"dis": "ang"}).target is None  # merges alone: the other labels kept


@pytest.mark.parametrize("spec, why", [
    ("happy,sad=", "'sad=' is not a merge 'source=target'"),
    ("disgust==angry", "is not a merge"),
    ("happy;sad", "'happy;sad' is not a label name"),
    ("happy,sad,happy", "lists happy twice"),
    ("happy,sad,disgust=angry", "merge disgust=angry sends to a label the list does not name"),
    ("happy,disgust,disgust=happy", "disgust is both listed and merged"),
    ("klingon", "unknown label taxonomy 'klingon'"),
    ("missing.json", "no such JSON file"),
    (" , ", "it names no label"),
])
def test_malformed_label_specs_name_the_spec_and_show_the_forms(spec, why):
    with pytest.raises(LabelError) as e:
        LabelMap.build(EKMAN7, spec)
    msg = str(e.value)
    assert msg.startswith(f"label spec {spec!r}: ") and why in msg
    assert "Accepted forms:" in msg and "a list with merges 'happy,sad,angry,neutral,fearful,surprised,disgust=angry'" in msg
    assert "a taxonomy name (ravdess8, ekman7, crema6, basic5, app6" in msg


def test_app6_training_and_folding_treat_disgust_alike():
    """Training under app6 keeps disgust clips as angry, as folding probabilities into app6 does."""
    train = LabelMap.build(RAVDESS8, "app6")
    fold = LabelMap.build(RAVDESS8, "app6", fallbacks=FOLD_FALLBACKS)
    assert train.mapping == fold.mapping and train("disgust") == "angry" and train.lossless
    assert LabelMap.build(EKMAN7, "basic5")("disgust") is None  # other taxonomies keep dropping it in training
