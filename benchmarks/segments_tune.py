"""How the segment defaults were chosen: the segmenter's options on recordings built from the default model's
*training* speakers (never its validation speakers, which ``benchmarks.segments`` scores), clean and with pink
noise; the VAD runs once per recording, each option set only re-segments its probabilities.

    nice -n 10 python -m benchmarks.segments_tune [--clips 200]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

import numpy as np

from benchmarks.common import DEFAULT_DATA
from benchmarks.segments import SR, build, precision_recall, speech_span


def training_clips(model, data, n: int, seed: int):
    from emovox.data.corpora import scan
    from emovox.training.plan import map_labels

    val = set(json.loads((model.path / "model_meta.json").read_text())["split"]["val_speakers"])
    rows = []
    for corpus in ("ravdess", "crema-d", "nemo"):
        got = [r for r in scan(data / corpus, corpus, with_duration=False) if r.speaker not in val]
        rows += map_labels(got, ",".join(model.labels))[0]
    rng = np.random.default_rng(seed)
    return [rows[i] for i in rng.permutation(len(rows))[:n]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--thresholds", default="0.5,0.35")
    ap.add_argument("--silences", default="100,200,300,400", help="min_silence_ms values")
    ap.add_argument("--pads", default="30,100,200", help="speech_pad_ms values")
    args = ap.parse_args(argv)
    import emovox
    from emovox.audio import load_audio
    from emovox.segments import SegmentOptions, SileroVad, speech_segments

    model = emovox.load_model()
    rows = training_clips(model, args.data if not isinstance(args.data, str) else __import__("pathlib").Path(args.data),
                          args.clips, args.seed)
    waves = [load_audio(r.path) for r in rows]
    spans = [speech_span(w) for w in waves]
    vad = SileroVad()
    floats = lambda text: [float(v) for v in text.split(",")]  # noqa: E731
    grid = list(itertools.product(floats(args.thresholds), floats(args.silences), floats(args.pads)))
    scores = {g: [] for g in grid}
    for k, snr in enumerate([None, 20.0, 10.0, 5.0]):
        x, _, utts = build(waves, spans, snr, args.seed + k)
        probs = vad.probabilities(x)
        truth = [(a / SR, b / SR) for a, b in utts]
        for th, sil, pad in grid:
            o = SegmentOptions(threshold=th, min_silence_ms=sil, speech_pad_ms=pad)
            found = [(a / SR, b / SR) for a, b in speech_segments(probs, x.size, o)]
            pr = precision_recall(truth, found)
            scores[(th, sil, pad)].append((pr["precision"], pr["recall"]))
            print(snr, th, sil, pad, f"P {pr['precision']:.3f} R {pr['recall']:.3f}", flush=True)
    print("\nmean over noise levels (threshold, min_silence_ms, speech_pad_ms): precision, recall")
    for g, v in sorted(scores.items(), key=lambda kv: -np.mean([p + r for p, r in kv[1]])):
        p, r = np.mean(v, axis=0)
        print(g, f"{p:.3f} {r:.3f}")
    return 0




def context_main(argv=None) -> int:
    """How much audio around a segment to classify with it: UAR of the segments of a clean recording of training
    speakers' clips, classified with 0–1 s of the recording on each side (the boundaries stay as found).

        nice -n 10 python -m benchmarks.segments_tune context [--clips 200]
    """
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--contexts", default="0,0.25,0.5,1.0", help="seconds on each side")
    args = ap.parse_args(argv)
    from pathlib import Path

    import emovox
    from benchmarks.segments import match, uar
    from emovox.audio import load_audio
    from emovox.segments import SegmentOptions, SileroVad, speech_segments

    model = emovox.load_model(max_duration_s=None)
    rows = training_clips(model, Path(args.data), args.clips, args.seed)
    waves = [load_audio(r.path) for r in rows]
    x, _, utts = build(waves, [speech_span(w) for w in waves], None, args.seed)
    spans = speech_segments(SileroVad().probabilities(x), x.size, SegmentOptions())
    m = match([(a / SR, b / SR) for a, b in utts], [(a / SR, b / SR) for a, b in spans])
    labels = [r.label for r in rows]
    for ctx in (float(c) for c in args.contexts.split(",")):
        k = int(ctx * SR)
        probs = model.probabilities([x[max(0, a - k):b + k] for a, b in spans])
        pred = [model.labels[int(np.argmax(probs[m[i]]))] if i in m else "(missed)" for i in range(len(rows))]
        print(f"context {ctx:.2f} s: UAR {100 * uar(labels, pred):.1f} over {len(rows)} utterances, "
              f"{len(m)} matched", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(context_main(sys.argv[2:]) if sys.argv[1:2] == ["context"] else main())
