"""An emovox text model on ONNX Runtime: no PyTorch, no transformers.

A model folder's ``onnx/`` (written by :func:`emovox.text.export.export_text_onnx`, ``emovox text-export``
or ``emovox text-train --onnx``) holds:

``model.onnx``  ``input_ids``, ``attention_mask`` ``(batch, tokens)`` int64 → ``scores`` ``(batch, n_labels)``:
    the encoder, mean pooling over the mask and the MLP head with its sigmoid, dynamic batch and length.
    In the shipped model its weights are references (ONNX external data named ``encoder:<parameter>`` and
    ``head:<tensor>``), filled once from the encoder's own ``model.safetensors`` (plus the fine-tuning
    delta, ``encoder_delta.safetensors``) and the folder's ``head.safetensors``, then cached
    (``$EMOVOX_CACHE_DIR/onnx``, default ``~/.cache/emovox/onnx``: a graph and its ``.data``, about 90 MB for
    MiniLM). A self-contained export (``--self-contained``) holds them itself.
``tokenizer.json``  the encoder's tokenizer, read with the ``tokenizers`` library.
``runtime.json``  what the graph was built from: SHA-256 of the head and delta weights, of the tokenizer and of
    the parts of ``inference_config.json`` that shape the graph (encoder fingerprint, head, delta, labels).
    They are checked at every load: a graph built from other weights is refused, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emovox import atomic

from ..defaults import cache_env
from .data import TextModelError
from .encoder_ref import encoder_path, file_stamp, fingerprint, weight_files
from .model import CONFIG_FILE, DELTA_FILE, HEAD_FILE, TextModel, read_model_config
from .tokenizer import TextTokenizer

RUNTIME_DIR = "onnx"
RUNTIME_FILE = "runtime.json"
GRAPH_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
RUNTIME_FORMAT = "emovox-text-onnx"
RUNTIME_FORMAT_VERSION = 1
#: External-data prefixes of a graph whose weights are references (see the module docstring).
SOURCES = ("encoder", "head")
_REQUIRED = ("format", "format_version", "files", "built_from", "inputs", "outputs")


def runtime_dir(root: Path) -> Path:
    return Path(root) / RUNTIME_DIR


def has_runtime(root: Path) -> bool:
    """Whether a model folder carries ONNX Runtime files (``onnx/runtime.json``)."""
    return (runtime_dir(root) / RUNTIME_FILE).is_file()


def sha256_file(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes; a :class:`TextModelError` naming it when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise TextModelError(f"{path}: cannot read it ({e.strerror or e}); the model folder names it") from None
    return "sha256:" + h.hexdigest()


def graph_config(cfg: dict) -> dict:
    """The parts of ``inference_config.json`` the graph depends on (thresholds, ``top_k``, notes do not)."""
    enc = cfg["encoder"]
    return {"encoder": {"name": enc.get("name"), "fingerprint": enc.get("fingerprint")}, "head": cfg["head"],
            "encoder_delta": cfg.get("encoder_delta"), "labels": list(cfg["labels"])}


def built_from(root: Path, cfg: dict, tokenizer: Path) -> dict[str, str]:
    """The record a graph carries of what it was built from (compared at load)."""
    blob = json.dumps(graph_config(cfg), sort_keys=True, separators=(",", ":")).encode()
    record = {CONFIG_FILE: "sha256:" + hashlib.sha256(blob).hexdigest(), TOKENIZER_FILE: sha256_file(tokenizer)}
    record[HEAD_FILE] = sha256_file(root / cfg["head"].get("file", HEAD_FILE))
    if cfg.get("encoder_delta"):
        record[DELTA_FILE] = sha256_file(root / cfg["encoder_delta"].get("file", DELTA_FILE))
    return record


def read_runtime(folder: Path) -> dict[str, Any]:
    """``onnx/runtime.json``, checked: a :class:`TextModelError` naming the file and the problem."""
    path = folder / RUNTIME_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TextModelError(f"{path}: missing; export the model's ONNX Runtime graph with "
                             f"`emovox text-export --model {folder.parent}`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TextModelError(f"{path}: unreadable runtime manifest ({e})") from e
    if not isinstance(data, dict) or data.get("format") != RUNTIME_FORMAT:
        raise TextModelError(f"{path}: not an emovox text runtime manifest (format {RUNTIME_FORMAT!r} expected)")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise TextModelError(f"{path}: missing key(s) {', '.join(missing)}")
    version = data["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise TextModelError(f"{path}: format_version must be a whole number >= 1, got {version!r}")
    if version > RUNTIME_FORMAT_VERSION:
        raise TextModelError(f"{path}: format_version {version} is newer than this emovox reads "
                             f"({RUNTIME_FORMAT_VERSION}); upgrade emovox")
    for key in ("files", "built_from"):
        if not isinstance(data[key], dict) or not all(isinstance(v, str) for v in data[key].values()):
            raise TextModelError(f"{path}: {key!r} must be an object of strings")
    for key in ("model", "tokenizer"):
        name = data["files"].get(key)
        if not name or Path(name).name != name:
            raise TextModelError(f"{path}: files.{key} must name a file in {folder} (got {name!r})")
    ext = data.get("external_weights")
    sources = ext.get("sources") if isinstance(ext, dict) else None
    if ext is not None and (not isinstance(sources, list) or not all(isinstance(x, str) for x in sources)
                            or not set(sources) <= set(SOURCES)):
        raise TextModelError(f"{path}: external_weights must be null or an object whose 'sources' lists some of "
                             f"{', '.join(SOURCES)}")
    return data


def check_fresh(root: Path, cfg: dict, manifest: dict) -> None:
    """Refuse a graph built from other weights, tokenizer or graph-shaping config than the folder's now."""
    folder = runtime_dir(root)
    now = built_from(root, cfg, folder / manifest["files"]["tokenizer"])
    then = manifest["built_from"]
    stale = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
    if stale:
        raise TextModelError(
            f"{folder / RUNTIME_FILE}: the ONNX graph was built from other {', '.join(stale)} than {root} holds now; "
            f"it is not used. Rebuild it with `emovox text-export --model {root}` (needs emovox[text]), or run "
            "on PyTorch (backend='torch', --backend torch)"
        )


# -- filling a graph whose weights are references ----------------------------------------------------------


def cache_root() -> Path:
    return (cache_env() or Path("~/.cache/emovox").expanduser()) / "onnx"


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise TextModelError(f"{path}: cannot read safetensors weights ({e})") from e


def _encoder_arrays(root: Path, cfg: dict) -> dict[str, np.ndarray]:
    """The encoder's weights as the model runs them: its own, plus the fine-tuning delta where there is one."""
    ecfg = cfg["encoder"]
    path = encoder_path(ecfg.get("path") or ecfg["name"])
    if ecfg.get("fingerprint") and fingerprint(path) != ecfg["fingerprint"]:
        raise TextModelError(f"{path}: encoder weights differ from those the model in {root} was trained with "
                             f"(fingerprint {ecfg['fingerprint']}); install the same encoder")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise TextModelError(f"{path}: no model.safetensors; the ONNX runtime reads the encoder's weights "
                             "from safetensors only (convert with save_pretrained(d, safe_serialization=True))")
    arrays = _read_weights(weights)
    if cfg.get("encoder_delta"):
        delta_path = root / cfg["encoder_delta"].get("file", DELTA_FILE)
        for name, d in _read_weights(delta_path).items():
            if name not in arrays or arrays[name].shape != d.shape:
                raise TextModelError(f"{delta_path}: tensor {name!r} does not match encoder {ecfg['name']!r}")
            arrays[name] = arrays[name] + d.astype(arrays[name].dtype)  # as PyTorch's p.add_(d.to(p.dtype))
    return arrays


def _fill(graph: Path, root: Path, cfg: dict, out: Path) -> None:
    """Replace every ``encoder:<name>``/``head:<name>`` reference with the weights (shapes and types checked)."""
    from ..runtime.onnx_materialise import fill_external_weights

    sources = {"encoder": _encoder_arrays(root, cfg),
               "head": _read_weights(root / cfg["head"].get("file", HEAD_FILE))}
    fill_external_weights(graph, out, lambda source, name: sources.get(source, {}).get(name), error=TextModelError,
                          missing="which the model's weights do not hold; export the graph again (emovox text-export)")


def _optimise(src: Path, dst: Path) -> None:
    """ONNX Runtime's optimisations up to its extended level (constant folding, attention and layer-norm
    fusions), saved with the weights in ``<dst>.data`` beside it: a later load memory-maps them and skips the
    optimiser (measured: a session in about 0.1 s instead of 0.3 s). The result is this machine's and this
    onnxruntime's (the cache key holds its version)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dst)
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", dst.name + ".data")
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])


def _cache_key(graph: Path, root: Path, cfg: dict, manifest: dict) -> str:
    import onnxruntime

    ecfg = cfg["encoder"]
    encoder = encoder_path(ecfg.get("path") or ecfg["name"])
    h = hashlib.sha256(graph.read_bytes())
    h.update(json.dumps(manifest["built_from"], sort_keys=True).encode())
    h.update(repr(file_stamp(weight_files(encoder))).encode())
    h.update(f"onnxruntime {onnxruntime.__version__}".encode())
    return h.hexdigest()[:20]


def materialise(root: Path, cfg: dict, manifest: dict) -> Path:
    """A loadable ONNX file for the folder's graph: the graph itself when self-contained, else the cached filled
    copy (built now when missing: seconds, once)."""
    graph = runtime_dir(root) / manifest["files"]["model"]
    if not graph.is_file():
        raise TextModelError(f"{graph}: missing (named in {RUNTIME_FILE})")
    if not manifest.get("external_weights"):
        return graph
    target = cache_root() / f"text-{Path(root).name}-{_cache_key(graph, root, cfg, manifest)}.onnx"
    if target.is_file() and target.with_name(target.name + ".data").is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work, persistent = Path(tempfile.mkdtemp(dir=target.parent, prefix=".build-")), True
    except OSError:  # no writable cache: build for this process only
        work, persistent = Path(tempfile.mkdtemp(prefix="emovox-text-onnx-")), False
    try:
        _fill(graph, root, cfg, work / "filled.onnx")
        _optimise(work / "filled.onnx", work / target.name)
        if not persistent:
            return work / target.name
        atomic.move_into_place(work / (target.name + ".data"), target.with_name(target.name + ".data"))
        atomic.move_into_place(work / target.name, target)  # last: the graph's presence says both are complete
        return target
    finally:
        if persistent:
            shutil.rmtree(work, ignore_errors=True)


# -- the model -----------------------------------------------------------------------------------------------


class OnnxTextModel(TextModel):
    """Tokenizer (``tokenizers``) + graph (ONNX Runtime). Build with :func:`emovox.text.load_text_model`."""

    backend = "onnx"

    def __init__(self, path: Path, config: dict, session, tokenizer: TextTokenizer, manifest: dict):
        super().__init__(path, config)
        self.session, self.tokenizer, self.manifest = session, tokenizer, manifest
        n_out = session.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.labels):
            raise TextModelError(f"{path}: the ONNX graph gives {n_out} scores for {len(self.labels)} labels")

    def probabilities(self, texts: Sequence[str], *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sigmoid scores ``(n, n_labels)`` (float64), token counts and truncation flags."""
        ids, n_tokens, truncated = self.tokenizer.tokenize(list(texts))
        probs = np.zeros((len(ids), len(self.labels)), dtype=np.float64)
        for idx, input_ids, mask in self.tokenizer.batches(ids, batch_size):
            probs[idx] = self.session.run(["scores"], {"input_ids": input_ids, "attention_mask": mask})[0]
        return probs, n_tokens, truncated


def default_threads() -> int:
    """The cores this process may use (its CPU affinity: a container's limit, not the host's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if path.name != GRAPH_FILE:  # a cached copy: already optimised (see _optimise)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = int(threads or default_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise TextModelError(f"{path}: cannot load the ONNX graph: {str(e).splitlines()[0][:300]}") from e


def load_onnx_text_model(root: str | os.PathLike, *, threads: int | None = None) -> OnnxTextModel:
    """Load an emovox text model folder on ONNX Runtime (its ``onnx/`` files, checked against its weights)."""
    root = Path(root)
    cfg = read_model_config(root)
    manifest = read_runtime(runtime_dir(root))
    check_fresh(root, cfg, manifest)
    tokenizer = TextTokenizer(runtime_dir(root) / manifest["files"]["tokenizer"], int(cfg["max_length"]))
    built = materialise(root, cfg, manifest)
    try:
        sess = _session(built, threads)
    except TextModelError:
        if built.parent != cache_root():
            raise
        built.with_name(built.name + ".data").unlink(missing_ok=True)
        built.unlink(missing_ok=True)  # a damaged cached copy (a full disk, an edit): build it again, once
        sess = _session(materialise(root, cfg, manifest), threads)
    return OnnxTextModel(root, cfg, sess, tokenizer, manifest)
