"""What one exported graph is: its module, tensors (names, shapes, descriptions) and file names.

A :class:`GraphSpec` is built once per input kind (``waveform`` or ``features``) from a loaded
pipeline, then handed to each format's writer (ONNX, Core ML, TorchScript), so names, shapes and
descriptions are the same in every format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from emovox.export.graphs import (
    FeatureGraph,
    StreamingStepGraph,
    WaveformGraph,
    state_names,
    streaming_state_layout,
)
from emovox.modelio import EmotionPipeline

INPUT_KINDS = ("waveform", "features")
#: Core ML's waveform input accepts this many seconds at most (a flexible shape needs a bound).
DEFAULT_COREML_MAX_SECONDS = 60.0
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class TensorSpec:
    """One input or output. ``shape`` entries: an int (fixed) or a name (dynamic axis)."""

    name: str
    shape: list[int | str]
    description: str
    #: Core ML shape: ints, with ("range", lower, upper, default) for a flexible axis.
    coreml_shape: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": "float32", "description": self.description}


@dataclass
class GraphSpec:
    kind: str  # "waveform" | "features"
    streaming: bool
    module: nn.Module  # any batch size (ONNX, TorchScript)
    coreml_module: nn.Module  # batch of one (Core ML)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    example: tuple[torch.Tensor, ...]
    coreml_example: tuple[torch.Tensor, ...]
    #: streaming: state shapes at batch 1 and the batch axis of each
    state_shapes: list[tuple[int, ...]] = field(default_factory=list)
    state_batch_axes: list[int] = field(default_factory=list)

    @property
    def stem(self) -> str:
        """File stem for ONNX and TorchScript files."""
        return f"emotion_{self.kind}"

    @property
    def coreml_stem(self) -> str:
        """File stem for Core ML files (Xcode makes it the Swift class name); the Core ML mobile CNN's name for features."""
        return "EmotionClassifier" if self.kind == "features" else "EmotionClassifierWaveform"

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
                for t in (*self.inputs, *self.outputs)}

    def io_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


def _rand(*shape: int, scale: float = 0.5, offset: float = 0.0) -> torch.Tensor:
    """Deterministic example input (a private generator: the global RNG is left alone)."""
    g = torch.Generator().manual_seed(0)
    return (torch.rand(*shape, generator=g) * 2 - 1) * scale + offset


def check_name(name: str, what: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise ValueError(f"{what} {name!r} is not a valid tensor name: use letters, digits and '_', "
                         f"not starting with a digit (Core ML makes it a Swift property)")
    return name


def build_graph_spec(pipeline: EmotionPipeline, kind: str, *, input_name: str | None = None,
                     output_name: str | None = None,
                     coreml_max_seconds: float = DEFAULT_COREML_MAX_SECONDS) -> GraphSpec:
    """The graph of ``kind`` for a pipeline loaded with ``stft_mode="conv"``, eval mode."""
    if kind not in INPUT_KINDS:
        raise ValueError(f"input kind must be one of {', '.join(INPUT_KINDS)}; got {kind!r}")
    io = pipeline.config.get("io") or {}
    cfg = pipeline.feature_config
    n_labels = len(pipeline.labels)
    nf = cfg.n_features
    out_name = check_name(output_name or io.get("output") or "emotion_logits", "output name")
    label_list = ", ".join(pipeline.labels)
    logits = TensorSpec(out_name, ["batch", n_labels],
                        f"emotion logits for ({label_list}); probabilities = softmax(logits / temperature)",
                        [1, n_labels])
    feat_what = (f"{cfg.n_mfcc} MFCC" if cfg.kind == "mfcc"
                 else f"{cfg.n_mels}-bin log-mel in dB, 10*log10(max(mel power, {cfg.log_floor:g}))")

    if kind == "waveform":
        name = check_name(input_name or io.get("waveform_input") or "waveform", "input name")
        sr = cfg.sample_rate_hz
        lower = max(cfg.hop_length, cfg.frame_span if not cfg.center else 1)
        upper = int(coreml_max_seconds * sr)
        default = cfg.samples_for(cfg.num_frames) if cfg.num_frames else 3 * sr
        fixed = (f"; cropped or padded inside to {cfg.num_frames} frames = {cfg.samples_for(cfg.num_frames)} "
                 f"samples ({cfg.samples_for(cfg.num_frames) / sr:g} s), centred" if cfg.num_frames else "")
        wave = TensorSpec(name, ["batch", "samples"],
                          f"{sr} Hz mono float32 samples in [-1, 1], shape (batch, samples), any length"
                          f"{fixed}; features and normalisation run inside",
                          [1, ("range", lower, upper, min(default, upper))])
        module = WaveformGraph(pipeline).eval()
        return GraphSpec(kind, pipeline.streaming, module, WaveformGraph(pipeline, batch_one=True).eval(),
                         [wave], [logits], (_rand(2, default),), (_rand(1, default),))

    if cfg.kind == "waveform":
        raise ValueError("this model takes raw samples (its pretrained backbone is the front-end), so it has no "
                         "separate feature input: export the waveform input")
    name = check_name(input_name or io.get("features_input") or ("mfcc" if cfg.kind == "mfcc" else "log_mel_spectrogram"),
                      "input name")
    if not pipeline.streaming:
        frames: int | str = cfg.num_frames or "frames"
        cm_frames = cfg.num_frames or ("range", 1, int(coreml_max_seconds * cfg.frame_rate_hz), 300)
        feats = TensorSpec(name, ["batch", nf, frames],
                           f"{feat_what}, shape (batch, {nf}, {frames}), NOT normalised (the model normalises "
                           f"inside); compute exactly as preprocessing.json",
                           [1, nf, cm_frames])
        t = cfg.num_frames or 120
        return GraphSpec(kind, False, FeatureGraph(pipeline).eval(), FeatureGraph(pipeline).eval(), [feats], [logits],
                         (_rand(2, nf, t, scale=20, offset=-40),), (_rand(1, nf, t, scale=20, offset=-40),))

    is_tuple, shapes, axes = streaming_state_layout(pipeline)
    in_names, out_names = state_names(len(shapes))
    feats = TensorSpec(name, ["batch", "frames", nf],
                       f"{feat_what} frames, shape (batch, frames, {nf}): one frame is (1, 1, {nf}); NOT normalised "
                       f"(normalised inside); compute exactly as preprocessing.json",
                       [1, 1, nf])
    state_in, state_out = [], []
    for n_in, n_out, shape, ax in zip(in_names, out_names, shapes, axes):
        dyn = [("batch" if i == ax else d) for i, d in enumerate(shape)]
        state_in.append(TensorSpec(n_in, dyn, f"recurrent state {tuple(shape)} at batch 1 (batch axis {ax}); zeros "
                                   f"to start, then the previous step's {n_out}", list(shape)))
        state_out.append(TensorSpec(n_out, dyn, f"recurrent state after this step: feed it back as {n_in}",
                                    list(shape)))
    step = StreamingStepGraph(pipeline, is_tuple).eval()
    ex_state = tuple(torch.zeros(*[2 if i == ax else d for i, d in enumerate(s)]) for s, ax in zip(shapes, axes))
    cm_state = tuple(torch.zeros(*s) for s in shapes)
    return GraphSpec(kind, True, step, step, [feats, *state_in], [logits, *state_out],
                     (_rand(2, 5, nf, scale=20), *ex_state), (_rand(1, 1, nf, scale=20), *cm_state),
                     state_shapes=[tuple(s) for s in shapes], state_batch_axes=list(axes))
