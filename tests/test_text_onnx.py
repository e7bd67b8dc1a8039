"""Text emotion on ONNX Runtime: parity with PyTorch, the tokenizer against transformers', no torch import on the
inference paths (CLI, Python API, server), the staleness record, the cache, and `text-export` / `text-train --onnx`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from emovox.cli import main  # noqa: E402
from emovox.text import TextError, TextModelError, default_model_path, load_text_model, read_tsv  # noqa: E402
from emovox.text.runtime import RUNTIME_FILE, cache_root, runtime_dir  # noqa: E402
from emovox.text.tokenizer import TextTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = default_model_path()
#: Modules a base install does not have; a subprocess that cannot import them runs what the base install runs.
NOT_IN_BASE = ("torch", "transformers", "sentence_transformers", "sklearn", "matplotlib", "yaml")
BLOCK = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {NOT_IN_BASE!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
"""
ODD = ["", " ", "a", "I can't believe it worked, thank you!!! 🎉🎉", "😀" * 40, "👩‍👩‍👧‍👦 family", "é" * 3 + "\u0301",
       "日本語のテキストです", "مرحبا بالعالم", "tab\tnew\nline\r\n", "\x00\x01\x7f control", "\u200b\u200d zero width",
       "CAPS AND ŚTRANGE ÄCCENTS", "word " * 2000, "x" * 10000, "🙂 " * 3000, "a\ud7ffb", "\U0010fffd"]


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """A cache folder of this module's own: the shipped graph is filled into it once (a few seconds)."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("cache")
        mp.setenv("EMOVOX_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def shipped_onnx():
    return load_text_model(backend="onnx")


@pytest.fixture(scope="module")
def shipped_torch():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return load_text_model(backend="torch")


def test_shipped_model_runs_on_onnx_by_default(shipped_onnx):
    model = load_text_model()
    assert model.backend == "onnx" and type(model).__name__ == "OnnxTextModel"
    assert (runtime_dir(SHIPPED) / "model.onnx").stat().st_size < 1_000_000  # weights are references
    [p] = model.predict("thank you so much, this is wonderful")
    assert p.label == "gratitude" and p.labels and p.labels[0]["label"] == "gratitude"


@pytest.mark.realdata
def test_onnx_equals_pytorch_on_goemotions_dev(shipped_onnx, shipped_torch, shared_data):
    """Scores within 1e-4 on 400 dev texts (every 13th line: short, long, emoji, odd punctuation), in batches of
    mixed lengths and one at a time; token counts, truncation flags and predicted labels identical."""
    dev = read_tsv(shared_data / "goemotions" / "dev.tsv", len(shipped_onnx.labels))
    texts = dev.texts[::13][:400]
    a, n_a, t_a = shipped_onnx.probabilities(texts, batch_size=32)
    b, n_b, t_b = shipped_torch.probabilities(texts, batch_size=32)
    assert np.abs(a - b).max() < 1e-4
    assert np.array_equal(n_a, n_b) and np.array_equal(t_a, t_b)
    for t in texts[:20]:
        assert np.abs(shipped_onnx.probabilities([t])[0] - shipped_torch.probabilities([t])[0]).max() < 1e-4
    pa = [p.labels for p in shipped_onnx.predict(texts)]
    pb = [p.labels for p in shipped_torch.predict(texts)]
    assert [[x["label"] for x in p] for p in pa] == [[x["label"] for x in p] for p in pb]


def test_odd_texts_equal_on_both_runtimes(shipped_onnx, shipped_torch):
    texts = [t for t in ODD if t.strip()]
    a, n_a, t_a = shipped_onnx.probabilities(texts, batch_size=4)
    b, n_b, t_b = shipped_torch.probabilities(texts, batch_size=4)
    assert np.abs(a - b).max() < 1e-4 and np.array_equal(n_a, n_b) and np.array_equal(t_a, t_b)
    assert t_a[texts.index("word " * 2000)] and not t_a[texts.index("a")]


def test_tokenizer_equals_transformers_on_odd_inputs():
    """The tokenizers-library tokenizer (the model's own tokenizer.json) gives transformers' ids, full token counts
    and truncation flags: empty text, 10,000 characters, emoji, ZWJ sequences, combining marks, CJK, RTL,
    control characters."""
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from emovox.text.encoder import tokenize
    from emovox.text.encoder_ref import minilm_dir

    ours = TextTokenizer(runtime_dir(SHIPPED) / "tokenizer.json", 128)
    theirs = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    ids_a, n_a, t_a = ours.tokenize(ODD)
    ids_b, n_b, t_b = tokenize(theirs, ODD, 128)
    assert ids_a == ids_b and n_a.tolist() == n_b.tolist() and t_a.tolist() == t_b.tolist()
    assert ids_a[0] == [101, 102]  # empty text: [CLS] [SEP]
    long = ODD.index("word " * 2000)  # 10,000 characters: cut to 128 tokens, [SEP] last
    assert len(ids_a[long]) == 128 and ids_a[long][-1] == 102 and t_a[long] and n_a[long] == 2002
    assert ids_a[ODD.index("x" * 10000)] == [101, 100, 102]  # one 10,000-character word: [UNK] (as transformers)
    # the same with the tiny length limit a trained model may use
    assert ours.__class__(ours.path, 8).tokenize(ODD)[0] == tokenize(theirs, ODD, 8)[0]


def test_invalid_utf8_and_lone_surrogates_are_refused_clearly():
    tok = TextTokenizer(runtime_dir(SHIPPED) / "tokenizer.json", 128)
    assert tok.tokenize([b"caf\xc3\xa9"])[0] == tok.tokenize(["café"])[0]  # UTF-8 bytes are decoded
    with pytest.raises(TextError, match=r"text 1: not valid UTF-8 at byte offset 3 \(bytes ff"):
        tok.tokenize(["fine", b"abc\xff\xfe"])
    with pytest.raises(TextError, match="text 0: not valid Unicode: a lone surrogate code point U\\+DCFF"):
        tok.tokenize([b"abc\xff".decode("utf-8", "surrogateescape")])
    with pytest.raises(TextError, match="expected a string, got int"):
        tok.tokenize([3])


def test_invalid_utf8_file_is_refused_by_the_cli(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good line\nbad \xc3\x28 line\n")
    assert main(["text", "--file", str(bad)]) == 2
    assert "not valid UTF-8 at byte offset 14" in capsys.readouterr().err


def _run(script: str, env: dict | None = None, timeout: int = 300) -> dict:
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                         env={**os.environ, **(env or {})})
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_cli_and_api_never_import_torch(tmp_path):
    """A fresh interpreter where torch and transformers cannot be imported (what the base install has), with an
    empty cache (the graph is filled there), runs `emovox text` and the Python API; torch is never imported."""
    script = BLOCK + """
import contextlib, io, json
from emovox.cli import main
import emovox
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(["text", "I can't believe it worked, thank you!", "ugh, again?", "--format", "jsonl"])
model = emovox.load_text_model()
preds = model.predict(["I am so happy and grateful"], labels="ekman")
print(json.dumps({"rc": rc, "lines": out.getvalue().splitlines(), "backend": model.backend,
                  "ekman": preds[0].label, "torch": "torch" in sys.modules,
                  "transformers": "transformers" in sys.modules}))
"""
    got = _run(script, {"EMOVOX_CACHE_DIR": str(tmp_path)})
    assert got["rc"] == 0 and got["backend"] == "onnx" and got["ekman"] == "joy"
    assert got["torch"] is False and got["transformers"] is False
    first = json.loads(got["lines"][0])
    assert first["label"] == "gratitude" and len(first["scores"]) == 28 and len(got["lines"]) == 2
    assert list((tmp_path / "onnx").glob("text-default-*.onnx"))


def test_cli_backend_torch_gives_the_same_scores(capsys):
    pytest.importorskip("torch")
    text = "What?! Why would anyone do that 😡"
    rows = []
    for backend in ("onnx", "torch"):
        assert main(["text", text, "--format", "json", "--backend", backend]) == 0
        rows.append(json.loads(capsys.readouterr().out)[0])
    assert rows[0]["labels"] == rows[1]["labels"] or max(
        abs(rows[0]["scores"][k] - rows[1]["scores"][k]) for k in rows[0]["scores"]) < 1e-4
    assert max(abs(rows[0]["scores"][k] - rows[1]["scores"][k]) for k in rows[0]["scores"]) < 1e-4


def test_server_text_route_without_torch():
    """`emovox serve`'s app answers POST /predict-text/ with the shipped text model on ONNX Runtime in a process
    where torch and transformers cannot be imported."""
    pytest.importorskip("fastapi")
    script = BLOCK + f"""
import json
from fastapi.testclient import TestClient
from emovox.server.app import create_app
from emovox.server.settings import Settings
with TestClient(create_app(Settings(text_model={str(SHIPPED)!r}, use_mock_models=False))) as c:
    one = c.post("/predict-text/", json={{"text": "thank you so much!"}})
    many = c.post("/predict-text/?labels=audio7", json={{"texts": ["I love it", "this is scary"]}})
    health = c.get("/").json()
print(json.dumps({{"torch": "torch" in sys.modules, "one": [one.status_code, one.json()],
                  "many": [many.status_code, many.json()], "text_available": health.get("text_available")}}))
"""
    got = _run(script)
    assert got["torch"] is False and got["text_available"] is True
    status, body = got["one"]
    assert status == 200 and body["label"] == "gratitude" and body["status"] == "success"
    status, body = got["many"]
    assert status == 200 and len(body["results"]) == 2 and body["results"][0]["label"] == "happy"


# -- the record of what the graph was built from ----------------------------------------------------------------

@pytest.fixture
def copy(tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(SHIPPED, dst)
    return dst


def test_a_graph_built_from_other_weights_is_refused(copy):
    from safetensors.numpy import load_file, save_file

    head = load_file(str(copy / "head.safetensors"))
    head["net.4.bias"] = head["net.4.bias"] + np.float32(0.5)
    save_file(head, str(copy / "head.safetensors"))
    with pytest.raises(TextModelError, match=r"built from other head.safetensors than .* holds now; it is not used"):
        load_text_model(copy)
    with pytest.raises(TextModelError, match="emovox text-export --model"):
        load_text_model(copy, backend="onnx")


@pytest.mark.parametrize("edit", ["encoder_delta", "labels", "tokenizer"])
def test_other_stale_parts_are_named(copy, edit):
    if edit == "encoder_delta":
        (copy / "encoder_delta.safetensors").write_bytes((copy / "encoder_delta.safetensors").read_bytes()[:-8]
                                                         + b"\0" * 8)
        name = "encoder_delta.safetensors"
    elif edit == "labels":
        cfg = json.loads((copy / "inference_config.json").read_text())
        cfg["head"]["hidden_dim"] = 256
        (copy / "inference_config.json").write_text(json.dumps(cfg))
        name = "inference_config.json"
    else:
        tok = copy / "onnx" / "tokenizer.json"
        tok.write_text(tok.read_text().replace('"lowercase":true', '"lowercase":false'))
        name = "tokenizer.json"
    with pytest.raises(TextModelError, match=f"built from other {name}"):
        load_text_model(copy)


def test_thresholds_edited_by_hand_keep_the_graph(copy):
    cfg = json.loads((copy / "inference_config.json").read_text())
    cfg["thresholds"]["gratitude"] = 0.99
    cfg["top_k"] = 1
    (copy / "inference_config.json").write_text(json.dumps(cfg))
    model = load_text_model(copy)
    assert model.backend == "onnx" and model.thresholds[model.labels.index("gratitude")] == 0.99


def test_corrupt_runtime_manifest_is_named(copy):
    (copy / "onnx" / RUNTIME_FILE).write_text("{not json")
    with pytest.raises(TextModelError, match="runtime.json: unreadable runtime manifest"):
        load_text_model(copy)
    (copy / "onnx" / RUNTIME_FILE).write_text(json.dumps({"format": "emovox-text-onnx", "format_version": 9}))
    with pytest.raises(TextModelError, match="missing key"):
        load_text_model(copy)


def test_folder_without_graph_runs_on_torch_or_says_how_to_export(copy):
    shutil.rmtree(copy / "onnx")
    with pytest.raises(TextModelError, match="no ONNX Runtime graph .*emovox text-export --model"):
        load_text_model(copy, backend="onnx")
    pytest.importorskip("torch")
    assert load_text_model(copy).backend == "torch"


def test_a_damaged_cached_graph_is_built_again(shipped_onnx):
    [graph] = cache_root().glob("text-default-*.onnx")
    data = graph.with_name(graph.name + ".data")
    size = data.stat().st_size
    data.write_bytes(data.read_bytes()[:1000])
    model = load_text_model(backend="onnx")
    assert data.stat().st_size == size
    assert model.predict("thank you!")[0].label == "gratitude"


# -- export of any trained model ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_text import tiny_setup

    return tiny_setup(tmp_path_factory.mktemp("trained"))


def _train(trained: dict, name: str, *extra: str) -> Path:
    out = trained["root"] / name
    rc = main(["text-train", "--train", str(trained["root"] / "train.tsv"), "--dev", str(trained["root"] / "dev.tsv"),
               "--output-dir", str(out), "--encoder", str(trained["encoder"]), "--max-length", "16",
               "--cache-dir", str(trained["root"] / "cache"), *extra])
    assert rc == 0
    return out


def test_text_train_onnx_writes_a_graph_that_matches_torch(trained):
    out = _train(trained, "ft", "--mode", "finetune", "--finetune-layers", "1", "--epochs", "1", "--onnx")
    manifest = json.loads((out / "onnx" / RUNTIME_FILE).read_text())
    assert manifest["parity_max_abs_diff"] < 1e-4 and set(manifest["built_from"]) == {
        "inference_config.json", "tokenizer.json", "head.safetensors", "encoder_delta.safetensors"}
    texts = ["i am so happy thank you", "why", "sad " * 40, "scared and angry lol"]
    a, b = load_text_model(out), load_text_model(out, backend="torch")
    assert a.backend == "onnx" and b.backend == "torch"
    pa, na, ta = a.probabilities(texts, batch_size=3)
    pb, nb, tb = b.probabilities(texts, batch_size=3)
    assert np.abs(pa - pb).max() < 1e-4 and np.array_equal(na, nb) and np.array_equal(ta, tb) and ta[2]


def test_text_export_self_contained_runs_without_the_encoder(trained, tmp_path, capsys):
    """`emovox text-export --self-contained` copies the model folder with a graph that holds its weights: it runs
    where the encoder's files are gone; retraining into a folder drops its older graph."""
    out = _train(trained, "frozen", "--mode", "frozen", "--epochs", "3")
    assert not (out / "onnx").exists()
    capsys.readouterr()
    assert main(["text-export", "--model", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["parity_max_abs_diff"] < 1e-4
    assert load_text_model(out).backend == "onnx"
    dst = tmp_path / "deploy"
    assert main(["text-export", "--model", str(out), "--output-dir", str(dst), "--self-contained"]) == 0
    capsys.readouterr()
    reference = load_text_model(out, backend="torch").probabilities(["i love it thank you"])[0]
    moved = trained["encoder"].rename(trained["encoder"].with_name("moved"))
    try:
        model = load_text_model(dst)
        assert model.backend == "onnx" and model.manifest["external_weights"] is None
        assert np.abs(model.probabilities(["i love it thank you"])[0] - reference).max() < 1e-4
        with pytest.raises(TextModelError, match="encoder"):
            load_text_model(out, backend="torch")
    finally:
        moved.rename(trained["encoder"])
    _train(trained, "frozen", "--mode", "frozen", "--epochs", "2")  # retrained: the old graph is removed
    assert not (out / "onnx").exists()
