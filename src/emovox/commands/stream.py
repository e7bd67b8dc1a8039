"""emovox stream: incremental classification of a file played as a stream, or raw PCM on stdin."""

from __future__ import annotations

import argparse
import json
import sys
import time

HELP = "classify audio incrementally: a file played as a stream, or raw 16-bit 16 kHz PCM on stdin ('-')"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from emovox.inference import BACKENDS  # the runtimes load_model takes (no torch import)

    p.add_argument("source", nargs="?", default="-", help="audio file, or '-' for raw s16le mono PCM on stdin")
    p.add_argument("--model", default=None,
                   help="model: a folder or a shipped name; 'streaming' is the shipped LSTM that runs frame by "
                        "frame with its hidden state (less accurate); default: the default model, which "
                        "re-classifies the last --window-s seconds at every update")
    p.add_argument("--labels", default=None,
                   help="fold scores into another label set (basic5, app6, ...); 'class' and 'confidence' follow it")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="runtime: auto (ONNX Runtime where the model has its graphs, PyTorch otherwise), onnx, torch")
    p.add_argument("--final-answer", dest="final_answer", choices=["last", "mean"], default="last",
                   help="frame-by-frame models: report the answer after the last frame, or the mean of every "
                        "frame's probabilities (the streaming MFCC-LSTM's two options)")
    p.add_argument("--chunk-ms", type=float, default=250.0, help="chunk length fed per update (ms)")
    p.add_argument("--realtime", action="store_true", help="pace a file at real time (sleep between chunks)")
    p.add_argument("--sample-rate", type=int, default=16000, help="rate of the raw PCM on stdin (Hz)")
    p.add_argument("--window-s", type=float, default=3.0, help="non-streaming models: window classified per update")
    p.add_argument("--segments", action="store_true",
                   help="also report speech as it starts and ends (Silero VAD): {\"event\": \"speech_start\"} and, "
                        "when an utterance ends, {\"event\": \"speech_end\"} with its start, end and emotion")
    p.add_argument("--min-silence-ms", type=float, default=None,
                   help="with --segments: a pause this long ends an utterance (default: as classify --segments)")


def run(args) -> int:
    from emovox.audio import load_audio, pcm16_to_float
    from emovox.inference import load_model

    model = load_model(args.model, backend=args.backend)
    session = model.stream(labels=args.labels, window_s=args.window_s, final_answer=args.final_answer)
    live = _live(model, args)
    sr = model.sample_rate_hz
    chunk = max(1, int(sr * args.chunk_ms / 1000))

    def emit(update, final=False):
        if update is not None:
            sys.stdout.write(json.dumps({**update, "final": final}) + "\n")
            sys.stdout.flush()

    if args.source == "-":
        import soxr

        resampler = None if args.sample_rate == sr else soxr.ResampleStream(args.sample_rate, sr, 1, dtype="float32")
        nbytes = 2 * max(1, int(args.sample_rate * args.chunk_ms / 1000))
        stdin = sys.stdin.buffer
        carry = b""
        while True:
            data = stdin.read(nbytes)
            if not data:
                break
            data = carry + data
            carry = data[len(data) - len(data) % 2 :]
            x = pcm16_to_float(data[: len(data) - len(data) % 2])
            if resampler is not None:
                x = resampler.resample_chunk(x)
            for u in session.push(x) + (live.push(x) if live else []):
                emit(u)
    else:
        wave = load_audio(args.source, sample_rate_hz=sr)
        for start in range(0, len(wave), chunk):
            x = wave[start : start + chunk]
            for u in session.push(x) + (live.push(x) if live else []):
                emit(u)
            if args.realtime:
                time.sleep(chunk / sr)
    for event in live.finish() if live else []:
        emit(event)
    emit(session.finish(), final=True)
    return 0


def _live(model, args):
    """--segments: the stream's endpointing (:class:`emovox.segments.live.LiveSegments`), else None."""
    if not args.segments:
        return None
    from emovox.segments import SegmentOptions
    from emovox.segments.live import LiveSegments

    options = SegmentOptions() if args.min_silence_ms is None else SegmentOptions(min_silence_ms=args.min_silence_ms)
    return LiveSegments(model, labels=args.labels, options=options)
