"""Text emotion: training (frozen and fine-tuned), thresholds, artifacts, CLI, grouping, bad input.

Models are trained on a tiny random BERT built here (no download), from a few hundred lines of
the real GoEmotions TSV when ../shared/data is present, else from synthetic lines.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from emovox.cli import main  # noqa: E402
from emovox.data.labels import EKMAN7, GOEMOTIONS28  # noqa: E402
from emovox.text import (  # noqa: E402
    TextError,
    TextModelError,
    group_decisions,
    group_scores,
    load_text_model,
    read_tsv,
)
from emovox.text.metrics import decide, tune_thresholds  # noqa: E402

GOEMOTIONS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "goemotions"
WORDS = ("i you the a to and is it that this of so not my me love happy sad angry thank thanks great good "
         "bad what why lol wow sorry fear scared hate yes no really am grateful").split()


def _tiny_bert(path: Path) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz!?.,'",
             *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(path)
    return path


def _synthetic(n: int, seed: int) -> str:
    cues = {17: "happy", 15: "thank you", 25: "so sad", 2: "angry", 14: "scared", 18: "love", 27: "the"}
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        ids = rng.sample(sorted(cues), rng.choice((1, 1, 2)))
        filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
        lines.append(f"{filler} {' '.join(cues[j] for j in ids)}\t{','.join(map(str, ids))}\tid{i}\n")
    return "".join(lines)



def tiny_setup(root: Path, n_train: int = 200, n_dev: int = 80) -> dict:
    """Synthetic train/dev TSVs and a tiny random BERT in ``root`` (for tests that train small text models)."""
    (root / "train.tsv").write_text(_synthetic(n_train, 0), encoding="utf-8")
    (root / "dev.tsv").write_text(_synthetic(n_dev, 1), encoding="utf-8")
    return {"root": root, "encoder": _tiny_bert(root / "tiny-bert"), "train": root / "train.tsv",
            "dev": root / "dev.tsv"}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("text")
    if (GOEMOTIONS / "train.tsv").is_file():
        with open(GOEMOTIONS / "train.tsv", encoding="utf-8") as f:
            train = "".join(f.readline() for _ in range(400))
        with open(GOEMOTIONS / "dev.tsv", encoding="utf-8") as f:
            dev = "".join(f.readline() for _ in range(200))
    else:  # the real data is optional: synthetic lines exercise the same code
        train, dev = _synthetic(400, 0), _synthetic(200, 1)
    (root / "train.tsv").write_text(train, encoding="utf-8")
    (root / "dev.tsv").write_text(dev, encoding="utf-8")
    return {"root": root, "encoder": _tiny_bert(root / "tiny-bert"), "train": root / "train.tsv",
            "dev": root / "dev.tsv", "cache": root / "cache"}


@pytest.fixture(scope="module")
def frozen_model(work) -> Path:
    out = work["root"] / "frozen"
    rc = main(["text-train", "--train", str(work["train"]), "--dev", str(work["dev"]), "--output-dir", str(out),
               "--encoder", str(work["encoder"]), "--mode", "frozen", "--epochs", "6", "--max-length", "32",
               "--cache-dir", str(work["cache"])])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def finetuned_model(work) -> Path:
    from emovox.text import TextTrainConfig, train_text_model

    out = work["root"] / "finetune"
    cfg = TextTrainConfig(encoder=str(work["encoder"]), mode="finetune", finetune_layers=1, epochs=2,
                          probe_epochs=2, max_length=32, encoder_lr=1e-3)
    train_text_model(work["train"], work["dev"], out, cfg, cache_dir=work["cache"])
    return out


# -- artifacts and thresholds ------------------------------------------------------------------

def test_artifacts_written_and_readable(frozen_model):
    from safetensors.torch import load_file

    names = {p.name for p in frozen_model.iterdir()}
    assert {"inference_config.json", "labels.json", "model_meta.json", "metrics_overall.json",
            "per_class_metrics.csv", "head.safetensors"} <= names
    assert "encoder_delta.safetensors" not in names  # frozen: nothing of the encoder is stored
    assert json.loads((frozen_model / "labels.json").read_text()) == list(GOEMOTIONS28)
    cfg = json.loads((frozen_model / "inference_config.json").read_text())
    assert cfg["max_length"] == 32 and cfg["top_k"] == 3 and cfg["encoder"]["fingerprint"].startswith("sha256:")
    assert list(cfg["thresholds"]) == list(GOEMOTIONS28) and 0 < cfg["global_threshold"] < 1
    meta = json.loads((frozen_model / "model_meta.json").read_text())
    assert {"seed", "data", "date", "emovox_version", "notes"} <= set(meta)
    assert meta["data"]["dev"]["n_examples"] == 200
    m = json.loads((frozen_model / "metrics_overall.json").read_text())
    for block in ("per_class_thresholds", "global_threshold"):
        assert {"micro_f1", "macro_f1", "micro_precision", "micro_recall", "macro_precision",
                "macro_recall"} <= set(m[block])
    assert 0.0 <= m["auroc_macro"] <= 1.0 and 0.0 <= m["auroc_micro"] <= 1.0
    assert m["ekman"]["labels"] == list(("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"))
    with open(frozen_model / "per_class_metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == list(GOEMOTIONS28)
    assert {"support", "threshold", "precision", "recall", "f1", "auroc"} <= set(rows[0])
    head = load_file(str(frozen_model / "head.safetensors"))
    assert head["net.4.weight"].shape == (28, 512)


def test_thresholds_are_tuned_on_dev(frozen_model, work, tmp_path):
    cfg = json.loads((frozen_model / "inference_config.json").read_text())
    thresholds = np.array([cfg["thresholds"][lab] for lab in GOEMOTIONS28])
    assert not np.allclose(thresholds, 0.5)  # moved from the default
    assert cfg["thresholds_tuned_on"]["path"] == str(work["dev"])
    model = load_text_model(frozen_model)
    dev = read_tsv(work["dev"], 28)
    probs, _, _ = model.probabilities(dev.texts)
    expected, global_t = tune_thresholds(probs, dev.targets)  # tuning on dev gives the stored values
    np.testing.assert_allclose(thresholds, expected)
    assert cfg["global_threshold"] == pytest.approx(global_t)
    # text-evaluate on dev reproduces the metrics written at training
    rc = main(["text-evaluate", "--model", str(frozen_model), "--data", str(work["dev"]),
               "--output-dir", str(tmp_path / "ev")])
    assert rc == 0
    got = json.loads((tmp_path / "ev" / "metrics_overall.json").read_text())
    want = json.loads((frozen_model / "metrics_overall.json").read_text())
    for key in ("per_class_thresholds", "global_threshold", "inference_rule", "auroc_macro", "auroc_micro"):
        assert got[key] == pytest.approx(want[key]), key
    assert (tmp_path / "ev" / "per_class_metrics.csv").read_text() == (frozen_model / "per_class_metrics.csv").read_text()


def test_embedding_cache_is_keyed_and_reused(frozen_model, work):
    from emovox.text.encoder import Encoder, cache_key, load_cached, resolve_encoder

    files = sorted(work["cache"].glob("emb-*.npy"))
    assert len(files) >= 2  # train and dev
    enc = Encoder(resolve_encoder(str(work["encoder"])), max_length=32)
    dev = read_tsv(work["dev"], 28)
    cached = load_cached(work["cache"], cache_key(enc.ref, 32, dev.sha256), len(dev), enc.hidden_size)
    np.testing.assert_allclose(cached, enc.embed(dev.texts), atol=1e-5)
    assert cache_key(enc.ref, 33, dev.sha256) != cache_key(enc.ref, 32, dev.sha256)


def test_finetune_ships_only_top_layer_delta(finetuned_model, work):
    from safetensors.torch import load_file
    from transformers import AutoModel

    cfg = json.loads((finetuned_model / "inference_config.json").read_text())
    assert cfg["encoder_delta"]["layers"] == [1]
    delta = load_file(str(finetuned_model / "encoder_delta.safetensors"))
    assert delta and all(k.startswith("encoder.layer.1.") for k in delta)
    assert all(v.dtype == torch.float16 for v in delta.values())
    assert max(float(v.abs().max()) for v in delta.values()) > 0  # the layer did train
    model = load_text_model(finetuned_model)
    base = dict(AutoModel.from_pretrained(str(work["encoder"])).named_parameters())
    loaded = dict(model.encoder.model.named_parameters())
    name = next(iter(delta))
    torch.testing.assert_close(loaded[name], base[name] + delta[name].float())
    lower = "encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(loaded[lower], base[lower])
    # the dev metrics were computed through this same loading path
    report = json.loads((finetuned_model / "metrics_overall.json").read_text())
    from emovox.text import evaluate_text_model

    again = evaluate_text_model(model, work["dev"])
    assert again["per_class_thresholds"] == pytest.approx(report["per_class_thresholds"])


def test_finetune_killed_mid_epoch_resumes_and_ends_where_a_straight_run_ends(work, tmp_path, monkeypatch, capsys):
    """A run stopped during its second epoch continues from its last checkpoint (--resume) and writes the
    same weights as a run that was never stopped; another run's settings are refused; the checkpoint goes
    once the folder is written."""
    from safetensors.torch import load_file

    import emovox.text.train as text_train
    from emovox.cli import main
    from emovox.text import TextTrainConfig, train_text_model
    from emovox.text.checkpoints import CHECKPOINT_FILE

    cfg = TextTrainConfig(encoder=str(work["encoder"]), mode="finetune", finetune_layers=1, epochs=2, probe_epochs=2,
                          max_length=32, encoder_lr=1e-3, batch_size=16, checkpoint_steps=5)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train_text_model(work["train"], work["dev"], straight, cfg, cache_dir=work["cache"])
    assert not (straight / CHECKPOINT_FILE).exists()

    real, calls = text_train.multilabel_loss, []

    def killed_at_call_45(*a, **k):  # probe 2 x 4 batches, epoch 1: 25, then 12 of epoch 2
        calls.append(1)
        if len(calls) == 45:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(text_train, "multilabel_loss", killed_at_call_45)
    with pytest.raises(KeyboardInterrupt):
        train_text_model(work["train"], work["dev"], stopped, cfg, cache_dir=work["cache"])
    monkeypatch.setattr(text_train, "multilabel_loss", real)
    assert (stopped / CHECKPOINT_FILE).is_file() and not (stopped / "encoder_delta.safetensors").exists()

    rc = main(["text-train", "--train", str(work["train"]), "--dev", str(work["dev"]), "--output-dir", str(stopped),
               "--encoder", str(work["encoder"]), "--mode", "finetune", "--finetune-layers", "1", "--epochs", "2",
               "--batch-size", "16", "--max-length", "32", "--encoder-lr", "3e-4", "--resume",
               "--cache-dir", str(work["cache"])])
    assert rc != 0 and "written by another run (encoder_lr: 0.001 then, 0.0003 now" in capsys.readouterr().err

    train_text_model(work["train"], work["dev"], stopped, cfg, cache_dir=work["cache"], resume=True)
    assert not (stopped / CHECKPOINT_FILE).exists()
    for name in ("encoder_delta.safetensors", "head.safetensors"):
        a, b = load_file(str(straight / name)), load_file(str(stopped / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=0)
    history = json.loads((stopped / "model_meta.json").read_text())["history"]
    assert [h.get("resumed_after_step") for h in history if h["phase"] == "finetune"] == [None, 10]
    # the resumed epoch's loss is the mean over the 15 batches it ran, not their sum over all 25 batches' texts
    straight_loss = json.loads((straight / "model_meta.json").read_text())["history"][-1]["train_loss"]
    assert 0.8 < history[-1]["train_loss"] / straight_loss < 1.1  # 0.94 here; summed over the epoch it was ~0.55


def test_a_damaged_finetune_checkpoint_is_named_and_left_alone(work, tmp_path):
    from emovox.text import TextTrainConfig, train_text_model
    from emovox.text.checkpoints import CHECKPOINT_FILE, TextCheckpointError

    out = tmp_path / "run"
    out.mkdir()
    (out / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    cfg = TextTrainConfig(encoder=str(work["encoder"]), mode="finetune", finetune_layers=1, epochs=1, probe_epochs=1,
                          max_length=32)
    with pytest.raises(TextCheckpointError, match="not a readable text fine-tuning checkpoint.*delete it"):
        train_text_model(work["train"], work["dev"], out, cfg, cache_dir=work["cache"], resume=True)
    assert (out / CHECKPOINT_FILE).read_bytes() == b"not a checkpoint"


# -- grouping ----------------------------------------------------------------------------------

def test_ekman_and_audio7_grouping_by_max():
    scores = np.full(28, 0.01)
    idx = {lab: i for i, lab in enumerate(GOEMOTIONS28)}
    for lab, s in {"gratitude": 0.9, "joy": 0.3, "annoyance": 0.6, "anger": 0.2, "nervousness": 0.4,
                   "curiosity": 0.7, "grief": 0.5, "neutral": 0.05}.items():
        scores[idx[lab]] = s
    names, g = group_scores(scores, GOEMOTIONS28, "ekman")
    assert names == ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")
    assert dict(zip(names, g.round(2))) == {"anger": 0.6, "disgust": 0.01, "fear": 0.4, "joy": 0.9,
                                             "sadness": 0.5, "surprise": 0.7, "neutral": 0.05}
    names7, g7 = group_scores(scores[None], GOEMOTIONS28, "audio7")
    assert names7 == EKMAN7
    assert dict(zip(names7, g7[0].round(2))) == {"neutral": 0.05, "happy": 0.9, "sad": 0.5, "angry": 0.6,
                                                 "fearful": 0.4, "disgust": 0.01, "surprised": 0.7}
    pred = np.zeros(28, bool)
    pred[idx["relief"]] = True  # any member predicted → its group is
    _, gp = group_decisions(pred, GOEMOTIONS28, "ekman")
    assert gp.tolist() == [False, False, False, True, False, False, False]
    with pytest.raises(ValueError, match="accepted: goemotions, ekman, audio7"):
        group_scores(scores, GOEMOTIONS28, "plutchik")


def test_decision_rule_top_k_and_always_one():
    probs = np.array([[0.9, 0.8, 0.7, 0.1], [0.2, 0.1, 0.3, 0.05]])
    pred = decide(probs, 0.5, top_k=2, always_one=True)
    assert pred.tolist() == [[True, True, False, False], [False, False, True, False]]
    assert decide(probs, 0.5).sum() == 3


# -- prediction, CLI and bad input -------------------------------------------------------------

def test_cli_text_batch_with_blank_line_goes_on(frozen_model, tmp_path, capsys):
    lines = tmp_path / "lines.txt"
    lines.write_text("thank you so much\n   \nwhy is this so bad\n", encoding="utf-8")
    rc = main(["text", "--model", str(frozen_model), "--file", str(lines), "--format", "jsonl", "--labels", "ekman"])
    out, err = capsys.readouterr()
    assert rc == 1 and "1 of 3 texts could not be classified" in err
    recs = [json.loads(x) for x in out.splitlines()]
    assert [r["line"] for r in recs] == [1, 2, 3]
    assert "empty or whitespace-only" in recs[1]["error"]
    for r in (recs[0], recs[2]):
        assert "error" not in r and set(r["scores"]) == {"anger", "disgust", "fear", "joy", "sadness",
                                                          "surprise", "neutral"}
        top = r["labels"][0]["label"] if r["labels"] else max(r["scores"], key=r["scores"].get)
        assert r["label"] == top and r["score"] == r["scores"][top]
        assert all(x["score"] == r["scores"][x["label"]] for x in r["labels"])


def test_cli_text_table_and_json(frozen_model, capsys):
    assert main(["text", "--model", str(frozen_model), "I can't believe it worked!"]) == 0
    out = capsys.readouterr().out
    assert "labels:" in out and "scores:" in out and "admiration" in out
    assert main(["text", "--model", str(frozen_model), "--format", "json", "--labels", "audio7", "--top-k", "1",
                 "wow", "so sad"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert [r["index"] for r in recs] == [0, 1]
    assert all(list(r["scores"]) == list(EKMAN7) and len(r["labels"]) <= 1 for r in recs)


def test_truncation_is_reported(frozen_model):
    model = load_text_model(frozen_model)
    long, short = model.predict(["love " * 200, "love"])
    assert long.truncated and long.n_tokens > 32
    assert not short.truncated and short.n_tokens == 3


def test_empty_text_raises_or_is_recorded(frozen_model):
    model = load_text_model(frozen_model)
    with pytest.raises(TextError, match=r"text 1: empty or whitespace-only"):
        model.predict(["fine", " \t "])
    preds = model.predict(["fine", ""], errors="record")
    assert preds[0].ok and not preds[1].ok and "empty" in preds[1].error
    with pytest.raises(ValueError, match="threshold must be"):
        model.predict("fine", threshold="lots")


def test_non_utf8_file_names_file_and_offset(frozen_model, tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"ok\ncaf\xe9\n")
    assert main(["text", "--model", str(frozen_model), "--file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not valid UTF-8 at byte offset 6" in err


def test_corrupt_or_missing_model_files(frozen_model, tmp_path, capsys):
    broken = tmp_path / "m"
    shutil.copytree(frozen_model, broken)
    (broken / "head.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(TextModelError, match=r"head\.safetensors: cannot read safetensors"):
        load_text_model(broken)
    shutil.copy(frozen_model / "head.safetensors", broken / "head.safetensors")
    (broken / "inference_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TextModelError, match=r"inference_config\.json: not valid JSON"):
        load_text_model(broken)
    shutil.copy(frozen_model / "inference_config.json", broken / "inference_config.json")
    (broken / "labels.json").unlink()
    assert main(["text", "--model", str(broken), "hello"]) == 2
    assert "labels.json: missing" in capsys.readouterr().err
    with pytest.raises(TextModelError, match="not a text model folder"):
        load_text_model(tmp_path / "nowhere")


def test_bad_delta_or_other_encoder_is_refused(finetuned_model, work, tmp_path):
    from safetensors.torch import save_file
    from transformers import AutoModel

    broken = tmp_path / "m"
    shutil.copytree(finetuned_model, broken)
    save_file({"encoder.layer.9.output.dense.weight": torch.zeros(2, 2, dtype=torch.float16)},
              str(broken / "encoder_delta.safetensors"))
    with pytest.raises(TextModelError, match=r"encoder_delta\.safetensors: tensor 'encoder\.layer\.9"):
        load_text_model(broken)
    other = tmp_path / "other-encoder"
    shutil.copytree(work["encoder"], other)
    m = AutoModel.from_pretrained(str(other))
    with torch.no_grad():
        m.encoder.layer[0].output.dense.weight.add_(0.01)
    m.save_pretrained(other)
    with pytest.raises(TextModelError, match="encoder weights differ"):
        load_text_model(finetuned_model, encoder=other)


def test_stdin_must_be_utf8(frozen_model, monkeypatch, capsys):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"fine\n\xff\n")))
    assert main(["text", "--model", str(frozen_model), "--file", "-"]) == 2
    assert "<stdin>: not valid UTF-8 at byte offset 5" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"thank you\r\nwow\n")))
    assert main(["text", "--model", str(frozen_model), "--file", "-", "--format", "jsonl"]) == 0
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["file"], r["line"], r["text"]) for r in recs] == [("-", 1, "thank you"), ("-", 2, "wow")]


def test_bad_training_input(work, tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("fine text\t3\tx\nother\t99\ty\n", encoding="utf-8")
    with pytest.raises(TextError, match=r"bad\.tsv:2: label ids '99' outside 0\.\.27"):
        read_tsv(bad, 28)
    rc = main(["text-train", "--train", str(work["train"]), "--dev", str(work["dev"]),
               "--output-dir", str(tmp_path / "o"), "--encoder", str(tmp_path / "no-such-encoder")])
    assert rc == 2
    assert "no-such-encoder" in capsys.readouterr().err


# -- the shipped default model -----------------------------------------------------------------

@pytest.fixture(scope="module")
def default_model():
    try:
        return load_text_model()
    except TextModelError as e:
        pytest.skip(f"shipped text model unavailable: {e}")


def test_default_model_happy_and_grateful(default_model):
    import emovox

    assert emovox.load_text_model is load_text_model  # the lazy top-level name
    (p,) = default_model.predict(["I am so happy and grateful"])
    chosen = [x["label"] for x in p.labels]
    assert set(chosen) & {"joy", "gratitude", "admiration", "love", "excitement"}
    assert "neutral" not in chosen
    assert max(p.scores["joy"], p.scores["gratitude"]) > 0.5 > p.scores["neutral"]
    (e,) = default_model.predict("I am so happy and grateful", labels="audio7")
    assert e.label == "happy"
    (s,) = default_model.predict("My dog died this morning and I miss him so much.", labels="ekman")
    assert s.label == "sadness"
