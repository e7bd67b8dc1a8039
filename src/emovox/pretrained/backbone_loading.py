"""Loading a backbone (:func:`load_backbone`): a hub id from the local cache or the hub (after a short TCP probe), a local folder, or a Whisper checkpoint; every failure names what was tried and how to provide a local copy."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from emovox import errors
from emovox.errors import BackboneError
from emovox.pretrained import whisper, whisper_weights
from emovox.pretrained.backbone_ref import (
    BUNDLE_DIR,
    HOW_TO_PROVIDE,
    WEIGHT_FILES,
    BackboneRef,
    config_hash,
    parse_source,
    weights_hash,
)
from emovox.pretrained.backbones import (
    DEFAULT_CHUNK_S,
    DEFAULT_OVERLAP_S,
    SAMPLE_RATE_HZ,
    WHISPER_CHUNK_S,
    WHISPER_ENCODER_JSON,
    Backbone,
    WhisperBackbone,
)

log = logging.getLogger(__name__)
#: Model types whose base model (``AutoModel``) is known to work: conv feature encoder + transformer
#: returning ``hidden_states``. Others are refused with this list in the message.
SUPPORTED_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm")
#: Seconds the TCP probe of the hub endpoint may take before the hub counts as unreachable.
HUB_PROBE_TIMEOUT_S = 3.0
_OFFLINE_VALUES = ("1", "on", "yes", "true")


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
        raise BackboneError(f"backbone folder {p} {what}. " + HOW_TO_PROVIDE.format(src="ID"))
    if not any((p / w).is_file() for w in WEIGHT_FILES):
        raise BackboneError(f"backbone folder {p} has no weights ({' or '.join(WEIGHT_FILES[:2])}). "
                            + HOW_TO_PROVIDE.format(src="ID"))
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
                                    + HOW_TO_PROVIDE.format(src=self.ref.source)) from first
            if not hub_reachable():
                raise BackboneError(f"backbone {self.ref.describe()} is not in the local Hugging Face cache and the "
                                    f"hub ({hub_endpoint()}) cannot be reached (no network?). "
                                    + HOW_TO_PROVIDE.format(src=self.ref.source)) from first
            self.checked_online = True
        try:
            return fn(self.location, **rev, **kw)
        except Exception as e:  # noqa: BLE001 - as above
            raise BackboneError(f"cannot download the backbone {self.ref.describe()}: {_first_line(e)}. "
                                + HOW_TO_PROVIDE.format(src=self.ref.source)) from e


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
            whisper_weights.EncoderDims.from_hf_config(config), full.get_encoder().state_dict(), location), ref)
        return encoder, None, _with_revision(_whisper_ref(ref, encoder), config)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise BackboneError(f"backbone {ref.describe()} is a {model_type or 'unknown'!r} model; supported speech "
                            f"backbones: {', '.join(SUPPORTED_MODEL_TYPES)} (wav2vec2, HuBERT and WavLM families) "
                            f"and Whisper ({', '.join(whisper_weights.PACKAGED)} installed offline, a CTranslate2 or "
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



def _whisper_files(ref: BackboneRef, model_dir: str | os.PathLike | None) -> tuple[str, list[Path]] | None:
    """``(format, files)`` when ``ref`` is a Whisper checkpoint emovox reads itself, else None."""
    if ref.kind == "package":
        return "ct2", _wrap_weights_error(lambda: whisper_weights.packaged_files(ref.source)[0], ref)
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
        dims = whisper_weights.EncoderDims(**{k: int(info[k]) for k in whisper_weights.EncoderDims.__dataclass_fields__})
        state = load_file(str(folder / "model.safetensors"))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise BackboneError(f"cannot read the Whisper encoder folder {folder}: {_first_line(e)}") from None
    return _wrap_weights_error(lambda: whisper.load_encoder(dims, state, str(folder)), ref), str(folder)


def _wrap_weights_error(fn, ref: BackboneRef):
    try:
        return fn()
    except errors.WhisperWeightsError as e:
        raise BackboneError(f"backbone {ref.describe()}: {e}") from e


def _whisper_ref(ref: BackboneRef, encoder: whisper.WhisperEncoder) -> BackboneRef:
    arch = {"model_type": "whisper", **encoder.dims.to_dict()}
    return replace(ref, config_hash=hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16],
                   weights_hash=weights_hash(encoder), model_type="whisper", num_layers=encoder.dims.n_layers,
                   hidden_size=encoder.dims.d_model, normalize=False,
                   normalize_from=f"Whisper log-mel front-end ({encoder.dims.n_mels} bins); no waveform normalisation")
