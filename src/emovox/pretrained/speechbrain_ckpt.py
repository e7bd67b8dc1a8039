"""A SpeechBrain wav2vec2 emotion checkpoint folder as an emovox speech model backend, without SpeechBrain.

The folder is the layout of SpeechBrain's wav2vec2 emotion recipe (seed 004's ``ai/models/audio/checkpoint``):
``hyperparams.yaml``, ``wav2vec2.ckpt`` (the encoder's state dict), ``model.ckpt`` (the head: a
``ModuleList`` holding the output ``Linear``) and ``label_encoder.txt`` (``'neu' => 0`` lines). SpeechBrain
itself needs torchaudio; the checkpoint files are plain PyTorch state dicts, read here with
``torch.load(weights_only=True)`` (no pickled code runs). The encoder maps onto transformers'
``Wav2Vec2Model`` (its architecture from the ``source`` the YAML names: a local folder with ``config.json``,
relative to the checkpoint folder or absolute, or the Hugging Face cache); the answer is SpeechBrain's:
waveform (layer-normalised when the encoder's feature extractor says ``do_normalize``) → the last hidden
state (layer-normalised with ``output_norm``) → mean over time (``StatisticsPooling``) → the linear head →
softmax. Hyperparameters outside that recipe are refused, naming them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from emovox.modelio import ModelLoadError

HYPERPARAMS_FILE = "hyperparams.yaml"
ENCODER_FILE = "wav2vec2.ckpt"
HEAD_FILE = "model.ckpt"
LABEL_ENCODER_FILE = "label_encoder.txt"
ENCODER_CLASSES = ("speechbrain.lobes.models.huggingface_transformers.wav2vec2.Wav2Vec2",
                   "speechbrain.lobes.models.huggingface_wav2vec.HuggingFaceWav2Vec2")
ENCODER_KEYS = {"source", "output_norm", "freeze", "freeze_feature_extractor", "save_path", "apply_spec_augment",
                "output_all_hiddens"}
POOLING_CLASS = "speechbrain.nnet.pooling.StatisticsPooling"
LINEAR_CLASS = "speechbrain.nnet.linear.Linear"


def is_speechbrain_folder(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / HYPERPARAMS_FILE).is_file()


class _Tagged(dict):
    """A YAML node with a SpeechBrain tag (``!new:``, ``!ref``, ``!name:``, ...): ``tag`` and its value."""


def read_hyperparams(path: Path) -> dict[str, Any]:
    """``hyperparams.yaml`` as plain values, SpeechBrain's tags kept as :class:`_Tagged` nodes (nothing is built)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def tagged(loader, suffix, node):
        if isinstance(node, yaml.MappingNode):
            value: Any = loader.construct_mapping(node, deep=True)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_scalar(node)
        return _Tagged(tag=suffix, value=value)

    Loader.add_multi_constructor("!", tagged)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ModelLoadError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a mapping of hyperparameters")
    return data


def _deref(hp: dict[str, Any], value: Any) -> Any:
    """``!ref <name>`` (and ``<name>`` inside a string) → the top-level value it names."""
    for _ in range(10):
        if isinstance(value, _Tagged) and value["tag"] == "ref":
            text = str(value["value"])
            whole = re.fullmatch(r"<([^<>]+)>", text.strip())
            if whole:
                value = hp.get(whole.group(1))
                continue
            value = re.sub(r"<([^<>]+)>", lambda m: str(_deref(hp, hp.get(m.group(1), m.group(0)))), text)
        break
    return value


def _new(node: Any, cls: tuple[str, ...] | str) -> dict[str, Any] | None:
    """The keyword arguments of a ``!new:CLASS`` node of one of ``cls``, else None."""
    classes = (cls,) if isinstance(cls, str) else cls
    if isinstance(node, _Tagged) and node["tag"] in tuple(f"new:{c}" for c in classes):
        return dict(node["value"] or {})
    return None


def _describe(node: Any) -> str:
    return f"!{node['tag']}" if isinstance(node, _Tagged) else repr(node)


def recipe_settings(folder: Path) -> dict[str, Any]:
    """What the recipe's hyperparameters say (encoder source, output_norm, head size and bias); unsupported ones
    raise :class:`ModelLoadError` naming each."""
    hp = read_hyperparams(folder / HYPERPARAMS_FILE)
    problems: list[str] = []
    enc = _new(_deref(hp, hp.get("wav2vec2")), ENCODER_CLASSES)
    if enc is None:
        problems.append(f"wav2vec2: {_describe(hp.get('wav2vec2'))} (supported: !new:{ENCODER_CLASSES[0]})")
        enc = {}
    for key in sorted(set(enc) - ENCODER_KEYS):
        problems.append(f"wav2vec2.{key}")
    if _deref(hp, enc.get("output_all_hiddens")):
        problems.append("wav2vec2.output_all_hiddens: true")
    pool = _new(_deref(hp, hp.get("avg_pool")), POOLING_CLASS)
    if pool is None:
        problems.append(f"avg_pool: {_describe(hp.get('avg_pool'))} (supported: !new:{POOLING_CLASS})")
    elif _deref(hp, pool.get("return_std", False)) or not _deref(hp, pool.get("return_mean", True)):
        problems.append("avg_pool: only the mean (return_std: false)")
    mlp = _new(_deref(hp, hp.get("output_mlp")), LINEAR_CLASS)
    if mlp is None:
        problems.append(f"output_mlp: {_describe(hp.get('output_mlp'))} (supported: !new:{LINEAR_CLASS})")
        mlp = {}
    model = _deref(hp, hp.get("model"))
    items = model["value"] if isinstance(model, _Tagged) and model["tag"] == "new:torch.nn.ModuleList" else None
    items = items[0] if items and len(items) == 1 and isinstance(items[0], list) else items
    if not items or len(items) != 1 or _new(_deref(hp, items[0]), LINEAR_CLASS) is None:
        problems.append("model: a ModuleList of the output_mlp alone")
    for key in ("mean_var_norm", "compute_features"):
        if key in hp:
            problems.append(f"{key} (the recipe feeds the waveform to wav2vec2 directly)")
    if problems:
        raise ModelLoadError(f"{folder / HYPERPARAMS_FILE}: unsupported SpeechBrain hyperparameters: "
                             + "; ".join(problems) + ". emovox reads the wav2vec2 emotion recipe's layout "
                             "(wav2vec2 → mean pooling → one Linear)")
    return {"source": str(_deref(hp, enc.get("source", hp.get("wav2vec2_hub", "")))),
            "output_norm": bool(_deref(hp, enc.get("output_norm", False))),
            "bias": bool(_deref(hp, mlp.get("bias", True)))}


def read_label_encoder(path: Path) -> list[str]:
    """``label_encoder.txt`` (``'neu' => 0`` per line, then a ``====`` line and ``'starting_index' => 0``)."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing (the labels of the head's outputs)")
    found: dict[int, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("="):
            break
        m = re.fullmatch(r"\s*'(.*)'\s*=>\s*(\d+)\s*", line)
        if m:
            found[int(m.group(2))] = m.group(1)
    if not found or sorted(found) != list(range(len(found))):
        raise ModelLoadError(f"{path}: expected lines 'label' => index for indices 0..n-1")
    return [found[i] for i in range(len(found))]


def _encoder_config(folder: Path, source: str):
    from transformers import Wav2Vec2Config

    for candidate in (Path(source), folder / source):
        if source and (candidate / "config.json").is_file():
            pre = candidate / "preprocessor_config.json"
            normalize = json.loads(pre.read_text()).get("do_normalize", True) if pre.is_file() else True
            return Wav2Vec2Config.from_pretrained(str(candidate), local_files_only=True), bool(normalize)
    try:
        return Wav2Vec2Config.from_pretrained(source, local_files_only=True), True
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{folder / HYPERPARAMS_FILE}: the encoder's architecture comes from its source "
                             f"{source!r}, which is neither a folder with config.json (absolute, or relative to "
                             f"{folder}) nor in the Hugging Face cache; put its config.json there") from e


def _state_dict(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise ModelLoadError(f"{path}: missing (SpeechBrain's wav2vec2 emotion recipe saves {ENCODER_FILE}, "
                             f"{HEAD_FILE} and {LABEL_ENCODER_FILE} beside {HYPERPARAMS_FILE})")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for unreadable or pickled files
        raise ModelLoadError(f"{path}: not a plain state dict (read with weights_only=True): "
                             f"{str(e).splitlines()[0][:200]}") from e
    if not isinstance(sd, dict):
        raise ModelLoadError(f"{path}: expected a state dict")
    return sd


class SpeechBrainBackend:
    """A SpeechBrain wav2vec2 emotion checkpoint behind emovox's backend protocol (temperature 1)."""

    temperature = 1.0
    sample_rate_hz = 16000

    def __init__(self, folder: str | Path):
        import torch
        from transformers import Wav2Vec2Model

        from emovox.pretrained.hf_audio import emovox_names

        folder = Path(folder)
        settings = recipe_settings(folder)
        source_labels = read_label_encoder(folder / LABEL_ENCODER_FILE)
        config, self.normalize_wav = _encoder_config(folder, settings["source"])
        self.output_norm = settings["output_norm"]
        self.encoder = Wav2Vec2Model(config).eval()
        enc = _state_dict(folder / ENCODER_FILE)
        enc = {k[len("model."):] if k.startswith("model.") else k: v for k, v in enc.items()}
        missing, unexpected = self.encoder.load_state_dict(enc, strict=False)
        if missing or unexpected:
            raise ModelLoadError(f"{folder / ENCODER_FILE}: does not match the encoder of {settings['source']!r}: "
                                 f"missing {missing[:4]}, unexpected {unexpected[:4]}")
        head = {k.split(".", 1)[1] if k[:2] == "0." else k: v for k, v in _state_dict(folder / HEAD_FILE).items()}
        weight = head.get("w.weight")
        if weight is None or weight.shape != (len(source_labels), config.hidden_size):
            raise ModelLoadError(f"{folder / HEAD_FILE}: expected the output Linear's w.weight of shape "
                                 f"({len(source_labels)}, {config.hidden_size}) for {len(source_labels)} labels")
        self.head = torch.nn.Linear(config.hidden_size, len(source_labels), bias=settings["bias"]).eval()
        self.head.load_state_dict({k[2:]: v for k, v in head.items() if k.startswith("w.")}, strict=True)
        self._torch = torch
        self.labels = emovox_names(source_labels)
        self.config = {"model": {"name": "speechbrain-wav2vec2", "source": settings["source"]},
                       "labels": self.labels, "source_labels": source_labels, "emovox_version": None,
                       "sample_rate_hz": self.sample_rate_hz, "temperature": 1.0}

    def predict_logits(self, waves: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Logits ``(batch, n_labels)``; each clip runs at its own length (no padding reaches the encoder)."""
        torch = self._torch
        F = torch.nn.functional
        n = np.full(len(waves), waves.shape[1]) if lengths is None else np.asarray(lengths)
        out = np.zeros((len(waves), len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            for i, length in enumerate(n):
                clip = np.asarray(waves[i, : int(length)], dtype=np.float32)
                clip = np.pad(clip, (0, max(0, 400 - clip.size)))  # the encoder's first convolution spans 400
                x = torch.from_numpy(np.ascontiguousarray(clip))[None]
                if self.normalize_wav:
                    x = F.layer_norm(x, x.shape[1:])
                states = self.encoder(x).last_hidden_state
                if self.output_norm:
                    states = F.layer_norm(states, states.shape[-1:])
                out[i] = self.head(states.mean(dim=1))[0].numpy()
        return out
