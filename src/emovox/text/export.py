"""Export an emovox text model to ONNX Runtime: ``<model>/onnx/`` (see :mod:`emovox.text.runtime`).

The graph is the PyTorch model itself (encoder, mean pooling over the attention mask, MLP head, sigmoid)
captured with ``torch.onnx.export`` (the TorchScript-based exporter, as the speech exports), with dynamic
batch and token axes. By default its weights become references to the files they come from (the encoder's
``model.safetensors``, the folder's delta and head), so the folder gains a graph of a few hundred kB;
``self_contained=True`` keeps them in the graph (about 90 MB for MiniLM): a folder that runs where the
encoder's package is not installed. Either way the export is checked against PyTorch on sample texts,
and removed when it does not agree.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emovox import atomic

from .. import __version__
from .data import TextModelError
from .encoder import mean_pool
from .model import CONFIG_FILE, DELTA_FILE, HEAD_FILE, LABELS_FILE, META_FILE, METRICS_FILE, PER_CLASS_FILE
from .runtime import (
    GRAPH_FILE,
    RUNTIME_DIR,
    RUNTIME_FILE,
    RUNTIME_FORMAT,
    RUNTIME_FORMAT_VERSION,
    TOKENIZER_FILE,
    built_from,
    load_onnx_text_model,
)
from .torch_model import TorchTextModel, load_text_folder

OPSET = 17
#: Texts the export is checked on (PyTorch and ONNX Runtime scores within ``PARITY_TOL``).
CHECK_TEXTS = ("I can't believe it worked, thank you so much!", "ugh.", "What?! Why would anyone do that 😡",
               "The meeting moved to 3pm; I'm a bit nervous but mostly relieved. " * 12)
PARITY_TOL = 1e-4
_MODEL_FILES = (CONFIG_FILE, LABELS_FILE, HEAD_FILE, DELTA_FILE, META_FILE, METRICS_FILE, PER_CLASS_FILE,
                "MODEL_CARD.md")


class TextGraph(nn.Module):
    """``input_ids``, ``attention_mask`` → sigmoid scores: what :class:`TorchTextModel` computes per batch."""

    def __init__(self, model: TorchTextModel):
        super().__init__()
        self.encoder, self.head = model.encoder.model, model.head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.sigmoid(self.head(mean_pool(hidden, attention_mask)))


def _write_graph(model: TorchTextModel, path: Path) -> None:
    graph = TextGraph(model).eval()
    ids, _, _ = model.encoder.tokenize(["an example text to trace the graph with", "a short one"])
    _, batch = next(model.encoder.batches(ids, 2))  # padded: the trace sees a real mask
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            "scores": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice and tracer chatter
        try:
            torch.onnx.export(graph, (batch["input_ids"], batch["attention_mask"]), str(path), dynamo=False, opset_version=OPSET,
                              input_names=["input_ids", "attention_mask"], output_names=["scores"],
                              dynamic_axes=axes, do_constant_folding=False)
        except Exception as e:  # noqa: BLE001 - the exporter raises many kinds
            raise TextModelError(f"{model.path}: ONNX export failed: {str(e).splitlines()[0][:400]}") from e


def _externalise(path: Path, model: TorchTextModel) -> dict[str, int]:
    """Turn the encoder's and head's initializers into references ``encoder:<name>`` / ``head:<name>``."""
    import onnx
    from safetensors import safe_open

    weights = Path(model.encoder.ref.path) / "model.safetensors"
    if not weights.is_file():
        raise TextModelError(f"{weights}: missing; the ONNX runtime fills the graph from the encoder's safetensors "
                             "(convert with save_pretrained(d, safe_serialization=True)), or export --self-contained")
    with safe_open(str(weights), "np") as f:
        own = set(f.keys())
    proto = onnx.load(str(path))
    moved = {"encoder": 0, "head": 0}
    for t in proto.graph.initializer:
        source, _, name = t.name.partition(".")
        if source not in moved or (source == "encoder" and name not in own):
            continue  # buffers the encoder's file does not hold stay in the graph
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        del t.external_data[:]
        t.external_data.add(key="location", value=f"{source}:{name}")
        moved[source] += 1
    if not moved["encoder"] or not moved["head"]:
        raise TextModelError(f"{path}: the exporter renamed the weights ({moved}); cannot make references")
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return moved


def _tokenizer_file(model: TorchTextModel) -> Path:
    src = Path(model.encoder.ref.path) / TOKENIZER_FILE
    if src.is_file():
        return src
    raise TextModelError(f"{model.encoder.ref.path}: no {TOKENIZER_FILE} (a fast tokenizer's file); the ONNX runtime "
                         "tokenizes with the tokenizers library from it: save the encoder's tokenizer with "
                         "AutoTokenizer.from_pretrained(d).save_pretrained(d)")


def _check(out_root: Path, model: TorchTextModel) -> float:
    """Largest score difference between the export and PyTorch on :data:`CHECK_TEXTS` (raises past the tolerance)."""
    onnx_model = load_onnx_text_model(out_root, threads=1)
    texts = list(CHECK_TEXTS)
    a, n_a, _ = onnx_model.probabilities(texts, batch_size=2)
    b, n_b, _ = model.probabilities(texts, batch_size=2)
    diff = float(np.abs(a - b).max())
    if diff > PARITY_TOL or not np.array_equal(n_a, n_b):
        raise TextModelError(f"{model.path}: the ONNX graph's scores differ from PyTorch's by {diff:.2e} (tokens "
                             f"{n_a.tolist()} vs {n_b.tolist()}); not written")
    return diff


def _manifest(model: TorchTextModel, root: Path, tokenizer: Path, moved: dict[str, int] | None) -> dict:
    return {
        "format": RUNTIME_FORMAT, "format_version": RUNTIME_FORMAT_VERSION, "emovox_version": __version__,
        "torch_version": torch.__version__, "opset": OPSET,
        "files": {"model": GRAPH_FILE, "tokenizer": TOKENIZER_FILE},
        "inputs": {"input_ids": ["batch", "tokens"], "attention_mask": ["batch", "tokens"]},
        "outputs": {"scores": ["batch", len(model.labels)]},
        "computes": "sigmoid(head(mean over the attention mask of the encoder's last hidden states))",
        "external_weights": None if moved is None else {"sources": sorted(moved), "tensors": moved},
        "encoder": {k: model.config["encoder"].get(k) for k in ("name", "package", "package_version", "fingerprint")},
        "built_from": built_from(root, model.config, tokenizer),
    }


def export_text_onnx(model_dir: str | Path, out_dir: str | Path | None = None, *, self_contained: bool = False
                     ) -> Path:
    """Write the ONNX Runtime files of an emovox text model folder; returns the folder they run from.

    ``out_dir=None`` writes ``<model_dir>/onnx`` (replacing an older one). ``out_dir`` given: a copy of the
    model folder there with its own ``onnx/`` (``self_contained=True``: weights inside the graph, so it
    runs without the encoder's package). The export is then checked against PyTorch on a few texts and
    removed again when it does not agree (:class:`TextModelError`).
    """
    src = Path(model_dir)
    model = load_text_folder(src)
    root = src if out_dir is None else Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    if root.resolve() != src.resolve():
        for name in _MODEL_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, root / name)
    manifest: dict = {}

    def fill(work: Path) -> None:
        shutil.copy2(_tokenizer_file(model), work / TOKENIZER_FILE)
        _write_graph(model, work / GRAPH_FILE)
        moved = None if self_contained else _externalise(work / GRAPH_FILE, model)
        manifest.update(_manifest(model, root, work / TOKENIZER_FILE, moved))
        (work / RUNTIME_FILE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        work.chmod(0o755)  # mkdtemp's 0700 would keep other users from reading an installed model

    atomic.write_folder(root / RUNTIME_DIR, fill)
    try:
        manifest["parity_max_abs_diff"] = _check(root, model)
    except BaseException:
        shutil.rmtree(root / RUNTIME_DIR, ignore_errors=True)
        raise
    atomic.write_text(root / RUNTIME_DIR / RUNTIME_FILE, json.dumps(manifest, indent=1) + "\n")
    return root
