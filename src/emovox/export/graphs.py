"""The graphs that get exported: trace-safe wrappers around a loaded :class:`EmotionPipeline`.

Three graphs, built from the pipeline's own modules (the front-end with ``stft_mode="conv"``, the
normaliser and the model), so nothing about the features is re-implemented:

- :class:`WaveformGraph`: 16 kHz samples ``(batch, samples)`` → logits ``(batch, n_labels)``;
  the front-end, the crop/pad to ``num_frames``, the streaming MFCC-LSTM's zero-frame skipping and the
  normalisation are inside.
- :class:`FeatureGraph`: raw (un-normalised) features ``(batch, n_features, frames)`` → logits,
  for frame models; normalisation inside.
- :class:`StreamingStepGraph`: raw features ``(batch, frames, n_features)`` (one frame:
  ``(1, 1, n_features)``) plus the recurrent state → logits and the new state, for streaming
  models; normalisation inside.

The crop/pad (:func:`emovox.frames.fix_frames`), the zero-frame test
(:func:`~emovox.frames.nonzero_frame_mask`) and compaction (:func:`~emovox.frames.compact_frames`)
are the pipeline's own functions, written as tensor arithmetic (gathers with computed indices, a
stable sort by a computed key) so one traced graph serves every length and batch; the streaming
step is :func:`emovox.modelio.streaming_step`. ``tests/export/test_export.py`` checks the graphs against
the pipeline itself for several lengths and batch sizes.
"""

from __future__ import annotations

import torch
from torch import nn

from emovox.features import prepare_input
from emovox.frames import compact_frames, fix_frames, nonzero_frame_mask
from emovox.modelio import EmotionPipeline, streaming_step
from emovox.models.common import head_logits, is_streaming


def _check_conv_frontend(pipeline: EmotionPipeline) -> None:
    if pipeline.feature_config.kind == "waveform":
        return  # raw samples straight into the model (ssl): no STFT to swap
    spec = getattr(getattr(pipeline.frontend, "logmel", pipeline.frontend), "spectrogram", None)
    if getattr(spec, "stft_mode", None) != "conv":
        raise ValueError("export needs the pipeline loaded with stft_mode='conv' (a Conv1d STFT)")


class WaveformGraph(nn.Module):
    """Waveforms ``(batch, samples)`` → logits; equal to ``EmotionPipeline.forward(wave)``.

    ``batch_one=True`` (Core ML) takes one clip and, for zero-frame skipping, cuts the sequence
    to its real length instead of passing ``lengths`` to the model (packed sequences do not
    convert to Core ML).
    """

    def __init__(self, pipeline: EmotionPipeline, *, batch_one: bool = False):
        super().__init__()
        _check_conv_frontend(pipeline)
        self.cfg = pipeline.feature_config
        self.frontend = pipeline.frontend
        self.normalize = pipeline.normalize
        self.model = pipeline.model
        self.streaming = pipeline.streaming
        self.batch_one = batch_one
        self.skip_zero = self.cfg.kind == "mfcc" and self.cfg.skip_zero_frames

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        feats = self.frontend(waveform)
        lengths = None
        if self.skip_zero:
            keep = nonzero_frame_mask(waveform, cfg)  # the features' own, trace-safe
            if self.batch_one and cfg.num_frames is None:
                # one clip: keep its non-zero frames (the first frame when there are none)
                first = torch.cumsum(torch.ones_like(keep[0], dtype=torch.int32), 0) == 1
                keep = torch.logical_or(keep[0], torch.logical_and(first, torch.logical_not(keep[0].any())))
                feats = feats.index_select(2, torch.nonzero(keep).squeeze(1))
            else:
                feats, lengths = compact_frames(feats, keep)
        if cfg.num_frames is not None:
            feats, lengths = fix_frames(feats, cfg.num_frames, cfg=cfg, lengths=lengths), None
        feats = prepare_input(feats, cfg, self.normalize, lengths)  # level: log-mel configs with level_db only
        return head_logits(self.model, feats, lengths)


class FeatureGraph(nn.Module):
    """Raw features ``(batch, n_features, frames)`` (log-mel dB or MFCC) → logits; normalises inside."""

    def __init__(self, pipeline: EmotionPipeline):
        super().__init__()
        if pipeline.streaming:
            raise ValueError("streaming models export a StreamingStepGraph for feature input")
        self.cfg = pipeline.feature_config
        self.normalize = pipeline.normalize
        self.model = pipeline.model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model(prepare_input(features, self.cfg, self.normalize))


class StreamingStepGraph(nn.Module):
    """Raw features ``(batch, frames, n_features)`` + state → ``(logits, *new_state)``.

    The state is the model's ``hidden`` flattened to tensors (``(h, c)`` for an LSTM); zeros are
    the initial state. Feeding frames one by one with the returned state equals the whole sequence.
    ``pipeline``: an :class:`EmotionPipeline`, or anything with its ``normalize``, ``model`` and
    ``temperature`` (:class:`emovox.training.full_model.FullStreamingModel`); ``calibrated`` divides the logits
    by the temperature (the streaming MFCC-LSTM's drop-in, whose ``softmax`` must give emovox's probabilities).
    """

    def __init__(self, pipeline: EmotionPipeline | nn.Module, state_is_tuple: bool, *, calibrated: bool = False):
        super().__init__()
        if not is_streaming(pipeline.model):
            raise ValueError("StreamingStepGraph is for streaming models")
        self.feature_config = pipeline.feature_config
        self.normalize = pipeline.normalize
        self.model = pipeline.model
        self.state_is_tuple = state_is_tuple
        self.register_buffer("scale", 1.0 / pipeline.temperature.detach().clone() if calibrated else torch.tensor(1.0),
                             persistent=False)

    def forward(self, features: torch.Tensor, *state: torch.Tensor):
        hidden = tuple(state) if self.state_is_tuple else state[0]
        logits, new = streaming_step(self, features.transpose(1, 2), hidden)
        new = tuple(new) if isinstance(new, (tuple, list)) else (new,)
        return (logits * self.scale, *new)


class HiddenStateStep(nn.Module):
    """The streaming MFCC-LSTM's interface around a traced :class:`StreamingStepGraph` of an LSTM, for TorchScript:
    ``forward(x, hidden=None) -> (logits, (h, c))`` with ``x`` ``(batch, frames, n_features)``
    and ``hidden`` the ``(h, c)`` tuple of the previous call, or None (zeros) to start.

    Scripted (:func:`script_hidden_state_step`), so ``torch.jit.load`` (or ``torch.load(path,
    weights_only=False)``, which hands TorchScript archives to it) gives a module that the streaming MFCC-LSTM's loop
    ``output, hidden = model(frame, hidden)`` runs unchanged, without emovox and without unpickling
    Python objects.
    """

    def __init__(self, step: nn.Module, state_shapes: list[tuple[int, ...]], batch_axes: list[int]):
        super().__init__()
        if len(state_shapes) != 2:
            raise ValueError(f"the streaming MFCC-LSTM's (h, c) interface needs an LSTM-like state of two tensors, got "
                             f"{len(state_shapes)}")
        self.step = step
        self.h_shape = [int(d) for d in state_shapes[0]]
        self.c_shape = [int(d) for d in state_shapes[1]]
        self.h_axis = int(batch_axes[0])
        self.c_axis = int(batch_axes[1])

    def _zeros(self, shape: list[int], axis: int, x: torch.Tensor) -> torch.Tensor:
        size = list(shape)
        size[axis] = x.size(0)
        return torch.zeros(size, dtype=x.dtype, device=x.device)

    def forward(self, x: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if hidden is None:
            h, c = self._zeros(self.h_shape, self.h_axis, x), self._zeros(self.c_shape, self.c_axis, x)
        else:
            h, c = hidden
        logits, h_out, c_out = self.step(x, h, c)
        return logits, (h_out, c_out)


def script_hidden_state_step(pipeline: EmotionPipeline | nn.Module, *, calibrated: bool = False) -> torch.jit.ScriptModule:
    """The :class:`HiddenStateStep` TorchScript module of a streaming LSTM (a pipeline, or a
    :class:`emovox.training.full_model.FullStreamingModel` with ``calibrated=True``)."""
    import warnings

    is_tuple, shapes, axes = streaming_state_layout(pipeline)
    if not is_tuple or len(shapes) != 2:
        raise ValueError("the streaming MFCC-LSTM's forward(x, hidden) with hidden = (h, c) needs an LSTM-like model")
    n = pipeline.feature_config.n_features
    example = (torch.zeros(2, 3, n), *(torch.zeros(*[2 if i == ax else d for i, d in enumerate(s)])
                                       for s, ax in zip(shapes, axes)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter and TorchScript's deprecation notice
        with torch.no_grad():
            step = torch.jit.trace(StreamingStepGraph(pipeline, True, calibrated=calibrated).eval(), example,
                                   check_trace=False)
        return torch.jit.script(HiddenStateStep(step, shapes, axes))


def streaming_state_layout(pipeline: EmotionPipeline) -> tuple[bool, list[tuple[int, ...]], list[int]]:
    """How a streaming model's state looks: (is a tuple, shapes at batch 1, batch axis of each).

    Found by running the model once at batch 1 and once at batch 2, so any streaming family works.
    """
    n = pipeline.feature_config.n_features
    with torch.no_grad():
        _, h1 = pipeline.model(torch.zeros(1, 1, n), None)
        _, h2 = pipeline.model(torch.zeros(2, 1, n), None)
    is_tuple = isinstance(h1, (tuple, list))
    s1 = list(h1) if is_tuple else [h1]
    s2 = list(h2) if is_tuple else [h2]
    shapes, axes = [], []
    for a, b in zip(s1, s2):
        diff = [i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
        if len(diff) != 1:
            raise ValueError(f"cannot find the batch axis of the streaming state (shapes {tuple(a.shape)}, "
                             f"{tuple(b.shape)})")
        shapes.append(tuple(a.shape))
        axes.append(diff[0])
    return is_tuple, shapes, axes


def state_names(count: int) -> tuple[list[str], list[str]]:
    """Input and output names of the streaming state: ``h, c`` → ``h_out, c_out`` for an LSTM."""
    base = ["h", "c"] if count == 2 else ["h"] if count == 1 else [f"state{i}" for i in range(count)]
    return base, [f"{b}_out" for b in base]
