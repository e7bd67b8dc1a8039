"""Speech segments on long recordings (issue 24): the default model's validation speakers' clips joined by
pauses over background noise.

    nice -n 10 python -m benchmarks.segments --out bench_out/segments [--clips 300] [--snr clean,20,10,5]
        [--parts long,hour,trim] [--hour-s 3600]

- ``long``: one recording per noise level from the same ``--clips`` clips (random order, pauses of 0.3–2 s,
  1 s before and after; pink noise at each SNR, measured over the speech). Segment precision and recall at
  IoU ≥ 0.5 with a true utterance (the clip's speech by energy, on the clean clip: :func:`speech_span`; and
  the whole clip, as a second reading), for ``--segments`` and for the
  fixed-window timeline's merged segments (3-s windows, 1-s hop). Emotion UAR over the utterances: each takes
  the emotion of the segment matched to it (a missed utterance counts as wrong), against the same clips
  classified one by one (the clean files; and cut from the noisy recording at their own span), and against
  the timeline (its merged segment overlapping the utterance most).
- ``hour``: a ``--hour-s`` recording (every validation clip, again in another order when needed, 20 dB pink
  noise) written to a WAV file; ``model.segments(path)`` in a fresh process: seconds, × real time, peak RSS;
  with ``--hour-timeline``, the timeline on the same file in another fresh process.
- ``trim``: every validation clip classified whole and from the VAD's first speech to its last.

Writes ``results.json`` and ``results.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_DATA, validation_clips

SR = 16000
#: Pink noise (-3 dB/octave), Paul Kellet's economy filter.
PINK_B = [0.049922035, -0.095993537, 0.050612699, -0.004408786]
PINK_A = [1.0, -2.494956002, 2.017265875, -0.522189400]
IOU = 0.5


# ---------------------------------------------------------------------------------------------
# Building recordings


def speech_span(wave: np.ndarray) -> tuple[int, int]:
    """A clean clip's speech, by energy (independent of the VAD): its first to last 10-ms frame above both 30 dB
    under its loudest frame and 10 dB over its noise floor (its 10th-percentile frame, at least -100 dBFS)."""
    hop = SR // 100
    n = max(1, wave.size // hop)
    db = 10 * np.log10(np.mean(wave[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1) + 1e-20)
    floor = max(float(np.percentile(db, 10)), -100.0)
    active = np.flatnonzero(db > max(db.max() - 30, floor + 10))
    if not active.size:
        return 0, wave.size
    return int(active[0] * hop), int(min(wave.size, (active[-1] + 1) * hop))


class PinkNoise:
    """Pink noise in blocks, the filter's state carried over."""

    def __init__(self, rng: np.random.Generator):
        from scipy.signal import lfilter_zi

        self.rng = rng
        self.zi = lfilter_zi(PINK_B, PINK_A) * 0.0

    def __call__(self, n: int) -> np.ndarray:
        from scipy.signal import lfilter

        y, self.zi = lfilter(PINK_B, PINK_A, self.rng.standard_normal(n), zi=self.zi)
        return y / 0.0855  # about unit power


def layout(waves: list[np.ndarray], rng: np.random.Generator) -> tuple[list[int], int]:
    """Where each clip starts (samples) with 1 s before, 0.3–2 s pauses between, 1 s after; and the length."""
    starts, t = [], SR
    for w in waves:
        starts.append(t)
        t += w.size + int(rng.uniform(0.3, 2.0) * SR)
    return starts, t + SR


def own_snr_db(waves: list[np.ndarray], spans, snr_db: float) -> np.ndarray:
    """Each utterance's own SNR in a recording :func:`build` mixes at ``snr_db``: the noise is set against the
    mean speech power of the whole recording, so a clip recorded quieter than the rest is under it."""
    power = np.array([np.mean(w[a:b].astype(np.float64) ** 2) for w, (a, b) in zip(waves, spans)])
    length = np.array([b - a for a, b in spans], np.float64)
    noise = np.sum(power * length) / np.sum(length) / 10 ** (snr_db / 10)
    return 10 * np.log10(np.maximum(power, 1e-20) / noise)


def level_matched(waves: list[np.ndarray], spans, dbfs: float = -26.0) -> list[np.ndarray]:
    """The clips scaled to one speech level (RMS over each clip's speech ``dbfs``, peaks kept under 1), as in a
    recording of one session; the corpora were recorded up to 20 dB apart."""
    out = []
    for w, (a, b) in zip(waves, spans):
        rms = np.sqrt(np.mean(w[a:b].astype(np.float64) ** 2)) + 1e-12
        gain = min(10 ** (dbfs / 20) / rms, 0.99 / (np.max(np.abs(w)) + 1e-12))
        out.append((w * gain).astype(np.float32))
    return out


#: bands of an utterance's own SNR (dB) the benchmark reports recall in
OWN_SNR_BANDS = ((-np.inf, 0.0), (0.0, 5.0), (5.0, 10.0), (10.0, np.inf))


def recall_by_own_snr(own: np.ndarray, matched: dict[int, int]) -> list[dict]:
    hit = np.array([i in matched for i in range(own.size)])
    return [{"band_db": [float(lo), float(hi)], "utterances": int(sel.sum()),
             "recall": float(hit[sel].mean()) if sel.any() else None}
            for lo, hi in OWN_SNR_BANDS for sel in [(own >= lo) & (own < hi)]]


def build(waves: list[np.ndarray], spans, snr_db: float | None, seed: int):
    """The recording (float32), each clip's (start, end) and each utterance's (start, end) in samples."""
    rng = np.random.default_rng(seed)
    starts, total = layout(waves, rng)
    x = np.zeros(total, np.float64)
    for s, w in zip(starts, waves):
        x[s:s + w.size] += w
    clips = [(s, s + w.size) for s, w in zip(starts, waves)]
    utts = [(s + a, s + b) for s, (a, b) in zip(starts, spans)]
    if snr_db is not None:
        power = np.mean(np.concatenate([x[a:b] for a, b in utts]) ** 2)
        x += PinkNoise(rng)(total) * np.sqrt(power / 10 ** (snr_db / 10))
    return np.clip(x, -1, 1).astype(np.float32), clips, utts


# ---------------------------------------------------------------------------------------------
# Scoring


def iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def match(truth: list[tuple[float, float]], found: list[tuple[float, float]]) -> dict[int, int]:
    """One-to-one matches truth index → found index with IoU ≥ 0.5 (best pairs first)."""
    pairs = []
    j0 = 0
    for i, t in enumerate(truth):
        while j0 < len(found) and found[j0][1] <= t[0]:
            j0 += 1
        j = j0
        while j < len(found) and found[j][0] < t[1]:
            v = iou(t, found[j])
            if v >= IOU:
                pairs.append((v, i, j))
            j += 1
    out, used = {}, set()
    for _, i, j in sorted(pairs, reverse=True):
        if i not in out and j not in used:
            out[i] = j
            used.add(j)
    return out


def precision_recall(truth, found) -> dict[str, float]:
    m = match(truth, found)
    return {"precision": len(m) / max(1, len(found)), "recall": len(m) / max(1, len(truth)),
            "found": len(found), "true": len(truth)}


def uar(y_true: list[str], y_pred: list[str]) -> float:
    classes = sorted(set(y_true))
    yt, yp = np.array(y_true), np.array(y_pred)
    return float(np.mean([np.mean(yp[yt == c] == c) for c in classes]))


def most_overlapping(t: tuple[float, float], segs) -> str:
    best, label = 0.0, "(none)"
    for a, b, lab in segs:
        ov = min(b, t[1]) - max(a, t[0])
        if ov > best:
            best, label = ov, lab
    return label


# ---------------------------------------------------------------------------------------------
# Parts


def sample_clips(model, data: Path, n: int, seed: int):
    rows = [r for _, kept, _ in validation_clips(model, data) for r in kept]
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(rows))
    return [rows[i] for i in idx[:n]] if n else [rows[i] for i in idx]


def long_level(model, rows, waves, spans, snr, seed: int, tmp: Path, timeline: bool) -> dict:
    import soundfile as sf

    x, clips, utts = build(waves, spans, snr, seed)
    path = tmp / f"long_{snr or 'clean'}.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    labels = [r.label for r in rows]
    t0 = time.perf_counter()
    res = model.segments(path)
    seg_s = time.perf_counter() - t0
    found = [(s.start_s, s.end_s) for s in res.segments]
    sec = lambda spans_: [(a / SR, b / SR) for a, b in spans_]  # noqa: E731
    m = match(sec(utts), found)
    seg_pred = [res.segments[m[i]].prediction.label if i in m else "(missed)" for i in range(len(rows))]
    cut = model.predict_batch([(x[a:b], SR) for a, b in clips])
    out = {"snr_db": snr, "duration_s": x.size / SR, "seconds": seg_s,
           "segments": precision_recall(sec(utts), found), "segments_vs_clips": precision_recall(sec(clips), found),
           "uar_segments": uar(labels, seg_pred), "uar_cut_clips": uar(labels, [p.label for p in cut]),
           "uar_segments_matched": uar([labels[i] for i in m], [seg_pred[i] for i in m])}
    if snr is not None:
        out["recall_by_own_snr"] = recall_by_own_snr(own_snr_db(waves, spans, snr), m)
    if timeline:
        t0 = time.perf_counter()
        tl = model.timeline((x, SR), window_s=3.0, hop_s=1.0)
        out["timeline_seconds"] = time.perf_counter() - t0
        tsegs = [(s.start_s, s.end_s) for s in tl.segments]
        out["timeline"] = precision_recall(sec(utts), tsegs)
        merged = [(s.start_s, s.end_s, s.emotion) for s in tl.segments]
        out["uar_timeline"] = uar(labels, [most_overlapping(u, merged) for u in sec(utts)])
    print(json.dumps(out), flush=True)
    return out


def run_long(model, args, tmp: Path) -> dict:
    from emovox.audio import load_audio

    rows = sample_clips(model, args.data, args.clips, args.seed)
    waves = [load_audio(r.path) for r in rows]
    spans = [speech_span(w) for w in waves]
    if args.level_match:
        waves = level_matched(waves, spans)
    labels = [r.label for r in rows]
    alone = model.predict_batch([(w, SR) for w in waves] if args.level_match else [r.path for r in rows])
    res = {"clips": len(rows), "level_matched": args.level_match,
           "per_corpus": {c: sum(r.corpus == c for r in rows) for c in {r.corpus for r in rows}},
           "uar_clips_alone": uar(labels, [p.label for p in alone]), "levels": []}
    for k, snr in enumerate(args.snr):
        res["levels"].append(long_level(model, rows, waves, spans, snr, args.seed + 1 + k, tmp, args.timeline))
    return res


def write_hour(model, args, path: Path) -> dict:
    """The hour, written clip by clip (never held whole), and its utterances."""
    import soundfile as sf

    from emovox.audio import load_audio

    rows = sample_clips(model, args.data, 0, args.seed + 100)
    rng = np.random.default_rng(args.seed + 100)
    noise = PinkNoise(rng)
    ref = [load_audio(r.path) for r in rows[:100]]
    speech = np.concatenate([w[slice(*speech_span(w))] for w in ref])
    level = float(np.sqrt(np.mean(speech.astype(np.float64) ** 2))) * 10 ** (-20 / 20)  # 20 dB under the speech
    utts, t, k = [], 0, 0
    with sf.SoundFile(path, "w", SR, 1, subtype="PCM_16") as f:
        while t < args.hour_s * SR:
            w = load_audio(rows[k % len(rows)].path)
            a, b = speech_span(w)
            pause = np.zeros(int(rng.uniform(0.3, 2.0) * SR))
            block = np.concatenate([w, pause])
            f.write(np.clip(block + noise(block.size) * level, -1, 1).astype(np.float32))
            utts.append((t + a, t + b))
            t += block.size
            k += 1
    return {"path": str(path), "duration_s": t / SR, "utterances": len(utts), "clips_used": k,
            "utts": [(a / SR, b / SR) for a, b in utts]}


MEASURE = """
import json, resource, sys, time
import emovox
t0 = time.perf_counter()
m = emovox.load_model(max_duration_s=None)
load_s = time.perf_counter() - t0
t0 = time.perf_counter()
if sys.argv[2] == "segments":
    r = m.segments(sys.argv[1])
    spans = [(s.start_s, s.end_s) for s in r.segments]
else:
    r = m.timeline(sys.argv[1], window_s=3.0, hop_s=1.0)
    spans = [(s.start_s, s.end_s) for s in r.segments]
run_s = time.perf_counter() - t0
print(json.dumps({"load_s": load_s, "run_s": run_s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "torch": "torch" in sys.modules, "spans": spans}))
"""


def measure(path: Path, what: str) -> dict:
    res = subprocess.run([sys.executable, "-c", MEASURE, str(path), what], capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_hour(model, args, tmp: Path) -> dict:
    hour = write_hour(model, args, tmp / "hour.wav")
    utts = hour.pop("utts")
    out = {"recording": hour}
    for what in ("segments", "timeline") if args.hour_timeline else ("segments",):
        got = measure(Path(hour["path"]), what)
        spans = got.pop("spans")
        got["x_real_time"] = hour["duration_s"] / got["run_s"]
        got["boundaries"] = precision_recall(utts, [tuple(s) for s in spans])
        out[what] = got
        print(what, json.dumps(got), flush=True)
    return out


def run_trim(model, args) -> dict:
    """Whole clips against the same clips from the VAD's first speech to its last (validation speakers)."""
    from emovox.audio import load_audio
    from emovox.segments import SileroVad, speech_segments

    rows = sample_clips(model, args.data, 0, args.seed)
    vad = SileroVad()
    waves, trimmed, n_cut = [], [], 0
    for r in rows:
        w = load_audio(r.path)
        segs = speech_segments(vad.probabilities(w), w.size)
        a, b = (segs[0][0], segs[-1][1]) if segs else (0, w.size)
        n_cut += (b - a) < w.size
        waves.append(w)
        trimmed.append(w[a:b])
    labels = [r.label for r in rows]
    whole = model.probabilities(waves)
    cut = model.probabilities(trimmed)
    lab = model.labels
    per = {}
    for c in sorted({r.corpus for r in rows}):
        i = [k for k, r in enumerate(rows) if r.corpus == c]
        per[c] = {"whole": uar([labels[k] for k in i], [lab[int(np.argmax(whole[k]))] for k in i]),
                  "trimmed": uar([labels[k] for k in i], [lab[int(np.argmax(cut[k]))] for k in i])}
    return {"clips": len(rows), "trimmed_clips": int(n_cut),
            "seconds_removed": float(sum(w.size - t.size for w, t in zip(waves, trimmed)) / SR),
            "uar_whole": uar(labels, [lab[int(np.argmax(p))] for p in whole]),
            "uar_trimmed": uar(labels, [lab[int(np.argmax(p))] for p in cut]), "per_corpus": per}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=Path("bench_out/segments"))
    ap.add_argument("--clips", type=int, default=300, help="clips per long recording (0: every validation clip)")
    ap.add_argument("--snr", default="clean,20,10,5", help="noise levels (dB SNR; 'clean': no noise)")
    ap.add_argument("--parts", default="long,hour,trim")
    ap.add_argument("--hour-s", type=float, default=3600.0)
    ap.add_argument("--no-timeline", dest="timeline", action="store_false", help="skip the timeline baseline")
    ap.add_argument("--hour-timeline", action="store_true", help="also time the timeline on the hour (slow)")
    ap.add_argument("--level-match", action="store_true",
                    help="scale every clip to one speech level first (one session's recording; see level_matched)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.snr = [None if s.strip() == "clean" else float(s) for s in args.snr.split(",")]
    import tempfile

    import emovox

    model = emovox.load_model(max_duration_s=None)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    results: dict = {"command": " ".join(["python -m benchmarks.segments", *(argv or sys.argv[1:])])}
    with tempfile.TemporaryDirectory() as tmp:
        if "long" in parts:
            results["long"] = run_long(model, args, Path(tmp))
        if "hour" in parts:
            results["hour"] = run_hour(model, args, Path(tmp))
    if "trim" in parts:
        results["trim"] = run_trim(model, args)
        print("trim", json.dumps(results["trim"]), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "results.md").write_text(report(results))
    print(report(results))
    return 0


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _band(b: dict) -> str:
    lo, hi = b["band_db"]
    return f"< {hi:g} dB" if lo == -np.inf else f"≥ {lo:g} dB" if hi == np.inf else f"{lo:g}–{hi:g} dB"


def report(r: dict) -> str:
    lines = [f"`{r['command']}`", ""]
    if "long" in r:
        lo = r["long"]
        matched = "; levels matched" if lo.get("level_matched") else ""
        lines += [f"{lo['clips']} clips ({lo['per_corpus']}){matched}; clips alone (clean) UAR {_pct(lo['uar_clips_alone'])}",
                  "", "| noise | segments P / R (speech) | P / R (whole clips) | UAR segments | UAR clips cut "
                  "| timeline P / R | UAR timeline |", "|---|---|---|---|---|---|---|"]
        for lv in lo["levels"]:
            s, c = lv["segments"], lv["segments_vs_clips"]
            t = lv.get("timeline")
            tl = f"{_pct(t['precision'])} / {_pct(t['recall'])}" if t else "—"
            lines.append(f"| {'clean' if lv['snr_db'] is None else str(lv['snr_db']) + ' dB'} | {_pct(s['precision'])} / "
                         f"{_pct(s['recall'])} | {_pct(c['precision'])} / {_pct(c['recall'])} | "
                         f"{_pct(lv['uar_segments'])} | {_pct(lv['uar_cut_clips'])} | {tl} | "
                         f"{_pct(lv['uar_timeline']) if 'uar_timeline' in lv else '—'} |")
        bands = [(lv["snr_db"], lv["recall_by_own_snr"]) for lv in lo["levels"] if "recall_by_own_snr" in lv]
        if bands:
            lines += ["", "segment recall by each utterance's own SNR (utterances in the band):", "",
                      "| noise | " + " | ".join(_band(b) for b in bands[0][1]) + " |", "|---" * (1 + len(bands[0][1])) + "|"]
            lines += [f"| {snr} dB | " + " | ".join("—" if b["recall"] is None else f"{_pct(b['recall'])} ({b['utterances']})"
                                                  for b in got) + " |" for snr, got in bands]
    if "hour" in r:
        h = r["hour"]
        lines += ["", f"hour: {h['recording']['duration_s']:.0f} s, {h['recording']['utterances']} utterances"]
        for what in ("segments", "timeline"):
            if what in h:
                g = h[what]
                lines.append(f"- {what}: {g['run_s']:.1f} s ({g['x_real_time']:.1f}x real time), peak RSS "
                             f"{g['peak_rss_mb']:.0f} MB, P/R {_pct(g['boundaries']['precision'])} / "
                             f"{_pct(g['boundaries']['recall'])}, torch imported: {g['torch']}")
    if "trim" in r:
        t = r["trim"]
        lines += ["", f"trim: {t['clips']} clips ({t['trimmed_clips']} trimmed, {t['seconds_removed']:.0f} s removed): "
                  f"UAR whole {_pct(t['uar_whole'])}, trimmed {_pct(t['uar_trimmed'])}; "
                  + ", ".join(f"{c} {_pct(v['whole'])} → {_pct(v['trimmed'])}" for c, v in t["per_corpus"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
