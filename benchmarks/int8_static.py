"""Static (calibrated) int8 of selected encoder layers of the default model against its float32 graph (issue 26).

    python -m benchmarks.int8_static [--calib 64] [--val 300] [--variants ff,attn,all] [--select 40] [--json OUT]

``onnxruntime.quantization.quantize_static`` on the default model's materialised float32 graph: QDQ format, int8
weights per output channel, uint8 activations with scales calibrated (MinMax, or ``--method percentile``) on
``--calib`` label-stratified *training* clips of the shipped default's split, only the weight matrix products
a variant names (``ff``: the feed-forward layers' fc1 and fc2; ``attn``: the attention's q, k, v and output
projections; ``all``: both; ``ff-late``/``ff-early``: fc1 and fc2 of layers 3-5 or 0-2; with ``--select N``,
``selected``: the groups chosen on N other training clips, :func:`select`). Each quantised graph is
held to the rule quantised graphs ship under (:func:`emovox.runtime.onnx_materialise.quantised_graph_ships`: top-1
agreement with float32 at least 99 % and UAR within 0.5 point) on ``--val`` label-stratified clips of the
validation speakers (all 1149 with ``--val 0``), and timed against float32 on 16 of them (ONNX Runtime with the
shipped session settings, variants alternated round by round, medians of wall and process CPU time per clip).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_DATA, per_corpus_plan

LAYERS = range(6)
VARIANTS = {
    "ff": [f"layers.{i}/{p}/" for i in LAYERS for p in ("fc1", "fc2")],
    "ff-early": [f"layers.{i}/{p}/" for i in (0, 1, 2) for p in ("fc1", "fc2")],
    "ff-late": [f"layers.{i}/{p}/" for i in (3, 4, 5) for p in ("fc1", "fc2")],
    "attn": [f"layers.{i}/self_attn/{p}/" for i in LAYERS for p in ("q_proj", "k_proj", "v_proj", "out_proj")],
    "all": [f"layers.{i}/" for i in LAYERS],
}


def stratified(rows, n: int, seed: int):
    """``n`` rows, as many of each label as the labels allow (all rows when ``n`` is 0 or too large)."""
    if not n or n >= len(rows):
        return list(rows)
    rng = np.random.default_rng(seed)
    labels = sorted({r.label for r in rows})
    out = []
    for k, lab in enumerate(labels):
        pool = [r for r in rows if r.label == lab]
        m = min(len(pool), n // len(labels) + (1 if k < n % len(labels) else 0))
        out += [pool[i] for i in sorted(rng.choice(len(pool), size=m, replace=False))]
    return out


def _decode(rows, min_samples: int) -> list[np.ndarray]:
    from emovox.audio import load_audio

    waves = [load_audio(r.path, sample_rate_hz=16000)[None] for r in rows]
    return [np.pad(w, ((0, 0), (0, max(0, min_samples - w.shape[1])))) for w in waves]


def matmuls(float_graph: Path, patterns: list[str]) -> list[str]:
    """The encoder's weight matrix products whose names hold one of ``patterns`` (``layers.3/fc1/``...)."""
    import onnx

    model = onnx.load(str(float_graph), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name.startswith("/whisper_encoder/")
            and any(i in weights for i in n.input) and any(f"/{p}" in n.name for p in patterns)]


def quantise(float_graph: Path, out: Path, nodes: list[str], calib: list[np.ndarray], method: str,
             cache: Path) -> None:
    """Writes the static-int8 graph with ``nodes`` quantised; the activation ranges are calibrated on ``calib``
    once and kept in ``cache`` (every matrix product's, so any subset of nodes reuses them)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            w = next(self.it, None)
            return None if w is None else {"waveform": w}

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(float_graph), str(pre), skip_optimization=True, skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                    nodes_to_quantize=nodes, calibrate_method={"minmax": CalibrationMethod.MinMax,
                                                               "percentile": CalibrationMethod.Percentile}[method],
                    calibration_cache_path=cache, extra_options={"CalibTensorRangeSymmetric": False})
    pre.unlink()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timing(sessions: dict, waves: list[np.ndarray], rounds: int = 4) -> dict:
    """Wall and CPU ms per clip of each session on the same clips, one clip per run, alternated round by round."""
    wall: dict = {k: [] for k in sessions}
    cpu: dict = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, {"waveform": waves[0]})
    for r in range(rounds):
        for k in list(sessions)[:: 1 if r % 2 == 0 else -1]:
            t, c = time.perf_counter(), _cpu()
            for w in waves:
                sessions[k].run(None, {"waveform": w})
            wall[k].append(1000 * (time.perf_counter() - t) / len(waves))
            cpu[k].append(1000 * (_cpu() - c) / len(waves))
    return {k: {"wall_ms": statistics.median(wall[k]), "cpu_ms": statistics.median(cpu[k])} for k in sessions}


def _open(graph: Path, spin: bool):
    """A fresh session with the shipped settings (2 threads); not :func:`session`'s cache: files are rebuilt."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 2, 1, 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])


def _logits(sess, waves: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([sess.run(None, {"waveform": w})[0] for w in waves])


def select(ctx: dict, probe: list[np.ndarray], tmp: Path, max_change: float | None = None,
           alone: dict | None = None) -> dict:
    """The ``selected`` variant, chosen on training clips held out of calibration (never on validation clips): each
    group of matrix products alone (a layer's q/k/v projections, its output projection, fc1, fc2; ``alone``: these
    figures from an earlier run's JSON), then the groups that changed no answer alone added from the least to the
    most disturbing (mean logit change), each kept only if every probe clip keeps its float32 answer and, with
    ``max_change``, the mean logit change of all kept groups together stays within it."""
    ref = _logits(ctx["float"], probe)

    def trial(patterns: list[str], name: str) -> dict:
        quantise(ctx["graph"], tmp / f"{name}.onnx", matmuls(ctx["graph"], patterns), ctx["calib"], ctx["method"],
                 tmp / "ranges.json")
        d = _logits(_open(tmp / f"{name}.onnx", ctx["spin"]), probe) - ref
        (tmp / f"{name}.onnx").unlink()
        return {"flips": int(((d + ref).argmax(1) != ref.argmax(1)).sum()),
                "mean_change": float(np.abs(d).mean()), "max_change": float(np.abs(d).max())}

    groups = {f"{i}.{g}": [f"layers.{i}/{p}/" for p in ps] for i in LAYERS for g, ps in
              (("qkv", ("self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj")),
               ("out", ("self_attn/out_proj",)), ("fc1", ("fc1",)), ("fc2", ("fc2",)))}
    alone = alone or {g: trial(ps, g.replace(".", "_")) for g, ps in groups.items()}
    print(json.dumps(alone), flush=True)
    chosen: list[str] = []
    curve = []
    for g in sorted((g for g in alone if alone[g]["flips"] == 0), key=lambda g: alone[g]["mean_change"]):
        r = trial([p for c in [*chosen, g] for p in groups[c]], "greedy")
        curve.append({"add": g, **r, "kept": r["flips"] == 0 and (max_change is None or r["mean_change"] <= max_change)})
        print(json.dumps(curve[-1]), flush=True)
        if curve[-1]["kept"]:
            chosen.append(g)
        elif max_change is not None and r["mean_change"] > max_change:
            break  # the groups after it disturb more alone
    VARIANTS["selected"] = [p for c in chosen for p in groups[c]]
    return {"probe_clips": len(probe), "max_change": max_change, "alone": alone, "curve": curve, "chosen": chosen}


def _setup(n_calib: int, n_val: int, n_probe: int, method: str) -> dict:
    """The shipped default's float32 graph, its split (checked), and the decoded calibration, probe and validation
    clips (label-stratified; calibration and probe clips are training clips, disjoint)."""
    from emovox.inference import resolve_model_path
    from emovox.runtime.onnx_backend import _read_runtime
    from emovox.runtime.onnx_materialise import materialise

    folder = resolve_model_path("default")[1]
    plan, _ = per_corpus_plan(DEFAULT_DATA, "ekman7", 0.1, 0)
    meta = json.loads((folder / "model_meta.json").read_text())
    assert sorted(plan.val_speakers) == sorted(meta["split"]["val_speakers"]), "not the shipped default's split"
    manifest = _read_runtime(folder / "onnx" / "model.onnx")
    calib_rows = stratified(plan.train, n_calib, 1)
    taken = {str(r.path) for r in calib_rows}
    probe_rows = stratified([r for r in plan.train if str(r.path) not in taken], n_probe, 2)
    val_rows = stratified(plan.val, n_val, 0)
    spin = bool(manifest.get("intra_op_spinning", True))
    graph = materialise(folder / "onnx" / "model.onnx", manifest)
    return {"graph": graph, "labels": manifest["labels"], "spin": spin, "method": method, "val_rows": val_rows,
            "calib": _decode(calib_rows, manifest["min_samples"]), "probe": _decode(probe_rows, manifest["min_samples"]),
            "val": _decode(val_rows, manifest["min_samples"]), "float": _open(graph, spin)}


def run(n_calib: int, n_val: int, variants: list[str], method: str, n_probe: int = 0, **selection) -> dict:
    from sklearn.metrics import balanced_accuracy_score

    from emovox.runtime.onnx_materialise import quantised_graph_ships

    ctx = _setup(n_calib, n_val, n_probe, method)
    val, labels = ctx["val"], ctx["labels"]
    y = np.array([labels.index(r.label) for r in ctx["val_rows"]])
    sessions = {"float32": ctx["float"]}
    out: dict = {"calibration_clips": len(ctx["calib"]), "validation_clips": len(val), "method": method,
                 "variants": {}}
    tmp = Path(tempfile.mkdtemp(prefix="emovox-int8-"))
    try:
        if n_probe:
            out["selection"] = select(ctx, ctx["probe"], tmp, **selection)
            variants = [*variants, "selected"]
        for v in variants:
            t = time.perf_counter()
            nodes = matmuls(ctx["graph"], VARIANTS[v])
            quantise(ctx["graph"], tmp / f"{v}.onnx", nodes, ctx["calib"], method, tmp / "ranges.json")
            sessions[v] = _open(tmp / f"{v}.onnx", ctx["spin"])
            out["variants"][v] = {"matmuls": len(nodes), "build_s": time.perf_counter() - t,
                                  "mb": (tmp / f"{v}.onnx").stat().st_size / 1e6}
            print(f"{v}: {len(nodes)} matrix products quantised in {time.perf_counter() - t:.0f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the sessions hold what they loaded
    logits = {k: _logits(s, val) for k, s in sessions.items()}
    ref = logits["float32"].argmax(1)
    out["uar_float32"] = float(balanced_accuracy_score(y, ref))
    for v in variants:
        pred = logits[v].argmax(1)
        agreement, uar = float((pred == ref).mean()), float(balanced_accuracy_score(y, pred))
        out["variants"][v].update({"agreement": agreement, "uar": uar,
                                   "max_abs_logit_diff": float(np.abs(logits[v] - logits["float32"]).max()),
                                   "ships": quantised_graph_ships(agreement, out["uar_float32"], uar)})
    out["timing"] = timing(sessions, val[:16])
    _report(out, list(sessions))
    return out


def _report(out: dict, names: list[str]) -> None:
    speed = out["timing"]
    print("| graph | top-1 agreement | UAR | largest logit change | ms per clip (wall) | CPU ms per clip | "
          "× float32 (CPU) | ships |\n|---|---|---|---|---|---|---|---|")
    for k in names:
        r = out["variants"].get(k, {"agreement": 1.0, "uar": out["uar_float32"], "max_abs_logit_diff": 0.0,
                                    "ships": True})
        print(f"| {k} | {100 * r['agreement']:.1f} % | {100 * r['uar']:.1f} | {r['max_abs_logit_diff']:.2f} | "
              f"{speed[k]['wall_ms']:.0f} | {speed[k]['cpu_ms']:.0f} | "
              f"{speed['float32']['cpu_ms'] / speed[k]['cpu_ms']:.2f} | {'yes' if r['ships'] else 'no'} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--val", type=int, default=300, help="label-stratified validation clips (0: all)")
    ap.add_argument("--variants", default="ff,attn,all")
    ap.add_argument("--method", choices=["minmax", "percentile"], default="minmax")
    ap.add_argument("--select", type=int, default=0, metavar="N",
                    help="choose the layers to quantise on N training clips held out of calibration (variant 'selected')")
    ap.add_argument("--json", default=None)
    ap.add_argument("--max-change", type=float, default=None, help="--select: the largest mean logit change the "
                    "selected groups may make together on the probe clips")
    ap.add_argument("--alone", default=None, help="--select: each group's figures alone from this earlier JSON")
    a = ap.parse_args(argv)
    alone = json.loads(Path(a.alone).read_text())["selection"]["alone"] if a.alone else None
    res = run(a.calib, a.val, [v for v in a.variants.split(",") if v], a.method, a.select, max_change=a.max_change,
              alone=alone)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
