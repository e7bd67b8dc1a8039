"""Parity checks: every exported graph against the PyTorch pipeline on the same clips.

The reference is the pipeline as ``emovox classify`` runs it (``torch.stft`` front-end), so a check
covers the convolutional STFT, the trace and the runtime together. Cases, per input kind:

- waveform: each clip alone (its own length), and all clips cut to the shortest one as a batch;
- features (frame models): each clip's raw features alone, and all clips' features as a batch;
- features (streaming models): each clip fed frame by frame from a zero state (every step's
  logits and the final state compared), the whole sequence in one call, and a batch.

A case with batch 1 and (for streaming) one frame per call is also a Core ML case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from emovox.export.spec import GraphSpec
from emovox.modelio import EmotionPipeline

Runner = Callable[..., list[np.ndarray]]
DEFAULT_TOLERANCE = 1e-4


@dataclass
class Case:
    name: str
    inputs: tuple[np.ndarray, ...]  # for stepping: the (1, T, F) sequence only
    expected: np.ndarray  # logits (batch, n_labels); for stepping: (T, n_labels), one row per step
    batch_one: bool
    stepping: bool = False
    expected_state: tuple[np.ndarray, ...] = ()  # stepping: the state after the last frame
    expected_final: np.ndarray | None = None  # stepping: the logits after the last frame


def synthetic_clips(sample_rate_hz: int) -> list[np.ndarray]:
    """Three deterministic speech-like clips (0.6 s, 1.7 s, 4.1 s): voiced harmonics with a moving
    pitch, noise bursts, and stretches of exact digital silence (for zero-frame skipping)."""
    rng = np.random.default_rng(1234)
    clips = []
    for dur, f0 in ((0.6, 140.0), (1.7, 210.0), (4.1, 120.0)):
        n = int(dur * sample_rate_hz)
        t = np.arange(n) / sample_rate_hz
        pitch = f0 * (1 + 0.1 * np.sin(2 * np.pi * 3 * t))
        phase = 2 * np.pi * np.cumsum(pitch) / sample_rate_hz
        voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
        env = 0.5 * (1 + np.sin(2 * np.pi * 2.5 * t)) ** 2
        x = 0.08 * voiced * env + 0.01 * rng.standard_normal(n)
        x[: n // 10] = 0.0  # leading digital silence
        x[n // 2 : n // 2 + sample_rate_hz // 20] = 0.0
        clips.append(x.astype(np.float32))
    return clips


def build_cases(spec: GraphSpec, ref: EmotionPipeline, clips: Sequence[np.ndarray]) -> list[Case]:
    with torch.inference_mode():
        if spec.kind == "waveform":
            return _waveform_cases(ref, clips)
        if not spec.streaming:
            return _feature_cases(ref, clips)
        return _streaming_cases(ref, clips)


def _waveform_cases(ref, clips) -> list[Case]:
    cases = []
    for c in clips:
        x = torch.from_numpy(c)[None]
        cases.append(Case(f"batch 1 x {len(c)} samples", (c[None],), ref(x).numpy(), True))
    n = min(len(c) for c in clips)
    batch = np.stack([c[:n] for c in clips])
    cases.append(Case(f"batch {len(clips)} x {n} samples", (batch,), ref(torch.from_numpy(batch)).numpy(), False))
    return cases


def _feature_cases(ref, clips) -> list[Case]:
    cases, feats = [], []
    for c in clips:
        raw, _ = ref.raw_features(torch.from_numpy(c)[None])
        feats.append(raw)
        exp = ref.forward_features(ref.normalize_features(raw)).numpy()
        cases.append(Case(f"batch 1 x {raw.shape[-1]} frames", (raw.numpy(),), exp, True))
    t = min(f.shape[-1] for f in feats)
    batch = torch.cat([f[..., :t] for f in feats])
    cases.append(Case(f"batch {len(clips)} x {t} frames", (batch.numpy(),),
                      ref.forward_features(ref.normalize_features(batch)).numpy(), False))
    return cases


#: Streaming checks compare every step's logits over this many first frames (PyTorch stepping is
#: slow), and the final logits and state after the whole clip.
STEPS_COMPARED = 32


def _streaming_cases(ref, clips) -> list[Case]:
    cases, seqs = [], []
    for c in clips:
        raw, _ = ref.raw_features(torch.from_numpy(c)[None])  # zero frames already skipped
        seq = raw.transpose(1, 2)  # (1, T, F)
        seqs.append(seq)
        norm = ref.normalize(raw).transpose(1, 2)
        hidden, steps = None, []
        for i in range(min(STEPS_COMPARED, norm.shape[1])):
            logits, hidden = ref.model(norm[:, i : i + 1], hidden)
            steps.append(logits[0].numpy())
        final, hidden = ref.model(norm, None)
        whole = ref(torch.from_numpy(c)[None]).numpy()  # the pipeline on the waveform
        state = tuple(h.numpy() for h in (hidden if isinstance(hidden, (tuple, list)) else (hidden,)))
        if np.abs(final.numpy() - whole).max() > 1e-4:
            raise ValueError("the PyTorch model on the clip's features differs from the pipeline on its waveform; "
                             "a frame-by-frame export could not match it")
        cases.append(Case(f"{seq.shape[1]} frames, one per call", (seq.numpy(),), np.stack(steps), True, True,
                          state, whole))
        cases.append(Case(f"batch 1 x {seq.shape[1]} frames in one call", (seq.numpy(),), whole, False))
    t = min(s.shape[1] for s in seqs)
    batch = torch.cat([s[:, :t] for s in seqs])
    exp, _ = ref.model(ref.normalize(batch.transpose(1, 2)).transpose(1, 2), None)
    cases.append(Case(f"batch {len(clips)} x {t} frames in one call", (batch.numpy(),), exp.numpy(), False))
    return cases


def _zero_state(spec: GraphSpec, batch: int) -> list[np.ndarray]:
    return [np.zeros([batch if i == ax else d for i, d in enumerate(s)], np.float32)
            for s, ax in zip(spec.state_shapes, spec.state_batch_axes)]


def run_case(spec: GraphSpec, runner: Runner, case: Case) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The runtime's logits for a case (for stepping: one row per step) and the final state (streaming)."""
    if not spec.streaming or spec.kind == "waveform":
        return runner(*case.inputs)[0], ()
    seq = case.inputs[0]
    state = _zero_state(spec, seq.shape[0])
    if not case.stepping:
        out = runner(seq, *state)
        return out[0], tuple(out[1:])
    rows = []
    for i in range(seq.shape[1]):
        out = runner(seq[:, i : i + 1], *state)
        rows.append(out[0][0])
        state = out[1:]
    return np.stack(rows), tuple(state)


def check_runner(spec: GraphSpec, runner: Runner, cases: Sequence[Case], *, batch_one_only: bool = False,
                 tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Max absolute logit (and state) difference per case; ``ok`` when all are below ``tolerance``."""
    rows, worst = [], 0.0
    for case in cases:
        if batch_one_only and not case.batch_one:
            continue
        got, state = run_case(spec, runner, case)
        if case.stepping:  # every step's logits over the first frames, then the final logits and state
            diff = float(np.abs(got[: len(case.expected)] - case.expected).max())
            diff = max(diff, float(np.abs(got[-1:] - case.expected_final).max()))
        else:
            diff = float(np.abs(np.asarray(got, np.float64) - case.expected).max())
        for a, b in zip(state, case.expected_state):
            diff = max(diff, float(np.abs(np.asarray(a, np.float64) - b).max()))
        worst = max(worst, diff)
        rows.append({"case": case.name, "max_abs_diff": diff})
    return {"max_abs_diff": worst, "tolerance": tolerance, "ok": worst < tolerance, "cases": rows}


def top1_agreement(spec: GraphSpec, a: Runner, b: Runner, cases: Sequence[Case]) -> dict[str, Any]:
    """Top-1 agreement and max logit difference between two runners on the clip cases."""
    agree = total = 0
    worst = 0.0
    for case in cases:
        if not case.batch_one:
            continue
        la, lb = run_case(spec, a, case)[0], run_case(spec, b, case)[0]
        if case.stepping:  # the clip's result is the last step
            la, lb = la[-1:], lb[-1:]
        agree += int((la.argmax(-1) == lb.argmax(-1)).sum())
        total += la.shape[0]
        worst = max(worst, float(np.abs(la - lb).max()))
    return {"top1_agreement": agree / total if total else None, "clips": total, "max_abs_logit_diff": worst}
