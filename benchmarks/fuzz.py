#!/usr/bin/env python
"""A fuzz campaign against emovox's input boundaries, longer than the suite's property tests.

Each target gets random mutations of real inputs for a time budget; an input "crashes" when it raises
anything but the boundary's own error (``AudioError``, ``ModelLoadError``/``ValueError``, ...), and
"hangs" when one call takes longer than ``--hang-s``. Prints a Markdown table (inputs tried, crashes,
hangs, 5xx answers of the HTTP target, slowest call, peak RSS) and writes every crashing input to
``--out`` for a regression test. Targets: audio files, label specs, model folders, text, the text model's JSON
files (``text-model-folder``), the shipped text ensemble's (``text-ensemble-folder``, needs the mpnet parts), corpus folder
trees, config files, the HTTP API (schemathesis, from its OpenAPI document) and the WebSocket stream.
Peak RSS is the process's: run one target per process for per-target figures.

    python -m benchmarks.fuzz --seconds 120 --out runs/fuzz
    python -m benchmarks.fuzz --targets http --seconds 60
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
    from emovox.data.labels import LabelError, LabelMap

    words = ["happy", "sad", "angry", "neutral", "calm", "fearful", "disgust", "surprised", "ekman7", "core4",
             "app6", "ravdess8", "=", ",", " ", "", "\x00", "é", "a" * 300]

    import tempfile

    path = Path(tempfile.mkdtemp(prefix="emovox-fuzz-")) / "spec.json"

    def one(rng: random.Random) -> bytes:
        spec = "".join(rng.choice(words) + rng.choice(["", ",", "=", " "]) for _ in range(rng.randint(0, 12)))
        source = rng.sample(words[:8], rng.randint(1, 8))
        if rng.random() < 0.3:  # a .json spec file: a list, an object, deep nesting or bytes
            r = rng.random()
            blob = (json.dumps(spec.split(",")).encode() if r < 0.4 else
                    json.dumps(dict(p.partition("=")[::2] for p in spec.split(","))).encode() if r < 0.7 else
                    b"[" * rng.randint(1, 200000) if r < 0.85 else mutate(b'["happy", "sad"]', rng))
            path.write_bytes(blob)
            spec = str(path)
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
        check_text(blob.decode("utf-8", "surrogateescape"))  # lone surrogates, as JSON "\ud800" gives them
        return blob

    return one, (TextError,)


def target_corpus(data: Path):
    """Random folder trees: odd and non-UTF-8 names, FIFOs, folders and dangling links named like audio,
    link loops, empty folders, broken labels.csv files; scanned with and without durations."""
    import os
    import shutil
    import tempfile

    from emovox.data.corpora import scan
    from emovox.errors import CorpusError

    clip = audio_seeds(data)[0]
    bits = [b"angry", b"happy", b"sad", b"Happy", b"03-01-05-01-02-01-12", b"1001_DFA_ANG_XX", b"OAF_back_angry",
            b"x", b" ", b".", b"-", b"\xc3\xa9", b"\xff", b"\xfe\xfd", b"\xed\xa0\x80", b"\t", b"\x01"]
    work = os.fsencode(tempfile.mkdtemp(prefix="emovox-fuzz-"))

    def name(rng: random.Random) -> bytes:
        n = b"".join(rng.choice(bits) for _ in range(rng.randint(1, 3)))
        return b"_" + n if n in (b".", b"..") else n

    def one(rng: random.Random) -> bytes:
        root = os.path.join(work, b"c")
        shutil.rmtree(root, ignore_errors=True)
        folders = [b""] + [b"/".join(name(rng) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(0, 4))]
        for f in folders:
            os.makedirs(os.path.join(root, f), exist_ok=True)
        for _ in range(rng.randint(0, 8)):
            path = os.path.join(root, rng.choice(folders), name(rng) + rng.choice([b".wav", b".flac", b".txt", b""]))
            if os.path.lexists(path):
                continue
            kind = rng.choice(["clip", "clip", "empty", "junk", "fifo", "dir", "dangling", "loop"])
            if kind == "fifo":
                os.mkfifo(path)
            elif kind == "dir":
                os.makedirs(path)
            elif kind in ("dangling", "loop"):
                os.symlink(b"/nonexistent" if kind == "dangling" else root, path)
            else:
                with open(path, "wb") as fh:
                    fh.write({"clip": clip, "empty": b"", "junk": mutate(clip[:64], rng)}[kind])
        if rng.random() < 0.3:
            with open(os.path.join(root, b"labels.csv"), "wb") as fh:
                fh.write(rng.choice([b"path,label\n", b"path,label\nx.wav,angry\n", rng.randbytes(40)]))
        scan(os.fsdecode(root), rng.choice([None, "folders", "csv", "ravdess"]), with_duration=rng.random() < 0.5)
        return root

    return one, (CorpusError,)


def target_config(data: Path):
    """``emovox train --config`` files: random YAML from option names, values, tags, anchors and aliases,
    alias bombs, deep nesting, and random bytes."""
    import argparse
    import tempfile

    from emovox.commands import train
    from emovox.errors import OptionError

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    opts = parser.get_default("_train_options")
    path = Path(tempfile.mkdtemp(prefix="emovox-fuzz-")) / "config.yaml"
    keys = ["epochs", "lr", "labels", "model", "batch_size", "data_dir", "model_options", "recipe", "config",
            "num_epochs", "train_split", "x"]
    values = ["3", "0.1", "-1", "1e400", ".nan", "~", "true", "[happy, sad]", "{hidden: 32}", "&a [x, y]", "*a",
              "!!python/object:os.system x", "!!binary AAAA", "'unterminated", "cnn", "\t", "{a: 1", "<<: *a"]

    def one(rng: random.Random) -> bytes:
        r = rng.random()
        if r < 0.6:
            text = "\n".join(f"{rng.choice(keys)}: {rng.choice(values)}" for _ in range(rng.randint(0, 6))).encode()
        elif r < 0.7:
            n = rng.randint(2, 10)
            items = ["&a0 [" + ",".join(["lol"] * 9) + "]"] + [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]"
                                                               for i in range(1, n)]
            text = ("labels: [" + ", ".join(items) + "]\n").encode()
        elif r < 0.8:
            d = rng.randint(1, 20000)
            text = ("labels: " + "[" * d + "]" * d).encode()
        else:
            text = mutate(b"epochs: 3\nlabels: [happy, sad]\nmodel_options: {hidden: 32}\n", rng) \
                if rng.random() < 0.5 else rng.randbytes(rng.randint(0, 400))
        path.write_bytes(text)
        opts.read_config(path)
        return text

    return one, (OptionError,)


def target_http(data: Path):
    """The HTTP API from its OpenAPI document (schemathesis, in process): a random operation, a schema-valid
    or schema-breaking case; a 5xx or an answer that breaks the schema is a crash. A tiny random speech
    model (so cases are many) and the shipped text model."""
    import logging
    import tempfile
    import warnings

    import schemathesis
    from hypothesis.errors import NonInteractiveExampleWarning
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    from emovox.server import Settings, create_app
    from emovox.testing import create_model

    warnings.filterwarnings("ignore", category=NonInteractiveExampleWarning)
    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # "Found invalid character" per bad header
    model = create_model(Path(tempfile.mkdtemp(prefix="emovox-fuzz-")) / "tiny-cnn", temperature=0.3)
    app = create_app(Settings(model=str(model), max_upload_mb=1.0, max_duration_s=10.0, max_concurrency=2))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ops = [r.ok() for r in schema.get_all_operations()]
    strategies = [(op, mode, op.as_strategy(generation_mode=mode)) for op in ops
                  for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
                  if mode == GenerationMode.POSITIVE or op.path_parameters or op.query or op.body]
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    STATS["5xx"] = 0

    def one(rng: random.Random) -> bytes:
        op, mode, strategy = rng.choice(strategies)
        case = strategy.example()
        response = case.call()
        STATS["5xx"] += response.status_code >= 500
        case.validate_response(response, checks=checks)
        return f"{op.label} {mode}".encode()

    return one, ()


def target_websocket(data: Path):
    """``WS /stream``: a clip or silence cut into random chunks (odd and tiny sizes, empty frames), stray odd
    frames and text messages, giant frames, streams past the limit, clients that leave mid-stream; every
    final answer must equal the one-chunk answer."""
    import tempfile

    import soundfile as sf
    from fastapi.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from emovox.server import Settings, create_app
    from emovox.testing import create_model

    x, _ = sf.read(data / "ravdess" / "Actor_01" / "03-01-05-01-01-01-01.flac", dtype="int16")
    clips = {"speech": x[:32000].astype("<i2").tobytes(), "zeros": bytes(64000)}
    model = create_model(Path(tempfile.mkdtemp(prefix="emovox-fuzz-")) / "tiny-cnn", temperature=0.3)
    client = TestClient(create_app(Settings(model=str(model), text_model="none", max_upload_mb=0.25,
                                            max_duration_s=4.0, max_concurrency=2))).__enter__()

    def final(chunks, extra=()) -> dict:
        with client.websocket_connect("/stream") as ws:
            for c in chunks:
                ws.send_bytes(c)
                ws.receive_json()
            for e in extra:
                (ws.send_bytes if isinstance(e, bytes) else ws.send_text)(e)
                ws.receive_json()
            ws.send_text('{"event": "end"}')
            return ws.receive_json()

    want = {k: final([v]) for k, v in clips.items()}

    def one(rng: random.Random) -> bytes:
        kind = rng.choice(["chunks", "chunks", "chunks", "giant", "too-long", "vanish"])
        if kind == "giant":
            with client.websocket_connect("/stream") as ws:
                ws.send_bytes(bytes(rng.randint(262146, 400000) & ~1))
                assert "frame too large" in ws.receive_json()["error"]
                try:
                    ws.receive_json()
                    raise AssertionError("not closed after a giant frame")
                except WebSocketDisconnect as e:
                    assert e.code == 1009
        elif kind == "too-long":
            with client.websocket_connect("/stream") as ws:
                for _ in range(10):
                    ws.send_bytes(bytes(2 * 8000))
                    msg = ws.receive_json()
                    if msg["status"] == "error":
                        break
                assert "stream too long" in msg["error"]
        elif kind == "vanish":
            with client.websocket_connect("/stream") as ws:
                ws.send_bytes(clips["speech"][: 2 * rng.randint(1, 16000)])
        else:
            name = rng.choice(sorted(clips))
            data = clips[name]
            cuts = sorted({2 * rng.randint(0, len(data) // 2) for _ in range(rng.randint(1, 20))} | {0, len(data)})
            chunks = [data[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
            extra = [rng.choice([b"\x01", b"\x01\x02\x03", "hello", "[" * rng.randint(1, 4000), "{}"])
                     for _ in range(rng.randint(0, 3))]
            got = final(chunks, extra)
            assert got["emotion"] == want[name]["emotion"] and all(
                abs(got["scores"][k] - v) < 1e-5 for k, v in want[name]["scores"].items()), (got, want[name])
        return kind.encode()

    return one, ()


def _text_folder_mutant(src: Path, work: Path, names: tuple[str, ...]):
    """One input: a copy of ``src`` in ``work`` with one of ``names`` mutated, loaded on ONNX Runtime, restored."""
    from emovox.text import load_text_model

    def one(rng: random.Random) -> bytes:
        name = rng.choice(names)
        blob = mutate((src / name).read_bytes(), rng)
        (work / name).write_bytes(blob)
        try:
            load_text_model(work, backend="onnx")
        finally:
            (work / name).write_bytes((src / name).read_bytes())
        return blob

    return one


def target_text_model_folder(data: Path):
    """The shipped text model folder with one of its JSON files (inference_config.json, labels.json,
    onnx/runtime.json) mutated per input, loaded on ONNX Runtime."""
    import shutil
    import tempfile

    from emovox.text import TextModelError, default_model_path

    src = default_model_path()
    work = Path(tempfile.mkdtemp(prefix="emovox-fuzz-")) / "m"
    shutil.copytree(src, work)
    return _text_folder_mutant(src, work, ("inference_config.json", "labels.json", "onnx/runtime.json")), \
        (TextModelError,)


def target_text_ensemble_folder(data: Path):
    """The shipped ``ensemble`` text model folder (members: the shipped ``default`` and ``mpnet``, linked beside it)
    with its inference_config.json or labels.json mutated per input, loaded on ONNX Runtime (needs the mpnet parts)."""
    import shutil
    import tempfile

    from emovox.text import TextModelError
    from emovox.text.model import shipped_model_path

    src = shipped_model_path("ensemble")
    root = Path(tempfile.mkdtemp(prefix="emovox-fuzz-"))
    for member in ("default", "mpnet"):
        (root / member).symlink_to(shipped_model_path(member), target_is_directory=True)
    shutil.copytree(src, root / "ensemble")
    return _text_folder_mutant(src, root / "ensemble", ("inference_config.json", "labels.json")), (TextModelError,)


#: Extra counts a target reports (the HTTP target's 5xx answers).
STATS: dict[str, int] = {}

TARGETS = {"audio": target_audio, "labels": target_labels, "model-folder": target_model_folder, "text": target_text,
           "text-model-folder": target_text_model_folder, "text-ensemble-folder": target_text_ensemble_folder,
           "corpus": target_corpus, "config": target_config, "http": target_http, "websocket": target_websocket}


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
            "5xx": STATS.pop("5xx", "–"),
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
    print("| target | inputs | crashes | hangs | 5xx | slowest call (s) | peak RSS (MiB) |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['inputs']} | {r['crashes']} | {r['hangs']} | {r['5xx']} | {r['slowest_s']} "
              f"| {r['peak_rss_mib']} |")
    print(f"\nCommand: `python -m benchmarks.fuzz {' '.join(sys.argv[1:])}`; peak RSS is the process's, cumulative.")
    return 1 if any(r["crashes"] or r["hangs"] for r in rows) else 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
