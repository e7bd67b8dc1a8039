#!/usr/bin/env python
"""A fuzz campaign against emovox's input boundaries, longer than the suite's property tests.

Each target gets random mutations of real inputs for a time budget; an input "crashes" when it raises
anything but the boundary's own error (``AudioError``, ``ModelLoadError``/``ValueError``, ...), and
"hangs" when one call takes longer than ``--hang-s``. Prints a Markdown table (inputs tried, crashes,
hangs, slowest call, peak RSS) and writes every crashing input to ``--out`` for a regression test.

    python -m benchmarks.fuzz --seconds 120 --out runs/fuzz
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_DATA


def mutate(blob: bytes, rng: random.Random) -> bytes:
    """Bit flips, byte runs, truncation, splices and lying 32-bit fields, a few at a time."""
    b = bytearray(blob)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(5)
        if not b:
            break
        i = rng.randrange(len(b))
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i : i + rng.randint(1, 16)] = bytes([rng.randrange(256)]) * rng.randint(1, 16)
        elif op == 2:
            del b[rng.randrange(len(b)) :]
        elif op == 3:
            j = rng.randrange(len(b))
            b[i:i] = b[j : j + rng.randint(1, 64)]
        else:
            b[i : i + 4] = rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, rng.getrandbits(32)]).to_bytes(4, "little")
    return bytes(b)


def audio_seeds(data: Path) -> list[bytes]:
    import soundfile as sf

    x, sr = sf.read(data / "ravdess" / "Actor_01" / "03-01-05-01-01-01-01.flac", dtype="float32")
    x = x[: sr // 2]
    out = []
    for fmt, subtype, rate in [("WAV", "PCM_16", sr), ("WAV", "FLOAT", sr), ("FLAC", "PCM_16", sr),
                               ("OGG", "VORBIS", sr), ("OGG", "OPUS", 48000), ("MP3", "MPEG_LAYER_III", sr),
                               ("AIFF", "PCM_16", sr)]:
        buf = io.BytesIO()
        sf.write(buf, x, rate, format=fmt, subtype=subtype)
        out.append(buf.getvalue())
    return out


def target_audio(data: Path):
    from emovox.audio import AudioError, load_audio

    seeds = audio_seeds(data)

    def one(rng: random.Random) -> bytes:
        blob = mutate(rng.choice(seeds), rng) if rng.random() < 0.95 else rng.randbytes(rng.randint(0, 4096))
        load_audio(blob)
        return blob

    return one, (AudioError,)


def target_labels(data: Path):
    from emovox.labels import LabelError, LabelMap

    words = ["happy", "sad", "angry", "neutral", "calm", "fearful", "disgust", "surprised", "ekman7", "core4",
             "app6", "ravdess8", "=", ",", " ", "", "\x00", "é", "a" * 300]

    def one(rng: random.Random) -> bytes:
        spec = "".join(rng.choice(words) + rng.choice(["", ",", "=", " "]) for _ in range(rng.randint(0, 12)))
        source = rng.sample(words[:8], rng.randint(1, 8))
        LabelMap.build(source, spec)
        return spec.encode("utf-8", "surrogatepass")

    return one, (LabelError, ValueError)


def target_model_folder(data: Path):
    """A real model folder (the shipped crnn) with one file mutated per input."""
    import shutil
    import tempfile

    from emovox.modelio import ModelLoadError, load_model_dir

    src = Path(__file__).resolve().parents[1] / "src" / "emovox" / "assets" / "models" / "crnn"
    files = {f.name: f.read_bytes() for f in src.iterdir() if f.is_file()}
    work = Path(tempfile.mkdtemp(prefix="emovox-fuzz-"))

    def one(rng: random.Random) -> bytes:
        shutil.rmtree(work / "m", ignore_errors=True)
        (work / "m").mkdir()
        name = rng.choice(sorted(files))
        for f, blob in files.items():
            (work / "m" / f).write_bytes(mutate(blob, rng) if f == name else blob)
        load_model_dir(work / "m")
        return name.encode()

    return one, (ModelLoadError, ValueError)


def target_text(data: Path):
    """Text files (``emovox text-classify FILE``'s reader) and strings: binary, invalid UTF-8, control characters."""
    import tempfile

    from emovox.text.data import TextError, check_text, read_lines

    path = Path(tempfile.mkdtemp(prefix="emovox-fuzz-")) / "texts.txt"
    seed_text = "I am so happy today!\nThis is awful.\n\u00e9t\u00e9 \U0001F600\n".encode()

    def one(rng: random.Random) -> bytes:
        blob = mutate(seed_text * rng.randint(1, 200), rng) if rng.random() < 0.7 else rng.randbytes(rng.randint(0, 9999))
        path.write_bytes(blob)
        for line in read_lines(path):
            check_text(line)
        check_text(blob.decode("latin-1"))
        return blob

    return one, (TextError,)


TARGETS = {"audio": target_audio, "labels": target_labels, "model-folder": target_model_folder, "text": target_text}


def campaign(name: str, seconds: float, hang_s: float, seed: int, data: Path, out: Path | None) -> dict:
    one, expected = TARGETS[name](data)
    rng = random.Random(seed)
    tried = crashes = hangs = 0
    slowest, t_end = 0.0, time.monotonic() + seconds
    while time.monotonic() < t_end:
        state = rng.getstate()
        t = time.perf_counter()
        try:
            one(rng)
        except expected:
            pass
        except Exception:  # noqa: BLE001 - what the campaign looks for
            crashes += 1
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                (out / f"{name}-crash-{crashes}.txt").write_text(json.dumps(
                    {"seed_state": repr(state), "traceback": traceback.format_exc()}, indent=2))
        dt = time.perf_counter() - t
        slowest = max(slowest, dt)
        hangs += dt > hang_s
        tried += 1
    return {"target": name, "inputs": tried, "crashes": crashes, "hangs": hangs, "slowest_s": round(slowest, 3),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--seconds", type=float, default=60.0, help="budget per target")
    p.add_argument("--hang-s", type=float, default=5.0, help="a call slower than this counts as a hang")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=None, help="folder for crashing inputs")
    args = p.parse_args(argv)
    rows = [campaign(t, args.seconds, args.hang_s, args.seed, args.data, args.out) for t in args.targets.split(",")]
    print("| target | inputs | crashes | hangs | slowest call (s) | peak RSS (MiB) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['inputs']} | {r['crashes']} | {r['hangs']} | {r['slowest_s']} | {r['peak_rss_mib']} |")
    print(f"\nCommand: `python -m benchmarks.fuzz {' '.join(sys.argv[1:])}`; peak RSS is the process's, cumulative.")
    return 1 if any(r["crashes"] or r["hangs"] for r in rows) else 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
