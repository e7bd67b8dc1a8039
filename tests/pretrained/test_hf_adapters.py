"""Seed 004's adapters: Hugging Face checkpoint folders served as emovox models.

- ``AUDIO_MODEL_DIR`` / ``load_model``: a ``save_pretrained`` audio classifier (wav2vec2, HuBERT, WavLM, Whisper)
  with its feature extractor config and ``id2label`` (or ``labels.json``);
- ``TEXT_MODEL_DIR`` / ``load_text_model``: a ``save_pretrained`` sequence classifier (BERT) with
  seed 004's ``labels.json`` and ``inference_config.json`` in its various spellings.

Every checkpoint is a tiny random one built here (no download); reference answers are computed
straight with transformers, independently of the adapters.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from emovox.cli import main  # noqa: E402
from emovox.data.labels import GOEMOTIONS28, RAVDESS8  # noqa: E402
from emovox.inference import load_model  # noqa: E402
from emovox.modelio import ModelLoadError  # noqa: E402
from emovox.server import Settings, create_app  # noqa: E402
from emovox.text import TextModelError, load_text_model  # noqa: E402

SR = 16000
#: IEMOCAP-style names as the superb emotion checkpoints spell them
IEMOCAP4 = ["neu", "hap", "ang", "sad"]


def _clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = np.sin(2 * np.pi * (150 + 50 * seed) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    return (0.3 * x + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def _wav(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def _sharpen(model, seed: int) -> None:
    """Random classifier weights large enough that the labels' probabilities differ clearly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.classifier.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 3.0)


# -- checkpoints ------------------------------------------------------------------------------------

def _ssl_classifier(kind: str, path, labels: list[str]):
    """A tiny wav2vec2 / HuBERT / WavLM sequence classifier with its feature extractor, saved."""
    from transformers import AutoConfig, AutoModelForAudioClassification, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    extra = {"num_buckets": 8, "max_bucket_distance": 16} if kind == "wavlm" else {}
    cfg = AutoConfig.for_model(kind, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                               conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=8,
                               num_conv_pos_embedding_groups=2, classifier_proj_size=8, num_labels=len(labels),
                               id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)},
                               **extra)
    model = AutoModelForAudioClassification.from_config(cfg)
    _sharpen(model, 1)
    model.save_pretrained(path)
    Wav2Vec2FeatureExtractor(sampling_rate=SR, return_attention_mask=True).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def wav2vec2_dir(tmp_path_factory):
    return _ssl_classifier("wav2vec2", tmp_path_factory.mktemp("hf") / "wav2vec2-er", IEMOCAP4)


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    """Whisper with placeholder id2label names: labels.json beside it names the outputs."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    path = tmp_path_factory.mktemp("hf") / "whisper-er"
    torch.manual_seed(0)
    cfg = WhisperConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80,
                        vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
                        classifier_proj_size=8, num_labels=3)
    model = WhisperForAudioClassification(cfg)
    _sharpen(model, 2)
    model.save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(path)
    (path / "labels.json").write_text(json.dumps(["angry", "calm", "happy"]))
    return path


def _reference_probs(folder, clip: np.ndarray) -> np.ndarray:
    """The checkpoint's softmax for one clip, straight from transformers."""
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    fe = AutoFeatureExtractor.from_pretrained(folder)
    model = AutoModelForAudioClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(**fe([clip], sampling_rate=SR, return_tensors="pt")).logits[0]
    return torch.softmax(logits.double(), -1).numpy()


# -- audio ----------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")  # torch, in WavLM
@pytest.mark.parametrize("which, labels", [("wav2vec2", ["neutral", "happy", "angry", "sad"]),
                                           ("whisper", ["angry", "calm", "happy"]),
                                           ("hubert", ["neutral", "happy", "sad"]),
                                           ("wavlm", ["neutral", "happy", "sad"])])
def test_hf_audio_folder_loads_and_answers_like_transformers(which, labels, wav2vec2_dir, whisper_dir, tmp_path):
    if which in ("hubert", "wavlm"):
        folder = _ssl_classifier(which, tmp_path / which, ["Neutral", "Happy", "Sad"])
    else:
        folder = {"wav2vec2": wav2vec2_dir, "whisper": whisper_dir}[which]
    model = load_model(folder)
    assert model.labels == labels  # id2label (IEMOCAP spellings made emovox's) or labels.json
    assert model.sample_rate_hz == SR and model.streaming is False
    clips = [_clip(1.0, 0), _clip(0.6, 1), _clip(1.0, 2)]
    for clip in clips:
        p = model.predict(clip, sample_rate_hz=SR)
        want = _reference_probs(folder, clip)
        np.testing.assert_allclose(list(p.scores.values()), want, atol=1e-5)
        assert p.label == labels[int(want.argmax())]
    assert np.ptp(list(p.scores.values())) > 0.05  # not a uniform answer
    # a batch of clips of different lengths gives each clip's own answer
    batch = model.predict_batch([_wav(c) for c in clips])
    for clip, b in zip(clips, batch):
        assert b.scores == pytest.approx(model.predict(clip, sample_rate_hz=SR).scores, abs=1e-5)


def test_audio_model_dir_serves_a_hf_checkpoint(wav2vec2_dir):
    clip = _clip(1.0, 0)
    want = load_model(wav2vec2_dir).predict(clip, sample_rate_hz=SR)
    settings = Settings.from_env({"AUDIO_MODEL_DIR": str(wav2vec2_dir), "TEXT_MODEL_DIR": "none"})
    with TestClient(create_app(settings)) as c:
        h = c.get("/").json()
        audio = h["models"]["audio"]
        assert audio["kind"] == "hf-wav2vec2" and audio["labels"] == ["neutral", "happy", "angry", "sad"]
        assert len(audio["version"]) == 12 and audio["version"] != "unknown" and h["mock"] is False
        body = c.post("/predict-emotion/", files={"file": ("c.wav", _wav(clip), "audio/wav")}).json()
        assert {"emotion", "confidence", "music_mood", "all_probabilities", "status", "low_confidence", "threshold",
                "duration_s", "model"} <= set(body) and "mock" not in body
        assert body["emotion"] == want.label and body["all_probabilities"] == pytest.approx(want.scores, abs=1e-5)
        assert body["music_mood"] == want.music_mood and body["model"] == "wav2vec2-er"
        # labels this model cannot express are named, not left as a silent 0.0
        folded = c.post("/predict-emotion/?labels=ravdess8", files={"file": ("c.wav", _wav(clip), "audio/wav")}).json()
        assert list(folded["all_probabilities"]) == list(RAVDESS8)
        assert folded["unsupported_labels"] == ["calm", "fearful", "disgust", "surprised"]
        assert all(folded["all_probabilities"][k] == 0.0 for k in folded["unsupported_labels"])
        assert c.get("/emotions/?labels=ravdess8").json()["unsupported_labels"] == folded["unsupported_labels"]
        assert "unsupported_labels" not in c.get("/emotions/?labels=core4").json()


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_hf_audio_folder_problems_are_named(wav2vec2_dir, tmp_path):
    pickled = _copy(wav2vec2_dir, tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pytorch_model.bin: pickled weights are not loaded"):
        load_model(pickled)
    no_fe = _copy(wav2vec2_dir, tmp_path / "no-fe")
    (no_fe / "preprocessor_config.json").unlink()
    with pytest.raises(ModelLoadError, match="preprocessor_config.json: missing"):
        load_model(no_fe)
    ctc = _copy(wav2vec2_dir, tmp_path / "ctc")
    cfg = json.loads((ctc / "config.json").read_text())
    (ctc / "config.json").write_text(json.dumps({**cfg, "architectures": ["Wav2Vec2ForCTC"]}))
    with pytest.raises(ModelLoadError, match="'Wav2Vec2ForCTC' is not a classifier"):
        load_model(ctc)
    unnamed = _copy(wav2vec2_dir, tmp_path / "unnamed")
    (unnamed / "config.json").write_text(json.dumps(
        {**cfg, "id2label": {str(i): f"LABEL_{i}" for i in range(4)}, "label2id": {f"LABEL_{i}": i for i in range(4)}}))
    with pytest.raises(ModelLoadError, match="labels have no names.*labels.json"):
        load_model(unnamed)
    (unnamed / "labels.json").write_text(json.dumps(["neutral", "happy", "sad"]))
    with pytest.raises(ModelLoadError, match="3 labels, but the model .* has 4 outputs"):
        load_model(unnamed)
    (wrong := _copy(wav2vec2_dir, tmp_path / "wrong"))
    (wrong / "labels.json").write_text(json.dumps(["sad", "neu", "hap", "ang"]))
    with pytest.raises(ModelLoadError, match="differ from config.json's id2label"):
        load_model(wrong)
    speechbrain = tmp_path / "speechbrain"  # seed 004's ai/models/audio/checkpoint
    speechbrain.mkdir()
    (speechbrain / "hyperparams.yaml").write_text("sample_rate: 16000\n")
    with pytest.raises(ModelLoadError, match="unsupported SpeechBrain hyperparameters: wav2vec2"):
        load_model(speechbrain)


# -- text -----------------------------------------------------------------------------------------

WORDS = "i am so happy sad thank you what a day angry love it".split()


def _tokenizer(path):
    from transformers import BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz!?.,'"]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(path)
    return tok


def _bert_classifier(path, *, with_tokenizer: bool = True):
    """A tiny BertForSequenceClassification over GoEmotions' 28 labels, saved as seed 004's notebook does."""
    from transformers import BertConfig, BertForSequenceClassification

    tok = _tokenizer(path if with_tokenizer else path.parent / f"{path.name}-tokenizer")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=len(GOEMOTIONS28),
                     problem_type="multi_label_classification")
    model = BertForSequenceClassification(cfg)
    _sharpen(model, 3)
    model.save_pretrained(path)
    (path / "labels.json").write_text(json.dumps(list(GOEMOTIONS28)))
    return path


def _write_config(path, **cfg):
    (path / "inference_config.json").write_text(json.dumps({"model_name": "bert-base-uncased", **cfg}))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    path = _bert_classifier(tmp_path_factory.mktemp("hf") / "text-model")
    # seed 004's shape: thresholds as a list in label order, max_len, top_k, a tokenizer name
    _write_config(path, tokenizer_name="bert-base-uncased", max_len=16, top_k=2,
                  thresholds=[0.02 if i % 3 == 0 else 0.98 for i in range(len(GOEMOTIONS28))])
    return path


def _sigmoid_scores(folder, texts, tokenizer_dir=None):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir or folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        enc = tok(texts, truncation=True, max_length=16, padding=True, return_tensors="pt")
        return torch.sigmoid(model(**enc).logits.double()).numpy()


def test_text_model_dir_serves_a_hf_sequence_classifier(bert_dir, tmp_path):
    from emovox.features import preset
    from emovox.modelio import make_config, save_model
    from emovox.models import build_model

    feats = preset("logmel64")
    cnn = build_model("cnn", n_features=feats.n_features, n_classes=2)
    save_model(tmp_path / "speech", cnn.eval(), make_config(model_name="cnn", model_kwargs=cnn.kwargs, features=feats,
                                                            labels=["neutral", "happy"], stats=None))
    texts = ["i am so happy", "what a day", "thank you i love it"]
    want = _sigmoid_scores(bert_dir, texts)
    model = load_text_model(bert_dir)
    assert model.max_length == 16 and model.top_k == 2 and model.thresholds[0] == 0.02 and model.thresholds[1] == 0.98
    with TestClient(create_app(Settings(model=str(tmp_path / "speech"), text_model=str(bert_dir)))) as c:
        info = c.get("/").json()["models"]["text"]
        assert info["available"] is True and info["name"] == "text-model" and len(info["version"]) == 12
        body = c.post("/predict-text/", json={"text": texts[0]}).json()
        batch = c.post("/predict-text/", json={"texts": texts}).json()
        ekman = c.post("/predict-text/?labels=ekman", json={"text": texts[0]}).json()
    # the same response as emovox's own text model: same fields, same decision rule
    assert set(body) == {"text", "label", "score", "labels", "scores", "label_set", "n_tokens", "truncated",
                         "status", "model"}
    for row, probs in zip(batch["results"], want):
        assert list(row["scores"]) == list(GOEMOTIONS28)
        assert list(row["scores"].values()) == pytest.approx(probs, abs=1e-5)
        thr = [0.02 if i % 3 == 0 else 0.98 for i in range(len(probs))]
        eligible = [int(i) for i in np.argsort(-probs, kind="stable") if probs[i] >= thr[i]][:2]  # top_k = 2
        assert eligible
        assert [x["label"] for x in row["labels"]] == [GOEMOTIONS28[i] for i in eligible]
        assert row["label"] == GOEMOTIONS28[eligible[0]]
    assert [x["label"] for x in body["labels"]] == [x["label"] for x in batch["results"][0]["labels"]]
    assert body["scores"] == pytest.approx(batch["results"][0]["scores"], abs=1e-5)  # alone or padded in a batch
    assert list(ekman["scores"]) == ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]


def test_inference_config_spellings(tmp_path):
    folder = _bert_classifier(tmp_path / "m", with_tokenizer=False)  # the tokenizer is a folder beside it
    _write_config(folder, tokenizer=str(tmp_path / "m-tokenizer"), max_length=12, threshold=0.4,
                  thresholds={"joy": 0.3, "anger": 0.7})
    model = load_text_model(folder)
    assert model.max_length == 12 and model.top_k == 0 and model.global_threshold == 0.4
    thr = dict(zip(model.labels, model.thresholds))
    assert thr["joy"] == 0.3 and thr["anger"] == 0.7 and thr["neutral"] == 0.4  # unlisted labels: the global one
    texts = ["i am so happy", "sad"]
    got, _, _ = model.probabilities(texts)
    np.testing.assert_allclose(got, _sigmoid_scores(folder, texts, tmp_path / "m-tokenizer"), atol=1e-5)

    tok = {"tokenizer": str(tmp_path / "m-tokenizer")}
    bad = {
        "'thresholds' lists 3 values for 28 labels": {**tok, "thresholds": [0.5] * 3},
        r"thresholds for unknown labels \['happyness'\]": {**tok, "thresholds": {"happyness": 0.5}},
        "threshold of 'admiration' must be a number in": {**tok, "thresholds": [1.5] + [0.5] * 27},
        "max_length and max_len disagree": {**tok, "max_length": 12, "max_len": 16},
        r"max_len must be a whole number of tokens in \[4, 64\]": {**tok, "max_len": 512},
        "top_k must be a whole number": {**tok, "top_k": -1},
        "cannot load the tokenizer 'bert-base-uncased'.*nothing is downloaded": {"tokenizer_name": "bert-base-uncased"},
        "no tokenizer files": {},
    }
    for message, cfg in bad.items():
        (folder / "inference_config.json").write_text(json.dumps(cfg))
        with pytest.raises(TextModelError, match=message):
            load_text_model(folder)


def test_text_evaluate_writes_seed004_names(bert_dir, tmp_path, capsys):
    lines = ["i am so happy\t17\ta", "so sad\t25\tb", "thank you\t15,17\tc", "what a day\t27\td"]
    (tmp_path / "test.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval_test"
    assert main(["text-evaluate", "--model", str(bert_dir), "--data", str(tmp_path / "test.tsv"),
                 "--output-dir", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["n_examples"] == 4
    overall = json.loads((out / "metrics_overall.json").read_text())
    assert overall["n_examples"] == 4 and "macro_f1" in overall["per_class_thresholds"]
    with open(out / "per_class_metrics_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == list(GOEMOTIONS28) and rows[17]["support"] == "2"
    used = json.loads((out / "inference_config.json").read_text())
    assert used["thresholds"]["admiration"] == 0.02 and used["top_k"] == 2 and used["max_length"] == 16
    assert used["labels"] == list(GOEMOTIONS28)


def test_cli_classify_takes_a_hf_folder(wav2vec2_dir, tmp_path, capsys):
    clip = _clip(1.0, 0)
    sf.write(tmp_path / "a.wav", clip, SR, subtype="FLOAT")
    want = load_model(wav2vec2_dir).predict(clip, sample_rate_hz=SR)
    assert main(["classify", str(tmp_path / "a.wav"), "--model", str(wav2vec2_dir), "--fields",
                 "emotion,confidence"]) == 0
    assert json.loads(capsys.readouterr().out) == {"emotion": want.label,
                                                   "confidence": pytest.approx(want.score, abs=1e-5)}
    # evaluate needs an emovox model folder, and says so
    assert main(["evaluate", "--model", str(wav2vec2_dir), str(tmp_path), "--output-dir", str(tmp_path / "e")]) == 2
    assert "Hugging Face config.json" in capsys.readouterr().err
