"""Pretrained speech backbones (wav2vec2, HuBERT, WavLM) and a disk cache of their hidden states.

Loading
    :func:`load_backbone` takes a Hugging Face model id (``facebook/wav2vec2-base``, downloaded by
    transformers when a network is available) or a local checkpoint folder (what
    ``save_pretrained`` writes: ``config.json``, ``model.safetensors`` or ``pytorch_model.bin``,
    and optionally ``preprocessor_config.json``), through transformers' Auto classes
    (``AutoConfig``, ``AutoModel``, ``AutoFeatureExtractor``), so the same code serves every
    family whose base model returns ``hidden_states``: ``wav2vec2``, ``hubert`` and ``wavlm``.
    A hub id is looked up in the local Hugging Face cache first (no network at all); only when it
    is not there, and neither ``HF_HUB_OFFLINE`` nor ``TRANSFORMERS_OFFLINE`` is set, is the hub
    contacted, after a 3 s TCP probe of the endpoint so that a machine without network fails at
    once instead of waiting on retries. Every failure is a :class:`BackboneError` naming the id or
    folder tried and how to provide a local copy.

Input normalisation
    The feature extractor's ``do_normalize`` decides whether each clip is scaled to zero mean and
    unit variance before the backbone (``Wav2Vec2FeatureExtractor``'s formula, ``(x - mean) /
    sqrt(var + 1e-7)`` over the whole clip); it runs inside :class:`Backbone`, so training,
    inference and the exported graph do the same. A folder without ``preprocessor_config.json``
    gets ``do_normalize=True`` (the ``Wav2Vec2FeatureExtractor`` default), and the log and the
    model config say so (``normalize_from``).

Identity
    A backbone is recorded (:class:`BackboneRef`, saved in the model config) by where it came
    from (hub id and revision, absolute folder, or ``backbone/`` bundled inside the model folder)
    plus two hashes: ``config_hash`` over the architecture fields of its config (type, sizes,
    convolution layout, norms; stable across transformers versions) and ``weights_hash`` over the
    bytes of every parameter and buffer (independent of file format, file names and parameter
    names). Loading a model whose backbone has another architecture fails; other weights with the
    same architecture give a warning.

Long clips
    Clips longer than ``chunk_s`` (20 s) run through the backbone in windows of ``chunk_s`` with
    ``overlap_s`` (2 s) of overlap, starting on multiples of the convolution stride so every
    window's frames sit on the whole clip's frame grid; each output frame is taken from the window
    where it lies furthest from an edge (the seam is the middle of the overlap). Memory for the
    backbone is that of one window; the output is ``n_layers x hidden x frames``. Up to
    ``chunk_s`` the result is exactly one pass over the clip; beyond it, frames near a seam see at
    least ``overlap_s / 2`` of context on each side instead of the whole clip.

Hidden-state cache
    :class:`HiddenStateCache` stores each clip's selected hidden states as one float16 ``.npy``
    of shape ``(n_layers, hidden, frames)`` under ``ROOT/ssl-<key>/<k[:2]>/<k>.npy``; ``<key>``
    hashes the backbone identity (config and weights hashes), the layer set, the input
    normalisation, the precision and the chunking; ``<k>`` hashes the clip's absolute path, size
    and modification time. Files are opened memory-mapped, so training reads them from the page
    cache instead of holding them all in memory. Size: ``n_layers x hidden x 2`` bytes per frame,
    at 50 frames/s for the standard 320-sample stride: 13 x 768 x 2 x 50 = 1.0 MB per second of
    audio for a base model with every layer (24 kB/s for the tiny test models); choose fewer
    layers to shrink it. float16 keeps ~3 significant digits (relative rounding ≤ 2^-11 = 0.05 %),
    far below what changes a classifier head's decision.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emovox.errors import BackboneError
from emovox.features import WhisperLogMel
from emovox.pretrained import whisper

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000
#: Model types whose base model (``AutoModel``) is known to work: conv feature encoder + transformer
#: returning ``hidden_states``. Others are refused with this list in the message.
SUPPORTED_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm")
CACHE_VERSION = 1
DEFAULT_CHUNK_S = 20.0
DEFAULT_OVERLAP_S = 2.0
#: Whisper's context (30 s): its encoders take windows up to this long.
WHISPER_CHUNK_S = 30.0
#: What marks a folder written by :meth:`WhisperBackbone.save_to`.
WHISPER_ENCODER_JSON = "whisper_encoder.json"
#: Seconds the TCP probe of the hub endpoint may take before the hub counts as unreachable.
HUB_PROBE_TIMEOUT_S = 3.0
#: Folder name of a backbone bundled inside a model folder (``--bundle-backbone``).
BUNDLE_DIR = "backbone"
#: Config fields that define the architecture (hashed into ``config_hash``; absent ones are skipped).
ARCH_KEYS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm", "feat_proj_layer_norm",
    "do_stable_layer_norm", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "layer_norm_eps",
    "num_buckets", "max_bucket_distance",
)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")
_OFFLINE_VALUES = ("1", "on", "yes", "true")


# ---------------------------------------------------------------------------------------------
# What a backbone is


@dataclass
class BackboneRef:
    """Where a backbone comes from and what it is; saved in the model config (``model.kwargs.backbone``)."""

    source: str  # hub id, packaged Whisper name, absolute folder, or BUNDLE_DIR (relative to the model folder)
    kind: str  # "hub" | "package" | "local" | "bundled"
    revision: str | None = None  # hub only: branch, tag or commit
    config_hash: str = ""
    weights_hash: str = ""
    model_type: str = ""
    num_layers: int = 0
    hidden_size: int = 0
    normalize: bool = True
    normalize_from: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneRef:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def describe(self) -> str:
        where = {"hub": "Hugging Face model id", "package": "installed package", "local": "local folder",
                 "bundled": "bundled in the model folder"}
        rev = f" at revision {self.revision}" if self.revision else ""
        arch = f", {self.model_type} {self.num_layers} layers x {self.hidden_size}" if self.model_type else ""
        return f"{self.source!r} ({where.get(self.kind, self.kind)}{rev}{arch})"


def _looks_like_hub_id(s: str) -> bool:
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", s)) and ".." not in s


def parse_source(name_or_dir: str | os.PathLike, *, revision: str | None = None) -> BackboneRef:
    """A hub id or a folder → an (unloaded) :class:`BackboneRef`; a missing folder raises at once."""
    s = os.fspath(name_or_dir).strip()
    if not s:
        raise BackboneError("no backbone given: pass a Hugging Face model id (e.g. facebook/wav2vec2-base) "
                            "or a local checkpoint folder")
    if s in whisper.PACKAGED:
        return BackboneRef(source=s, kind="package")
    p = Path(s).expanduser()
    if p.is_dir():
        return BackboneRef(source=str(p.resolve()), kind="local")
    if p.exists() or not _looks_like_hub_id(s) or s.startswith(("./", "../", "~", "/")):
        raise BackboneError(f"backbone folder {p} {'is not a folder' if p.exists() else 'does not exist'}. "
                            + _HOW_TO_PROVIDE.format(src="ID"))
    return BackboneRef(source=s, kind="hub", revision=revision)


_HOW_TO_PROVIDE = (
    "A backbone is a Hugging Face model id (downloaded when the hub is reachable) or a folder written by "
    "save_pretrained (config.json, model.safetensors or pytorch_model.bin, optionally preprocessor_config.json). "
    "To get a local copy where there is a network: `huggingface-cli download {src}` (it then loads from the "
    "Hugging Face cache, also with HF_HUB_OFFLINE=1), or `python -c \"from transformers import AutoModel, "
    "AutoFeatureExtractor; AutoModel.from_pretrained('{src}').save_pretrained('DIR'); "
    "AutoFeatureExtractor.from_pretrained('{src}').save_pretrained('DIR')\"` and pass --backbone DIR "
    "(train with --bundle-backbone to keep a copy inside the model folder)."
)


def offline_mode() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` asks for no network access."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _OFFLINE_VALUES:
            return True
    try:
        from huggingface_hub import constants

        return bool(getattr(constants, "HF_HUB_OFFLINE", False))
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return False


def hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    except ImportError:  # pragma: no cover
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """A TCP connection to the hub endpoint (or the HTTPS proxy in use) succeeds within ``timeout_s``."""
    from urllib.parse import urlparse
    from urllib.request import getproxies

    url = urlparse(hub_endpoint())
    proxy = getproxies().get(url.scheme or "https")
    target = urlparse(proxy) if proxy else url
    host = target.hostname
    port = target.port or (443 if (target.scheme or "https") == "https" else 80)
    if not host:
        return False
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Hashes


def architecture(config) -> dict[str, Any]:
    """The architecture fields (:data:`ARCH_KEYS`) of a transformers config (or its dict)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: (list(d[k]) if isinstance(d[k], (list, tuple)) else d[k]) for k in ARCH_KEYS if k in d}


def config_hash(config) -> str:
    """sha256 (16 hex digits) over the architecture fields of a transformers config."""
    return hashlib.sha256(json.dumps(architecture(config), sort_keys=True).encode()).hexdigest()[:16]


def weights_hash(module: nn.Module) -> str:
    """sha256 (16 hex digits) over every parameter's and buffer's bytes, independent of names and order."""
    digests = []
    for t in module.state_dict().values():
        a = t.detach().cpu().contiguous()
        h = hashlib.sha1(f"{a.dtype}{tuple(a.shape)}".encode())
        h.update(a.reshape(-1).view(torch.uint8).numpy() if a.numel() else b"")
        digests.append(h.hexdigest())
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Loading


def _locate(ref: BackboneRef, model_dir: str | os.PathLike | None) -> str:
    if ref.kind == "hub":
        return ref.source
    if ref.kind == "bundled":
        if model_dir is None:
            raise BackboneError(f"the backbone is bundled in the model folder ({BUNDLE_DIR}/), but no model folder "
                                f"was given to find it in")
        p = Path(model_dir) / ref.source
    else:
        p = Path(ref.source)
    if not (p / "config.json").is_file():
        what = "does not exist" if not p.exists() else "has no config.json"
        raise BackboneError(f"backbone folder {p} {what}. " + _HOW_TO_PROVIDE.format(src="ID"))
    if not any((p / w).is_file() for w in _WEIGHT_FILES):
        raise BackboneError(f"backbone folder {p} has no weights ({' or '.join(_WEIGHT_FILES[:2])}). "
                            + _HOW_TO_PROVIDE.format(src="ID"))
    return str(p)


class _HubAccess:
    """Calls a ``from_pretrained`` with the local Hugging Face cache first, then (if allowed) the hub."""

    def __init__(self, ref: BackboneRef, location: str):
        self.ref = ref
        self.location = location
        self.local_only = ref.kind != "hub"
        self.checked_online = False

    def load(self, fn, **kw):
        rev = {"revision": self.ref.revision} if (self.ref.kind == "hub" and self.ref.revision) else {}
        try:
            return fn(self.location, local_files_only=True, **rev, **kw)
        except Exception as e:  # noqa: BLE001 - transformers, hub and safetensors raise many types
            if self.local_only or not isinstance(e, (OSError, ValueError)):
                raise BackboneError(f"cannot load the backbone {self.ref.describe()} from {self.location}: "
                                    f"{_first_line(e)}") from e
            first = e
        if not self.checked_online:
            if offline_mode():
                raise BackboneError(f"backbone {self.ref.describe()} is not in the local Hugging Face cache and "
                                    "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) forbids downloading it. "
                                    + _HOW_TO_PROVIDE.format(src=self.ref.source)) from first
            if not hub_reachable():
                raise BackboneError(f"backbone {self.ref.describe()} is not in the local Hugging Face cache and the "
                                    f"hub ({hub_endpoint()}) cannot be reached (no network?). "
                                    + _HOW_TO_PROVIDE.format(src=self.ref.source)) from first
            self.checked_online = True
        try:
            return fn(self.location, **rev, **kw)
        except Exception as e:  # noqa: BLE001 - as above
            raise BackboneError(f"cannot download the backbone {self.ref.describe()}: {_first_line(e)}. "
                                + _HOW_TO_PROVIDE.format(src=self.ref.source)) from e


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def load_backbone(source: str | os.PathLike | dict[str, Any] | BackboneRef, *, revision: str | None = None,
                  model_dir: str | os.PathLike | None = None, chunk_s: float | None = None,
                  overlap_s: float = DEFAULT_OVERLAP_S) -> Backbone:
    """Load a backbone: a packaged Whisper name, a hub id or folder (str), or a recorded :class:`BackboneRef`
    (dict) to check against.

    A recorded reference must match: another architecture (``config_hash``) raises, other weights
    (``weights_hash``) warn. ``model_dir`` is where a bundled backbone (``backbone/``) lives.
    ``chunk_s``: window length for long clips (None: 20 s, or 30 s for Whisper).
    """
    expected: BackboneRef | None = None
    if isinstance(source, dict):
        source = BackboneRef.from_dict(source)
    if isinstance(source, BackboneRef):
        expected, ref = source, replace(source)
    else:
        ref = parse_source(source, revision=revision)
    files = _whisper_files(ref, model_dir)
    if files is not None:
        encoder, location = _load_whisper_files(ref, *files)
        loaded = _whisper_ref(ref, encoder)
        feature_extractor = model = None
    else:
        location = _locate(ref, model_dir)
        model, feature_extractor, loaded = _load_hf(ref, location)
        encoder = model if isinstance(model, whisper.WhisperEncoder) else None
    loaded = _check_expected(expected, loaded, location)
    if encoder is not None:
        return WhisperBackbone(encoder, loaded, location=location, chunk_s=chunk_s or WHISPER_CHUNK_S,
                               overlap_s=overlap_s)
    return Backbone(model, loaded, location=location, feature_extractor=feature_extractor,
                    chunk_s=chunk_s or DEFAULT_CHUNK_S, overlap_s=overlap_s)


def _check_expected(expected: BackboneRef | None, loaded: BackboneRef, location: str) -> BackboneRef:
    """Compare a loaded backbone with the one a model recorded; the recorded reference keeps how it was
    recorded (and the input normalisation the head was trained with)."""
    if expected is None:
        return loaded
    if expected.config_hash and expected.config_hash != loaded.config_hash:
        raise BackboneError(
            f"the backbone found at {location} is not the one this model was trained with: expected "
            f"{expected.model_type} with {expected.num_layers} layers x {expected.hidden_size} (config hash "
            f"{expected.config_hash}), found {loaded.model_type} with {loaded.num_layers} layers x "
            f"{loaded.hidden_size} (config hash {loaded.config_hash})")
    if expected.weights_hash and expected.weights_hash != loaded.weights_hash:
        warnings.warn(f"backbone {location}: its weights differ from those the model was trained with "
                      f"(weights hash {loaded.weights_hash}, expected {expected.weights_hash}); predictions "
                      "are only right if this is the same checkpoint", RuntimeWarning, stacklevel=3)
    return replace(loaded, source=expected.source, kind=expected.kind, revision=expected.revision,
                   normalize=expected.normalize, normalize_from=expected.normalize_from or loaded.normalize_from)


def _load_hf(ref: BackboneRef, location: str):
    """``(model, feature extractor, loaded ref)`` through transformers' Auto classes; a Whisper checkpoint
    gives emovox's :class:`~emovox.pretrained.whisper.WhisperEncoder` with its encoder weights."""
    access = _HubAccess(ref, location)
    try:
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel
    except ImportError as e:  # pragma: no cover - a dependency of emovox
        raise BackboneError("pretrained backbones need the transformers package: pip install 'emovox[ssl]'") from e

    config = access.load(AutoConfig.from_pretrained)
    model_type = getattr(config, "model_type", "")
    if model_type == "whisper":
        full = access.load(AutoModel.from_pretrained)
        encoder = _wrap_weights_error(lambda: whisper.load_encoder(
            whisper.EncoderDims.from_hf_config(config), full.get_encoder().state_dict(), location), ref)
        return encoder, None, _with_revision(_whisper_ref(ref, encoder), config)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise BackboneError(f"backbone {ref.describe()} is a {model_type or 'unknown'!r} model; supported speech "
                            f"backbones: {', '.join(SUPPORTED_MODEL_TYPES)} (wav2vec2, HuBERT and WavLM families) "
                            f"and Whisper ({', '.join(whisper.PACKAGED)} installed offline, a CTranslate2 or "
                            "Hugging Face Whisper folder, or a hub id)")
    fe, normalize, normalize_from = _input_normalisation(ref, location, access, AutoFeatureExtractor)
    model = access.load(AutoModel.from_pretrained)
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = model.float()  # checkpoints stored in half precision: compute in float32 (bf16 autocast on GPUs)
    model.eval()
    loaded = replace(ref, config_hash=config_hash(config), weights_hash=weights_hash(model), model_type=model_type,
                     num_layers=int(config.num_hidden_layers), hidden_size=int(config.hidden_size),
                     normalize=normalize, normalize_from=normalize_from)
    return model, fe, _with_revision(loaded, config)


def _with_revision(loaded: BackboneRef, config) -> BackboneRef:
    if loaded.kind == "hub" and not loaded.revision:
        commit = getattr(config, "_commit_hash", None)
        loaded.revision = commit if isinstance(commit, str) and commit else None
    return loaded


def _input_normalisation(ref: BackboneRef, location: str, access: _HubAccess, auto_fe):
    """``(feature extractor or None, normalize, where that came from)`` for a wav2vec2-family backbone."""
    has_fe = ref.kind == "hub" or (Path(location) / "preprocessor_config.json").is_file()
    fe = None
    if has_fe:
        try:
            fe = access.load(auto_fe.from_pretrained)
        except BackboneError:
            if ref.kind != "hub":
                raise
    if fe is None:
        log.warning("backbone %s has no preprocessor_config.json: normalising each clip to zero mean and unit "
                    "variance (Wav2Vec2FeatureExtractor's default)", ref.describe())
        return None, True, ("default: no preprocessor_config.json, so zero-mean unit-variance per clip as "
                            "Wav2Vec2FeatureExtractor(do_normalize=True)")
    sr = int(getattr(fe, "sampling_rate", SAMPLE_RATE_HZ) or SAMPLE_RATE_HZ)
    if sr != SAMPLE_RATE_HZ:
        raise BackboneError(f"backbone {ref.describe()} expects {sr} Hz audio; emovox feeds it {SAMPLE_RATE_HZ} Hz")
    normalize = bool(getattr(fe, "do_normalize", True))
    return fe, normalize, f"preprocessor_config.json ({type(fe).__name__}, do_normalize={normalize})"


# ---------------------------------------------------------------------------------------------
# Whisper checkpoints outside transformers: packaged, CTranslate2 folders, emovox encoder folders


def _whisper_files(ref: BackboneRef, model_dir: str | os.PathLike | None) -> tuple[str, list[Path]] | None:
    """``(format, files)`` when ``ref`` is a Whisper checkpoint emovox reads itself, else None."""
    if ref.kind == "package":
        return "ct2", _wrap_weights_error(lambda: whisper.packaged_files(ref.source)[0], ref)
    if ref.kind == "hub" or (ref.kind == "bundled" and model_dir is None):
        return None
    folder = Path(model_dir) / ref.source if ref.kind == "bundled" else Path(ref.source)
    if (folder / WHISPER_ENCODER_JSON).is_file():
        return "emovox", [folder]
    if (folder / "model.bin").is_file():
        return "ct2", [folder / "model.bin"]
    return None


def _load_whisper_files(ref: BackboneRef, fmt: str, files: list[Path]) -> tuple[whisper.WhisperEncoder, str]:
    if fmt == "ct2":
        return _wrap_weights_error(lambda: whisper.encoder_from_ct2(files), ref), str(files[0].parent)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = files[0]
    try:
        info = json.loads((folder / WHISPER_ENCODER_JSON).read_text())
        dims = whisper.EncoderDims(**{k: int(info[k]) for k in whisper.EncoderDims.__dataclass_fields__})
        state = load_file(str(folder / "model.safetensors"))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise BackboneError(f"cannot read the Whisper encoder folder {folder}: {_first_line(e)}") from None
    return _wrap_weights_error(lambda: whisper.load_encoder(dims, state, str(folder)), ref), str(folder)


def _wrap_weights_error(fn, ref: BackboneRef):
    try:
        return fn()
    except whisper.WhisperWeightsError as e:
        raise BackboneError(f"backbone {ref.describe()}: {e}") from e


def _whisper_ref(ref: BackboneRef, encoder: whisper.WhisperEncoder) -> BackboneRef:
    arch = {"model_type": "whisper", **encoder.dims.to_dict()}
    return replace(ref, config_hash=hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16],
                   weights_hash=weights_hash(encoder), model_type="whisper", num_layers=encoder.dims.n_layers,
                   hidden_size=encoder.dims.d_model, normalize=False,
                   normalize_from=f"Whisper log-mel front-end ({encoder.dims.n_mels} bins); no waveform normalisation")


# ---------------------------------------------------------------------------------------------
# The module


def stitch_windows(run, x: torch.Tensor, *, stride: int, chunk: int, overlap: int, n_out: int) -> torch.Tensor:
    """Run ``run`` on windows of ``chunk`` input steps of ``x`` (last axis) overlapping by ``overlap``, starting
    on multiples of ``stride`` (input steps per output frame), and stitch the ``(..., frames)`` outputs:
    each output frame comes from the window where it lies furthest from an edge (seams mid-overlap)."""
    n, hop = x.shape[-1], chunk - overlap
    starts = [0]
    while starts[-1] + chunk < n:
        starts.append(starts[-1] + hop)
    half = (overlap // stride) // 2
    out: torch.Tensor | None = None
    for i, start in enumerate(starts):
        st = run(x[..., start : start + chunk])
        if out is None:
            out = st.new_zeros(*st.shape[:-1], n_out)
        g0 = start // stride
        lo = 0 if i == 0 else half
        hi = st.shape[-1] if i == len(starts) - 1 else hop // stride + half
        out[..., g0 + lo : g0 + hi] = st[..., lo:hi]
    return out


def _conv_geometry(config) -> tuple[list[int], list[int]]:
    return [int(k) for k in config.conv_kernel], [int(s) for s in config.conv_stride]


class Backbone(nn.Module):
    """A loaded backbone: waveforms ``(batch, samples)`` at 16 kHz → selected hidden states.

    :meth:`hidden_states` returns ``(batch, n_layers, hidden, frames)`` in float32 (layer 0 is
    the transformer's input, layer ``i`` the output of transformer layer ``i``). Clips of a
    zero-padded batch with ``lengths`` run one by one at their own length (some backbones
    normalise over time in their first convolution, so padding would change a clip's states).
    ``precision``: ``"auto"`` (bfloat16 autocast on CUDA, float32 elsewhere), ``"bf16"`` or ``"fp32"``.
    ``forward_calls`` counts backbone passes (windows), for tests and benchmarks.
    """

    def __init__(self, model: nn.Module, ref: BackboneRef, *, location: str = "", feature_extractor=None,
                 chunk_s: float = DEFAULT_CHUNK_S, overlap_s: float = DEFAULT_OVERLAP_S, precision: str = "auto"):
        super().__init__()
        self.kernels, self.strides = _conv_geometry(model.config)
        rf, jump = 1, 1
        for k, s in zip(self.kernels, self.strides):
            rf += (k - 1) * jump
            jump *= s
        self._setup(model, ref, location, feature_extractor, stride=math.prod(self.strides), receptive_field=rf,
                    num_layers=int(model.config.num_hidden_layers), hidden_size=int(model.config.hidden_size),
                    chunk_s=chunk_s, overlap_s=overlap_s, precision=precision)

    def _setup(self, model: nn.Module, ref: BackboneRef, location: str, feature_extractor, *, stride: int,
               receptive_field: int, num_layers: int, hidden_size: int, chunk_s: float, overlap_s: float,
               precision: str) -> None:
        self.model, self.ref, self.location, self.feature_extractor = model, ref, location, feature_extractor
        self.stride, self.receptive_field = stride, receptive_field
        self.num_layers, self.hidden_size = num_layers, hidden_size
        self.precision = precision
        self.set_chunking(chunk_s, overlap_s)
        self.forward_calls = 0

    def set_chunking(self, chunk_s: float, overlap_s: float) -> None:
        """Windows for long clips, in samples snapped to the frame stride (checked by :meth:`_check_chunking`)."""
        s = self.stride
        chunk, overlap = (int(round(v * SAMPLE_RATE_HZ / s)) * s for v in (chunk_s, overlap_s))
        self._check_chunking(chunk, overlap, chunk_s, overlap_s)
        self.chunk_s, self.overlap_s = chunk_s, overlap_s
        self.chunk_samples, self.overlap_samples = chunk, overlap

    def _check_chunking(self, chunk: int, overlap: int, chunk_s: float, overlap_s: float) -> None:
        s = self.stride
        need = 2 * math.ceil(self.receptive_field / s)
        if overlap // s < need or chunk - overlap < overlap:
            raise ValueError(f"chunking needs overlap_s >= {need * s / SAMPLE_RATE_HZ:g} s (the backbone's receptive "
                             f"field on both sides of a seam) and chunk_s >= 2 * overlap_s; got chunk_s={chunk_s}, "
                             f"overlap_s={overlap_s}")

    @property
    def frame_rate_hz(self) -> float:
        return SAMPLE_RATE_HZ / self.stride

    @property
    def min_samples(self) -> int:
        """Shortest input that gives one frame; shorter clips are zero-padded to it."""
        return self.receptive_field

    def num_frames(self, num_samples: int) -> int:
        n = max(int(num_samples), self.min_samples)
        for k, s in zip(self.kernels, self.strides):
            n = (n - k) // s + 1
        return n

    def effective_precision(self, device: torch.device | str) -> str:
        dev = torch.device(device)
        if self.precision == "auto":
            return "bf16" if dev.type == "cuda" else "fp32"
        return self.precision

    def cache_key(self, layers: Sequence[int], device: torch.device | str) -> dict[str, Any]:
        """What makes cached hidden states valid (hashed into the cache folder name)."""
        return {"cache_version": CACHE_VERSION, "config_hash": self.ref.config_hash,
                "weights_hash": self.ref.weights_hash, "layers": [int(i) for i in layers],
                "normalize": bool(self.ref.normalize), "precision": self.effective_precision(device),
                "chunk_samples": self.chunk_samples, "overlap_samples": self.overlap_samples,
                "sample_rate_hz": SAMPLE_RATE_HZ}

    # -- computing
    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.ref.normalize:
            return x
        mean = x.mean(dim=-1, keepdim=True)
        var = (x - mean).square().mean(dim=-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-7)

    def run(self, x: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
        """One backbone pass over ``(batch, samples)`` (already normalised) → ``(batch, n_layers, hidden, frames)``."""
        self.forward_calls += 1
        bf16 = self.effective_precision(x.device) == "bf16"
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = self.model(x, output_hidden_states=True)
        hs = out.hidden_states
        return torch.stack([hs[i] for i in layers], dim=1).transpose(2, 3).float()

    def clip_states(self, x: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
        """Equal-length clips ``(batch, samples)`` → states; normalised over each whole clip, chunked when long."""
        x = self.normalize_input(x)
        if x.shape[-1] < self.min_samples:
            x = torch.nn.functional.pad(x, (0, self.min_samples - x.shape[-1]))
        if x.shape[-1] <= self.chunk_samples:
            return self.run(x, layers)
        return self._chunked(x, layers)

    def _chunked(self, x: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
        return stitch_windows(lambda w: self.run(w, layers), x, stride=self.stride, chunk=self.chunk_samples,
                              overlap=self.overlap_samples, n_out=self.num_frames(x.shape[-1]))

    def hidden_states(self, x: torch.Tensor, layers: Sequence[int], lengths: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(batch, samples)`` (+ real lengths of a zero-padded batch) → ``(states, frame lengths or None)``."""
        if lengths is None or bool((lengths == x.shape[-1]).all()):
            return self.clip_states(x, layers), None
        outs = [self.clip_states(x[i : i + 1, : int(n)], layers)[0] for i, n in enumerate(lengths.tolist())]
        frames = torch.tensor([o.shape[-1] for o in outs], device=x.device)
        t = int(frames.max())
        states = x.new_zeros(len(outs), *outs[0].shape[:2], t)
        for i, o in enumerate(outs):
            states[i, ..., : o.shape[-1]] = o
        return states, frames

    def forward(self, x: torch.Tensor, layers: Sequence[int], lengths: torch.Tensor | None = None):
        return self.hidden_states(x, layers, lengths)

    # -- bundling
    def save_to(self, dest: str | os.PathLike) -> Path:
        """Write a self-contained copy (config, weights, preprocessor config) to ``dest``, atomically."""
        return write_folder_atomically(dest, self._fill_copy)

    def _fill_copy(self, tmp: Path) -> None:
        src = Path(self.location)
        if self.ref.kind != "hub" and src.is_dir():
            for name in ("config.json", "preprocessor_config.json", *_WEIGHT_FILES):
                if (src / name).is_file():
                    shutil.copy2(src / name, tmp / name)
            index = next((src / n for n in _WEIGHT_FILES[2:] if (src / n).is_file()), None)
            if index is not None:  # sharded checkpoint: copy the shards too
                for shard in set(json.loads(index.read_text()).get("weight_map", {}).values()):
                    shutil.copy2(src / shard, tmp / shard)
        else:
            self.model.save_pretrained(tmp)
            if self.feature_extractor is not None:
                self.feature_extractor.save_pretrained(tmp)


def write_folder_atomically(dest: str | os.PathLike, fill) -> Path:
    """Build a folder with ``fill(tmp)`` beside ``dest`` and rename it into place (a failure leaves nothing)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        fill(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


class _EncoderHolder(nn.Module):
    """Gives a Whisper encoder the ``model.encoder.layers`` layout the ssl model's freezing expects."""

    def __init__(self, encoder: whisper.WhisperEncoder):
        super().__init__()
        self.encoder = encoder


class WhisperBackbone(Backbone):
    """Whisper's encoder as a backbone: 16 kHz waveforms → Whisper log-mel (:class:`~emovox.features.WhisperLogMel`)
    → every hidden state at 50 frames/s, at the clip's own length (no 30-s padding).

    The log-mel is computed over the whole clip (its floor follows the clip's maximum); clips longer than
    ``chunk_s`` (at most 30 s, Whisper's context) run through the encoder in windows of mel frames,
    stitched as :func:`stitch_windows`. ``num_layers`` transformer layers, ``hidden_size`` = d_model.
    """

    def __init__(self, encoder: whisper.WhisperEncoder, ref: BackboneRef, *, location: str = "",
                 chunk_s: float = WHISPER_CHUNK_S, overlap_s: float = DEFAULT_OVERLAP_S, precision: str = "auto"):
        nn.Module.__init__(self)
        self.frontend = WhisperLogMel(encoder.dims.n_mels)
        self._setup(_EncoderHolder(encoder), ref, location, None, stride=whisper.HOP_LENGTH * whisper.CONV_STRIDE,
                    receptive_field=WhisperLogMel.n_fft, num_layers=encoder.dims.n_layers,
                    hidden_size=encoder.dims.d_model, chunk_s=chunk_s, overlap_s=overlap_s, precision=precision)

    def _check_chunking(self, chunk: int, overlap: int, chunk_s: float, overlap_s: float) -> None:
        if not (0 < overlap and 2 * overlap <= chunk <= WHISPER_CHUNK_S * SAMPLE_RATE_HZ):
            raise ValueError(f"a Whisper backbone needs 0 < overlap_s and 2 * overlap_s <= chunk_s <= "
                             f"{WHISPER_CHUNK_S:g} s (its context); got chunk_s={chunk_s}, overlap_s={overlap_s}")

    def num_frames(self, num_samples: int) -> int:
        mel = max(int(num_samples), self.min_samples) // whisper.HOP_LENGTH
        return -(-mel // whisper.CONV_STRIDE)

    def cache_key(self, layers: Sequence[int], device: torch.device | str) -> dict[str, Any]:
        return {**super().cache_key(layers, device), "frontend": f"whisper-logmel{self.frontend.n_mels}"}

    def run(self, mel: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
        """One encoder pass over log-mel ``(batch, n_mels, frames)`` → ``(batch, n_layers, hidden, frames / 2)``."""
        self.forward_calls += 1
        bf16 = self.effective_precision(mel.device) == "bf16"
        with torch.autocast(device_type=mel.device.type, dtype=torch.bfloat16, enabled=bf16):
            hs = self.model.encoder(mel)
        return torch.stack([hs[i] for i in layers], dim=1).transpose(2, 3).float()

    def clip_states(self, x: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
        if x.shape[-1] < self.min_samples:
            x = torch.nn.functional.pad(x, (0, self.min_samples - x.shape[-1]))
        mel = self.frontend(x)
        hop = whisper.HOP_LENGTH
        if mel.shape[-1] <= self.chunk_samples // hop:
            return self.run(mel, layers)
        return stitch_windows(lambda w: self.run(w, layers), mel, stride=whisper.CONV_STRIDE,
                              chunk=self.chunk_samples // hop, overlap=self.overlap_samples // hop,
                              n_out=self.num_frames(x.shape[-1]))

    def save_to(self, dest: str | os.PathLike) -> Path:
        """Write the encoder as an emovox Whisper folder (``whisper_encoder.json`` + ``model.safetensors``)."""
        from safetensors.torch import save_file

        enc = self.model.encoder

        def fill(tmp: Path) -> None:
            info = {"format": "emovox-whisper-encoder", **enc.dims.to_dict()}
            (tmp / WHISPER_ENCODER_JSON).write_text(json.dumps(info, indent=1))
            save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(tmp / "model.safetensors"))

        return write_folder_atomically(dest, fill)
