"""The ONNX Runtime graphs a model folder carries (``<model>/onnx/``), so inference runs without PyTorch.

``python -m tools.ship_model`` (or :func:`build_runtime`) writes them next to a model's PyTorch weights;
:mod:`emovox.runtime.onnx_backend` runs them (``emovox classify``, ``stream``, ``serve`` and ``load_model()``
pick them when present). What a folder gets depends on the model:

``model.onnx``  (every model) waveforms ``(batch, samples)`` → logits, front-end inside: the
    ``emovox export`` waveform graph for log-mel/MFCC models; for a Whisper model with a linear-probe
    head (the shipped default) Whisper's log-mel, the encoder (dynamic time axis, at most 30 s) and the
    probe, one clip length per run (``lengths_input=True`` builds the padded-batch graph: zero-padded clips +
    their lengths, each clip computed as alone; on 2 CPU cores it is slower, BENCHMARKS.md, "Batched default"). Its encoder weights are not copied into the file: they are
    references (ONNX external data named ``<backbone>:<parameter>``) that
    :mod:`emovox.runtime.onnx_materialise` fills from the pinned Whisper packages the model already needs.
``frontend.onnx`` + ``step.onnx``  (streaming models) the frames' raw features, and one streaming
    step (raw features + state → logits after every frame + state), so ``emovox stream`` steps the
    recurrent model frame by frame exactly as the PyTorch session does.
``runtime.json``  labels, temperature, sample rate, graph files, clip-length limits, state layout,
    the quantisation the runtime applies when it builds its cached copy, whether the graph takes
    ``lengths`` and whether its intra-op threads spin (``intra_op_spinning``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emovox import __version__
from emovox.defaults import RUNTIME_DIR
from emovox.export.graphs import state_names, streaming_state_layout
from emovox.export.onnx_export import DEFAULT_OPSET, write_onnx
from emovox.export.spec import GraphSpec, TensorSpec, build_graph_spec
from emovox.modelio import EmotionPipeline, LoadedModel, load_model_dir, streaming_step
from emovox.runtime.onnx_backend import model_files_digest

RUNTIME_FILE = "runtime.json"
RUNTIME_FORMAT = "emovox-onnx-runtime"
RUNTIME_FORMAT_VERSION = 1
#: Prefix of the encoder's parameters in the Whisper probe graph (their ONNX initializer names).
ENCODER_PREFIX = "whisper_encoder."
QUANTIZATIONS = ("none", "int8")
#: The probe graph's second output: the pooled row before standardisation (what ``--adapt`` re-standardises).
POOLED_OUTPUT = "pooled_features"


class WhisperProbeGraph(nn.Module):
    """Waveforms ``(batch, samples)`` (at least ``min_samples``, at most 30 s) → logits of a Whisper model with a
    linear-probe head (``mean``/``stats``): equal to the PyTorch pipeline on clips of one length."""

    def __init__(self, pipeline: EmotionPipeline):
        super().__init__()
        ssl = pipeline.model
        backbone = getattr(ssl, "backbone", None)
        if getattr(ssl, "head_kind", None) not in ("mean", "stats") or getattr(backbone, "ref", None) is None \
                or backbone.ref.model_type != "whisper":
            raise ValueError("the ONNX runtime graph of a pretrained-encoder model needs a Whisper encoder with a "
                             "linear-probe head (--ssl-head mean or stats); run this model with backend='torch'")
        self.frontend = backbone.frontend
        self.whisper_encoder = backbone.model.encoder
        self.layers = list(ssl.layers)
        self.probe = ssl
        self.min_samples = int(backbone.min_samples)

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, pooled features)``: the pooled row before the probe's standardisation is a second output,
        so the runtime can re-standardise on a user's recordings (``--adapt``) without PyTorch."""
        states = self.whisper_encoder(self.frontend(waveform))
        return self._head(states, None)

    def _head(self, states: list[torch.Tensor], frames: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        stacked = torch.stack([states[i] for i in self.layers], dim=1)  # (batch, layers, frames, d_model)
        pooled = self.probe.pool_states(stacked.float(), frames, time_axis=2)
        return self.probe.classifier((pooled - self.probe.pooled_mean) / self.probe.pooled_std), pooled


class WhisperProbeBatchGraph(WhisperProbeGraph):
    """Zero-padded waveforms ``(batch, samples)`` + each clip's length → ``(logits, pooled features)``, each clip
    exactly as :class:`WhisperProbeGraph` alone: its log-mel reflected at its own end with its own floor, its
    frames past the end zeroed before the encoder's convolutions and masked out of attention, pooling over its
    real frames. Lengths under ``min_samples`` count as ``min_samples`` (a short clip alone is zero-padded)."""

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        from emovox.pretrained.whisper import output_frames

        n = lengths.to(torch.int64).clamp_min(self.min_samples)
        mel_frames = n // self.frontend.hop_length
        states = self.whisper_encoder(self.frontend(waveform, n), mel_frames)
        return self._head(states, output_frames(mel_frames))


class FrameFeaturesGraph(nn.Module):
    """Waveforms ``(batch, samples)`` → raw features ``(batch, n_features, frames)`` of every complete frame
    (``center=False`` framing): a streaming model's front-end, before zero-frame skipping and normalisation.
    ``peak_normalize`` features (``framewise-librosa-mfcc13``: each frame's MFCC on its own, scaled by the
    stream's peak) take that peak as a second input ``(batch, 1)``, as the PyTorch stream passes it."""

    def __init__(self, pipeline: EmotionPipeline):
        super().__init__()
        if pipeline.feature_config.center:
            raise ValueError("no ONNX Runtime graphs for this model: its stream needs frame-local features "
                             "(center=False), and these frames reach into their neighbours; it runs on PyTorch "
                             "(backend='torch')")
        self.frontend = pipeline.frontend
        self.peak_normalize = bool(pipeline.feature_config.peak_normalize)

    def forward(self, waveform: torch.Tensor, peak: torch.Tensor | None = None) -> torch.Tensor:
        return self.frontend(waveform, peak) if self.peak_normalize else self.frontend(waveform)


class FrameStepGraph(nn.Module):
    """Raw features ``(batch, frames, n_features)`` + state → ``(logits after every frame, *new state)``: the
    pipeline's streaming step (:func:`emovox.modelio.streaming_step`)."""

    def __init__(self, pipeline: EmotionPipeline, state_is_tuple: bool):
        super().__init__()
        self.pipeline = pipeline
        self.state_is_tuple = state_is_tuple

    def forward(self, features: torch.Tensor, *state: torch.Tensor):
        hidden = tuple(state) if self.state_is_tuple else state[0]
        logits, new = streaming_step(self.pipeline, features.transpose(1, 2), hidden, every_frame=True)
        new = tuple(new) if isinstance(new, (tuple, list)) else (new,)
        return (logits, *new)


class LengthsWaveformGraph(nn.Module):
    """Zero-padded waveforms ``(batch, samples)`` + each clip's real length → logits: the pipeline with its
    length masking, so clips of different lengths run as one batch and each gets its own answer."""

    def __init__(self, pipeline: EmotionPipeline):
        super().__init__()
        self.pipeline = pipeline

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.pipeline(waveform, lengths)


def _lengths_spec(pipe: EmotionPipeline) -> GraphSpec:
    wave = TensorSpec("waveform", ["batch", "samples"], "zero-padded 16 kHz mono float32 samples")
    lengths = TensorSpec("lengths", ["batch"], "each clip's real length in samples (int64)")
    logits = TensorSpec("emotion_logits", ["batch", len(pipe.labels)], "emotion logits")
    example = (_example(3 * 16000).repeat(3, 1), torch.tensor([48000, 40000, 30000]))  # unequal: the masked path
    return GraphSpec("waveform", False, LengthsWaveformGraph(pipe).eval(), None, [wave, lengths], [logits], example, ())


def _example(samples: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(1, samples, generator=g) * 2 - 1) * 0.3


def _probe_spec(pipe: EmotionPipeline, batched: bool = True) -> tuple[GraphSpec, dict[str, Any]]:
    """The Whisper probe graph: ``batched`` takes zero-padded clips and their lengths (one run per batch of mixed
    lengths), else clips of one length per run (the per-length graph, kept for comparison)."""
    backbone = pipe.model.backbone
    logits = TensorSpec("emotion_logits", ["batch", len(pipe.labels)], "emotion logits")
    pooled = TensorSpec(POOLED_OUTPUT, ["batch", int(pipe.model.pooled_mean.numel())],
                        "the probe's input before its standardisation: each layer's time mean over the clip's frames")
    if batched:
        graph: WhisperProbeGraph = WhisperProbeBatchGraph(pipe).eval()
        inputs = [TensorSpec("waveform", ["batch", "samples"], "zero-padded 16 kHz mono float32 samples, at least "
                             "min_samples and at most max_samples (30 s)"),
                  TensorSpec("lengths", ["batch"], "each clip's real length in samples (int64)")]
        example: tuple = (_example(3 * 16000).repeat(3, 1), torch.tensor([48000, 40000, 30000]))
    else:
        graph = WhisperProbeGraph(pipe).eval()
        inputs = [TensorSpec("waveform", ["batch", "samples"], "16 kHz mono float32 samples, at least min_samples "
                             "and at most max_samples (30 s); clips of one length per batch")]
        example = (_example(3 * 16000),)
    spec = GraphSpec("waveform", False, graph, graph, inputs, [logits, pooled], example, ())
    limits = {"min_samples": int(backbone.min_samples), "max_samples": int(backbone.chunk_samples),
              "lengths_input": batched,
              # the encoder's operators are large: threads that sleep between them lose nothing, and on a shared
              # machine spinning ones take cores from decoding and other work (BENCHMARKS.md, "Batched default")
              "intra_op_spinning": False,
              "long_clips": "windows of max_samples, logits averaged weighted by frames (exact for the linear "
                            "probe's pooling; each window has its own log-mel range and no context across windows)",
              "external_weights": {"backbone": backbone.ref.source, "prefix": ENCODER_PREFIX},
              "probe": {"pooled_output": POOLED_OUTPUT, "mean": "probe.pooled_mean", "std": "probe.pooled_std",
                        "weight": "probe.classifier.1.weight", "bias": "probe.classifier.1.bias"}}
    return spec, limits


def _streaming_specs(pipe: EmotionPipeline) -> tuple[list[tuple[str, GraphSpec]], dict[str, Any]]:
    cfg = pipe.feature_config
    is_tuple, shapes, axes = streaming_state_layout(pipe)
    in_names, out_names = state_names(len(shapes))
    wave = TensorSpec("waveform", ["batch", "samples"], "whole frames of 16 kHz samples")
    raw = TensorSpec("features", ["batch", cfg.n_features, "frames"], "raw features of every frame")
    front_in, front_example = [wave], (_example(cfg.samples_for(20)),)
    if cfg.peak_normalize:
        front_in.append(TensorSpec("peak", ["batch", 1], "the peak |sample| of the stream so far"))
        front_example = (*front_example, torch.full((1, 1), 0.5))
    front = GraphSpec("waveform", True, FrameFeaturesGraph(pipe).eval(), None, front_in, [raw], front_example, ())
    feats = TensorSpec("features", ["batch", "frames", cfg.n_features], "raw features, time first")
    states_in = [TensorSpec(n, [("batch" if i == ax else d) for i, d in enumerate(s)], "state")
                 for n, s, ax in zip(in_names, shapes, axes)]
    states_out = [TensorSpec(n, [("batch" if i == ax else d) for i, d in enumerate(s)], "new state")
                  for n, s, ax in zip(out_names, shapes, axes)]
    logits = TensorSpec("frame_logits", ["batch", "frames", len(pipe.labels)], "logits after every frame")
    zeros = tuple(torch.zeros(*s) for s in shapes)
    g = torch.Generator().manual_seed(0)
    step = GraphSpec("features", True, FrameStepGraph(pipe, is_tuple).eval(), None, [feats, *states_in],
                     [logits, *states_out], (torch.randn(1, 5, cfg.n_features, generator=g) * 10, *zeros), ())
    info = {"frontend": "frontend.onnx", "step": "step.onnx", "state_inputs": in_names, "state_outputs": out_names,
            "state_shapes_at_batch_1": [list(s) for s in shapes], "state_batch_axes": list(axes),
            "hop_length": cfg.hop_length, "frame_span": cfg.frame_span, "window_length": cfg.window_length,
            "window_offset": cfg.window_offset, "skip_zero_frames": bool(cfg.kind == "mfcc" and cfg.skip_zero_frames),
            "peak_normalize": bool(cfg.peak_normalize)}
    return [("frontend.onnx", front), ("step.onnx", step)], info


def runtime_manifest(loaded: LoadedModel, files: dict[str, str], extra: dict[str, Any]) -> dict[str, Any]:
    pipe = loaded.pipeline
    return {"format": RUNTIME_FORMAT, "format_version": RUNTIME_FORMAT_VERSION, "emovox_version": __version__,
            "model": loaded.config["model"]["name"], "labels": list(pipe.labels),
            "temperature": float(pipe.temperature), "sample_rate_hz": pipe.sample_rate_hz,
            "streaming": bool(pipe.streaming), "files": files, "min_samples": 1, "max_samples": None, **extra}


def build_runtime(model_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                  quantization: str = "none", opset: int = DEFAULT_OPSET, lengths_input: bool | None = None) -> Path:
    """Write ``<model_dir>/onnx`` (or ``out_dir``): the graphs and ``runtime.json`` (see the module docstring).

    ``quantization="int8"`` asks the runtime to quantise the encoder's matrix products (dynamic int8) when it
    builds its cached copy; choose it only where the benchmark shows it keeps the answers.
    ``lengths_input``: the graph takes each clip's length, so a zero-padded batch of clips of different lengths
    runs once (each clip as alone); without it each length runs on its own. ``None`` (the default): with it for
    frame models (the fast model: faster), without it for the Whisper probe, whose padded batches cost more CPU
    time per clip than one clip length per run (BENCHMARKS.md, "Batched default"); the crnn is shipped without it
    (faster for its 2-D convolutions on ONNX Runtime's CPU kernels: "Inference without PyTorch").
    """
    from emovox.atomic import move_into_place

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    model_dir = Path(model_dir)
    out = Path(out_dir) if out_dir is not None else model_dir / RUNTIME_DIR
    loaded = load_model_dir(model_dir, stft_mode="conv")
    pipe = loaded.pipeline.eval()
    meta = {"labels": list(pipe.labels), "temperature": float(pipe.temperature),
            "sample_rate_hz": pipe.sample_rate_hz, "emovox_version": __version__}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        manifest = _fill(tmp, loaded, meta, quantization=quantization, opset=opset, lengths_input=lengths_input)
        manifest["built_from"] = model_files_digest(model_dir)  # loading checks the folder still holds these
        (tmp / RUNTIME_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
        move_into_place(tmp, out)
    except BaseException:  # a model the runtime cannot take, or an interrupt: leave nothing half-written
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _fill(tmp: Path, loaded: LoadedModel, meta: dict[str, Any], *, quantization: str, opset: int,
          lengths_input: bool | None) -> dict[str, Any]:
    """Write the graphs into ``tmp``; returns the runtime manifest."""
    pipe = loaded.pipeline
    extra: dict[str, Any] = {"quantization": quantization}
    if pipe.feature_config.kind == "waveform":
        spec, limits = _probe_spec(pipe, batched=bool(lengths_input))
        _write(spec, tmp / "model.onnx", opset, {**meta, "input_kind": "waveform"}, fold=False)
        _externalise(tmp / "model.onnx", limits["external_weights"])
        extra.update(limits)
    else:
        batched = lengths_input is not False and not pipe.streaming and pipe.feature_config.num_frames is None
        spec = _lengths_spec(pipe) if batched else build_graph_spec(pipe, "waveform")
        extra["lengths_input"] = batched
        extra["min_samples"] = int(pipe.feature_config.samples_for(1))  # PyTorch zero-pads a shorter clip to one frame
        _write(spec, tmp / "model.onnx", opset, {**meta, "input_kind": "waveform"})
    if pipe.streaming and pipe.feature_config.kind != "waveform":
        specs, info = _streaming_specs(pipe)
        for name, s in specs:
            _write(s, tmp / name, opset, {**meta, "input_kind": s.kind})
        extra["stream"] = info
    return runtime_manifest(loaded, {"model": "model.onnx"}, extra)


def _write(spec: GraphSpec, path: Path, opset: int, meta: dict[str, Any], *, fold: bool = True) -> None:
    with torch.inference_mode(False), torch.no_grad():
        write_onnx(spec, path, opset=opset, metadata={**meta, "inputs": [t.name for t in spec.inputs],
                                                       "outputs": [t.name for t in spec.outputs]},
                   constant_folding=fold)


def _externalise(path: Path, info: dict[str, Any]) -> None:
    """Turn the encoder's initializers into references (external data ``<backbone>:<name>``), leaving the rest."""
    import onnx

    model = onnx.load(str(path))
    moved = 0
    for t in model.graph.initializer:
        if t.name.startswith(info["prefix"]):
            t.ClearField("raw_data")
            del t.float_data[:]
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            t.external_data.add(key="location", value=f"{info['backbone']}:{t.name[len(info['prefix']):]}")
            moved += 1
    if not moved:
        raise RuntimeError(f"{path}: no initializer named {info['prefix']}*: the encoder's weights were renamed "
                           "by the exporter")
    onnx.save_model(model, str(path), save_as_external_data=False)
