#!/usr/bin/env python
"""Accuracy and calibration under the conditions users record in, on the default model's validation speakers.

Three steps, each resumable (pooled encoder states are cached per clip, degradation and seed):

    python -m benchmarks.robustness cache --copies 2      # pooled Whisper states: evaluation conditions, training copies
    python -m benchmarks.robustness fit --copies 0,1,2    # multi-condition probes, picked on validation speakers
    python -m benchmarks.robustness table --out runs/robustness   # UAR + ECE per condition, every model and peer
    python -m benchmarks.robustness adapt                 # the same, adapted to each corpus and condition (--adapt)

Evaluation clips: every clip of the validation speakers (``EVAL_PER_CORPUS`` can make it a label-stratified
subset per corpus). Their babble is made of *validation* speakers other than the clip's own, their noise and rooms are drawn
with seeds of an evaluation namespace: never the files or seeds used in training. Training copies use the
``real-world`` preset (babble of training speakers, synthetic colour noise, rooms, telephone, codecs, level).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import CORPORA, DEFAULT_DATA, per_corpus_plan

# None: every validation clip. All of them: on a 300-clip subset a perfectly calibrated model already shows an ECE
# of about 0.07 (the `floor` column), too close to the 0.08 target to tell anything.
EVAL_PER_CORPUS = {"ravdess": None, "crema-d": None, "nemo": None}
# (label, spec): the evaluation conditions, most asked-about first (a partial cache run covers those)
CONDITIONS = [
    ("clean", None), ("babble 10 dB", "babble:10"), ("pink 5 dB", "pink:5"), ("room RT60 0.6 s", "room:0.6"),
    ("telephone (8 kHz, mu-law)", "telephone"), ("MP3 32 kbit/s", "mp3:32"), ("30 dB quieter", "gain:-30"),
    ("babble 0 dB", "babble:0"), ("babble 5 dB", "babble:5"), ("babble 20 dB", "babble:20"),
    ("pink 0 dB", "pink:0"), ("pink 10 dB", "pink:10"), ("pink 20 dB", "pink:20"),
    ("white 0 dB", "white:0"), ("white 5 dB", "white:5"), ("white 10 dB", "white:10"), ("white 20 dB", "white:20"),
    ("room RT60 0.3 s", "room:0.3"), ("room RT60 1.0 s", "room:1.0"), ("Opus 12 kbit/s", "opus:12"),
    ("clipped (5 %)", "clip:5"),
]
FIRST_CONDITIONS = 7  # clean and the six the targets name: cached before the training copies
TARGETS = {"babble 10 dB": 60, "pink 5 dB": 55, "room RT60 0.6 s": 62, "telephone (8 kHz, mu-law)": 68,
           "MP3 32 kbit/s": 70}
TRAIN_PRESET = "real-world"


def evaluation_rows(val_rows, seed: int = 0):
    """The fixed evaluation subset: per corpus, every clip or a label-stratified sample."""
    rng = np.random.default_rng(seed)
    out = []
    for corpus in CORPORA:
        rows = [r for r in val_rows if r.corpus == corpus]
        n = EVAL_PER_CORPUS.get(corpus)
        if n is None or n >= len(rows):
            out += rows
            continue
        labels = sorted({r.label for r in rows})
        per = {lab: [r for r in rows if r.label == lab] for lab in labels}
        take = []
        for k, lab in enumerate(labels):
            m = n // len(labels) + (1 if k < n % len(labels) else 0)
            idx = rng.choice(len(per[lab]), size=min(m, len(per[lab])), replace=False)
            take += [per[lab][i] for i in sorted(idx)]
        out += take
    return out


def setup(data: Path, threads: int | None = None):
    """The default model's split (checked against its model_meta.json), its pooled-feature encoder on ONNX
    Runtime, and the pooled-state cache."""
    import json

    from emovox.data.cache import default_cache_dir
    from emovox.degrade.multicondition import PooledEncoder, PooledStateCache
    from emovox.inference import resolve_model_path

    plan, labels = per_corpus_plan(data, "ekman7", 0.1, seed=0)
    folder = resolve_model_path("default")[1]
    meta = json.loads((folder / "model_meta.json").read_text())
    if sorted(plan.val_speakers) != sorted(meta["split"]["val_speakers"]):
        sys.exit(f"the split differs from the shipped default's: {plan.val_speakers} vs {meta['split']['val_speakers']}")
    encoder = PooledEncoder(folder, threads=threads)
    return plan, labels, encoder, PooledStateCache(default_cache_dir(), encoder)


def _progress(desc: str):
    t0 = time.perf_counter()

    def report(done: int, total: int) -> None:
        if done % 250 == 0 or done == total:
            rate = done / max(time.perf_counter() - t0, 1e-9)
            print(f"  {desc}: {done}/{total} ({rate:.1f} clips/s)", flush=True)

    return report


def condition_degrader(spec: str, val_rows):
    from emovox.degrade import parse_spec

    return parse_spec(spec, babble=[str(r.path) for r in val_rows], babble_speakers=[r.speaker for r in val_rows],
                      room_bank="eval")


def training_degrader(train_rows, preset: str = TRAIN_PRESET):
    from emovox.degrade import parse_spec

    return parse_spec(preset, babble=[str(r.path) for r in train_rows],
                      babble_speakers=[r.speaker for r in train_rows])


def cmd_cache(args) -> None:
    from emovox.degrade.multicondition import pooled_rows

    plan, _, encoder, cache = setup(args.data, args.threads)
    ev = evaluation_rows(plan.val)
    print(f"cache {cache.dir}; {len(plan.train)} training clips, {len(plan.val)} validation clips "
          f"({len(ev)} in the degraded evaluation)", flush=True)
    pooled_rows(plan.val, cache, encoder, progress=_progress("validation, clean"))
    first, rest = CONDITIONS[1:FIRST_CONDITIONS], CONDITIONS[FIRST_CONDITIONS:]
    cache_conditions(first, ev, plan.val, cache, encoder)
    if args.skip_train:
        return cache_conditions(rest, ev, plan.val, cache, encoder)
    pooled_rows(plan.train, cache, encoder, progress=_progress("training, clean"))
    degrader = training_degrader(plan.train)
    shuffled = [plan.train[i] for i in np.random.default_rng(0).permutation(len(plan.train))]
    for copy in range(args.copies):  # in a shuffled order: a stopped job leaves a random part of each copy
        pooled_rows(shuffled, cache, encoder, degrader=degrader, namespace="train", copy=copy,
                    progress=_progress(f"training, {TRAIN_PRESET} copy {copy}"))
        if copy == 0:  # the rest of the table before more copies: a stopped job has the table's rows first
            cache_conditions(rest, ev, plan.val, cache, encoder)
    for preset, copy in args.extra:  # a copy of another preset, e.g. phone:2 (its own seeds: copy number 2)
        pooled_rows(shuffled, cache, encoder, degrader=training_degrader(plan.train, preset), namespace="train",
                    copy=copy, progress=_progress(f"training, {preset} copy {copy}"))


def cache_conditions(conditions, ev, val_rows, cache, encoder) -> None:
    from emovox.degrade.multicondition import pooled_rows

    for name, spec in conditions:
        pooled_rows(ev, cache, encoder, degrader=condition_degrader(spec, val_rows), namespace="eval",
                    progress=_progress(f"validation, {name}"))


def cached_features(plan, labels, cache, copies: int, extra=()):
    """Everything the cache holds for the fit: training rows clean + each copy (and each ``(preset, copy)`` of
    ``extra``), validation clean + each condition. Returns ``(train, val)``: train ``{copy: (x, y)}`` (copy -1 is
    clean; an extra copy's key is ``(preset, copy)``), val ``{condition: (x, y, corpora)}``."""
    from emovox.degrade.multicondition import pooled_rows

    index = {lab: i for i, lab in enumerate(labels)}

    def take(rows, **kw):
        x, kept = pooled_rows(rows, cache, None, compute=False, **kw)
        return x, np.array([index[rows[i].label] for i in kept]), np.array([rows[i].corpus for i in kept])

    train = {-1: take(plan.train)[:2]}
    degrader = training_degrader(plan.train)
    for copy in range(copies):
        train[copy] = take(plan.train, degrader=degrader, namespace="train", copy=copy)[:2]
    for preset, copy in extra:
        train[(preset, copy)] = take(plan.train, degrader=training_degrader(plan.train, preset), namespace="train",
                                     copy=copy)[:2]
    ev = evaluation_rows(plan.val)
    val = {"clean": take(plan.val)}
    for name, spec in CONDITIONS[1:]:
        got = take(ev, degrader=condition_degrader(spec, plan.val), namespace="eval")
        if len(got[1]) == len(ev):
            val[name] = got
    return train, val


def condition_scores(logits: np.ndarray, y: np.ndarray, corpora: np.ndarray, temperature: float) -> dict:
    """UAR per corpus (argmax over every label, recall averaged over the classes the corpus has), their means,
    ECE and mean confidence."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    from emovox.training.evaluation import expected_calibration_error, softmax

    warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")  # argmax over all labels, by design
    probs = softmax(logits, temperature)
    pred = probs.argmax(axis=1)
    out = {c: 100 * balanced_accuracy_score(y[corpora == c], pred[corpora == c]) for c in CORPORA
           if (corpora == c).any()}
    out["uar_ravdess_cremad"] = (out["ravdess"] + out["crema-d"]) / 2
    out["uar_mean3"] = float(np.mean([out[c] for c in CORPORA]))
    out["ece"] = expected_calibration_error(probs, y)
    out["ece_floor"] = ece_floor(probs)
    out["confidence"] = float(probs.max(axis=1).mean())
    return out


def ece_floor(probs: np.ndarray, draws: int = 200, seed: int = 0) -> float:
    """The ECE a perfectly calibrated model with these confidences would show on this many clips: labels drawn from
    the model's own probabilities, ECE averaged over ``draws`` (the sampling noise an ECE figure cannot go under)."""
    from emovox.training.evaluation import expected_calibration_error

    rng = np.random.default_rng(seed)
    cum = np.cumsum(probs, axis=1)
    eces = [expected_calibration_error(probs, (rng.random((len(probs), 1)) > cum).sum(axis=1).clip(max=probs.shape[1] - 1))
            for _ in range(draws)]
    return float(np.mean(eces))


def selection_score(scores: dict) -> float:
    """What settings are chosen by: half clean, half the mean over the degraded conditions (mean of 3 corpora)."""
    degraded = [v["uar_mean3"] for k, v in scores.items() if k != "clean"]
    return 0.5 * scores["clean"]["uar_mean3"] + 0.5 * float(np.mean(degraded))


def named_probes(encoder, items: list[str]) -> dict[str, tuple[dict, float, np.ndarray]]:
    """The shipped default's probe and each ``NAME=FILE.npz`` saved by ``fit``: ``{name: (probe, temperature,
    quality factors in QUALITY_KINDS order)}``."""
    import json

    from emovox.degrade.quality import QUALITY_KINDS

    def factors(d: dict | None) -> np.ndarray:
        return np.array([(d or {}).get(k, 1.0) for k in QUALITY_KINDS])

    model = encoder.model
    shipped = json.loads((model.path.parent.parent / "model_config.json").read_text()).get("quality_temperature")
    probes = {"default (shipped)": (model.probe_parameters(), model.temperature, factors(shipped))}
    for item in items:
        name, _, file = item.partition("=")
        z = np.load(file)
        qt = json.loads(str(z["quality_temperature"])) if "quality_temperature" in z else None
        probes[name] = ({k: z[k] for k in ("mean", "std", "weight", "bias")}, float(z["temperature"]), factors(qt))
    return probes


def validation_folds(plan, val) -> dict[str, np.ndarray]:
    """Each validation condition's clips' fold (0 or 1, from the clip's path: a clip is in the same fold under every
    condition), in the order :func:`cached_features` returns them."""
    import zlib

    ev = evaluation_rows(plan.val)
    out = {}
    for cond, (_, y, _) in val.items():
        rows = plan.val if cond == "clean" else ev
        if len(rows) != len(y):
            sys.exit(f"{cond}: {len(y)} of {len(rows)} clips cached; run `python -m benchmarks.robustness cache`")
        out[cond] = np.array([zlib.crc32(str(r.path).encode()) % 2 for r in rows])
    return out


def fit_calibration(logits: dict, val: dict, flags: dict, keep: dict | None = None) -> tuple[float, np.ndarray]:
    """A temperature and a factor per quality issue (``nll_quality_temperature``) over every validation condition
    together (``keep``: a boolean mask per condition, the clips to fit on)."""
    from emovox.training.evaluation import nll_quality_temperature

    def cat(parts: dict) -> np.ndarray:
        return np.concatenate([v if keep is None else v[keep[c]] for c, v in parts.items()])

    return nll_quality_temperature(cat(logits), cat({c: v[1] for c, v in val.items()}), cat({c: flags[c] for c in val}))


def clip_temperatures(t: float, factors: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Each clip's temperature ``(n, 1)``: ``t`` times the factors of its quality issues."""
    return (t * np.prod(np.where(flags, factors, 1.0), axis=1))[:, None]


def calibrated_scores(probe, val: dict, flags: dict, folds: dict) -> tuple[float, dict, dict]:
    """Fit the probe's calibration (temperature and quality factors) on every validation condition and score it.
    Each condition also gets ``ece_crossfit`` (calibration fit on the other fold of clips, so no clip is scored by
    a calibration fit on it) and ``ece_one_temperature`` (one temperature, no factors)."""
    from emovox.degrade.multicondition import probe_logits
    from emovox.degrade.quality import QUALITY_KINDS
    from emovox.training.evaluation import expected_calibration_error, nll_temperature, softmax

    logits = {c: probe_logits(probe, x) for c, (x, _, _) in val.items()}
    t, factors = fit_calibration(logits, val, flags)
    scores = {c: condition_scores(logits[c], y, corp, clip_temperatures(t, factors, flags[c]))
              for c, (_, y, corp) in val.items()}
    cross = {c: np.ones((len(v), 1)) for c, v in folds.items()}
    for h in (0, 1):
        fit_on = {c: v != h for c, v in folds.items()}
        th, fh = fit_calibration(logits, val, flags, fit_on)
        for c in val:
            cross[c][~fit_on[c]] = clip_temperatures(th, fh, flags[c][~fit_on[c]])
    one = nll_temperature(np.concatenate(list(logits.values())), np.concatenate([v[1] for v in val.values()]))
    for c, (_, y, _) in val.items():
        scores[c]["ece_crossfit"] = expected_calibration_error(softmax(logits[c], cross[c]), y)
        scores[c]["ece_one_temperature"] = expected_calibration_error(softmax(logits[c], one), y)
    return t, dict(zip(QUALITY_KINDS, map(float, factors))), scores


def cmd_fit(args) -> None:
    import json

    from emovox.degrade.multicondition import fit_probe, probe_logits
    from emovox.models.ssl import PROBE_C

    plan, labels, encoder, cache = setup(args.data, args.threads)
    train, val = cached_features(plan, labels, cache, max(args.copies), args.extra)
    folds, flags = validation_folds(plan, val), condition_quality(plan, args.out)
    print(f"validation conditions cached: {len(val)}; training copies: "
          + ", ".join(f"{k}: {len(v[1])}" for k, v in train.items()), flush=True)
    shipped, t, factors = named_probes(encoder, [])["default (shipped)"]
    scores = {c: condition_scores(probe_logits(shipped, x), y, corp, clip_temperatures(t, factors, flags[c]))
              for c, (x, y, corp) in val.items()}
    results = {"shipped default": {"scores": scores, "temperature": t}}
    for k in args.copies:
        # a copy still being cached counts from half of the clips on (the cache job runs copies in a shuffled order)
        keys = [*range(-1, k), *args.extra]
        parts = [train[c] for c in keys if len(train[c][1]) >= 0.5 * len(train[-1][1])]
        if len(parts) != len(keys) or not len(train[-1][1]):
            print(f"K={k}: copies not all cached, skipped", flush=True)
            continue
        x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        # clean rows first: weighted clean_weight each, the copies 1 (the standardisation still counts rows)
        weight = np.concatenate([np.full(len(p[1]), args.clean_weight if i == 0 else 1.0) for i, p in enumerate(parts)])
        for c in (args.c or PROBE_C):
            t0 = time.perf_counter()
            probe = fit_probe(x, y, len(labels), c, sample_weight=weight)
            temperature, factors, scores = calibrated_scores(probe, val, flags, folds)
            name = (f"K={k} C={c:g}" + "".join(f" +{p}" for p, _ in args.extra)
                    + (f" clean x{args.clean_weight:g}" if args.clean_weight != 1 else ""))
            results[name] = {"scores": scores, "temperature": temperature, "quality_temperature": factors,
                             "copies": k, "C": c, "selection": selection_score(scores)}
            np.savez(args.out / f"probe {name.replace('=', '').replace(' x', ' w')}.npz", **probe, temperature=temperature,
                     quality_temperature=json.dumps(factors))
            print(f"{name}: clean {scores['clean']['uar_mean3']:.1f}, selection {selection_score(scores):.2f}, "
                  f"T {temperature:.2f}, factors {factors} ({time.perf_counter() - t0:.0f} s)", flush=True)
    (args.out / args.results).write_text(json.dumps(results, indent=1))
    print_table(results, list(val))


def print_table(results: dict, conditions: list[str], metric: str = "uar_ravdess_cremad") -> None:
    """A Markdown table: a row per condition, ``UAR / ECE`` per model (UAR alone for one corpus: ECE is over all
    the condition's clips), and the mean over degraded conditions."""
    names = list(results)
    with_ece = metric not in CORPORA
    print(f"UAR ({metric}) / ECE (its floor: a calibrated model's ECE on as many clips)" if with_ece
          else f"UAR ({metric})")
    print("| condition | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")

    def cell(n, cond):
        v = results[n]["scores"].get(cond)
        if v is None:
            return "–"
        floor = f" ({v['ece_floor']:.3f})" if "ece_floor" in v else ""
        return f"{v[metric]:.1f} / {v['ece']:.3f}{floor}" if with_ece else f"{v[metric]:.1f}"

    for cond in conditions:
        print(f"| {cond} | " + " | ".join(cell(n, cond) for n in names) + " |")
    means = []
    for n in names:
        vals = [results[n]["scores"][c][metric] for c in conditions if c != "clean" and c in results[n]["scores"]]
        means.append(f"{np.mean(vals):.1f}" if len(vals) == len(conditions) - 1 else "–")
    print("| mean of degraded conditions | " + " | ".join(means) + " |")


def degraded_waves(ev, val_rows, spec):
    """The evaluation clips under one condition, as the cache's entries were made (same seeds)."""
    from emovox.audio import load_audio
    from emovox.degrade.multicondition import copy_seed

    waves = [load_audio(r.path, sample_rate_hz=16000) for r in ev]
    if spec is None:
        return waves
    d = condition_degrader(spec, val_rows)
    return [d.degrade(w, copy_seed(str(r.path), "eval", 0), speaker=r.speaker)[0] for w, r in zip(waves, ev)]


def condition_quality(plan, out: Path, progress: bool = True) -> dict[str, np.ndarray]:
    """Which of ``QUALITY_KINDS`` :func:`emovox.degrade.quality.measure_quality` flags for every evaluation clip under
    every condition (``{condition: bool (n_clips, 4)}``), the clips degraded as the cache's entries were; kept in
    ``out/quality.npz``, one condition at a time, so a stopped run resumes."""
    from emovox.degrade.quality import QUALITY_KINDS, measure_quality

    file = out / "quality.npz"
    done = dict(np.load(file)) if file.is_file() else {}
    for name, spec in CONDITIONS:
        if name not in done:
            rows = plan.val if spec is None else evaluation_rows(plan.val)
            flags = [measure_quality(w).kinds for w in degraded_waves(rows, plan.val, spec)]
            done[name] = np.array([[k in f for k in QUALITY_KINDS] for f in flags])
            np.savez(file, **done)
            if progress:
                print(f"quality, {name}: " + ", ".join(f"{k} {m:.0%}" for k, m in zip(QUALITY_KINDS, done[name].mean(0))),
                      flush=True)
    return done


def egemaps_svm(plan, labels, seed: int = 0, n_train: int = 3000):
    """The eGeMAPSv02 + RBF-SVM peer (``speech_benchmark.py``'s), fit on a label-stratified sample of the
    clean training clips (C by grouped inner CV); returns ``(smile, fitted pipeline)``."""
    import opensmile
    from sklearn.model_selection import GridSearchCV, GroupKFold, train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from benchmarks.speech_benchmark import SVM_C_GRID, egemaps_features
    from emovox.data.cache import default_cache_dir

    rows = plan.train
    if len(rows) > n_train:
        rows, _ = train_test_split(rows, train_size=n_train, random_state=seed, stratify=[r.label for r in rows])
    x = egemaps_features(rows, default_cache_dir(), 2)
    y = np.array([labels.index(r.label) for r in rows])
    pipe = make_pipeline(StandardScaler(), SVC(kernel="rbf", gamma="scale", class_weight="balanced",
                                               probability=True, random_state=seed))
    search = GridSearchCV(pipe, {"svc__C": SVM_C_GRID}, scoring="balanced_accuracy", cv=GroupKFold(n_splits=4))
    search.fit(x, y, groups=[r.speaker for r in rows])
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals)
    return smile, search.best_estimator_


def peer_logits(name, waves, labels, peers) -> np.ndarray:
    """Log-probabilities of a waveform model or the eGeMAPS peer over the model's labels (temperature 1)."""
    if name == "eGeMAPS + SVM":
        smile, svm = peers[name]
        x = np.stack([smile.process_signal(w, 16000).to_numpy(dtype=np.float64)[0] for w in waves])
        probs = np.full((len(waves), len(labels)), 1e-9)
        probs[:, svm.classes_] = svm.predict_proba(x)
        return np.log(probs)
    model = peers[name]
    index = [model.labels.index(lab) for lab in labels]
    return np.log(np.maximum(model.probabilities(waves)[:, index], 1e-9))


def cmd_table(args) -> None:
    import json

    import emovox
    from emovox.degrade.multicondition import probe_logits

    plan, labels, encoder, cache = setup(args.data, args.threads)
    train, val = cached_features(plan, labels, cache, 0)
    ev = evaluation_rows(plan.val)
    probes = named_probes(encoder, args.probe)
    flags = condition_quality(plan, args.out)
    table = args.out / "table.json"  # earlier rows are kept: peers measured once, probes added later
    results = json.loads(table.read_text()) if table.is_file() else {}
    results.update({name: {"scores": {}} for name in [*probes, *args.peers]})
    peers = {name: emovox.load_model(name) for name in args.peers if name != "eGeMAPS + SVM"}
    if "eGeMAPS + SVM" in args.peers:
        peers["eGeMAPS + SVM"] = egemaps_svm(plan, labels)
    for cond, spec in CONDITIONS:
        if cond not in val:
            continue
        x, y, corp = val[cond]
        for name, (probe, t, factors) in probes.items():
            results[name]["scores"][cond] = condition_scores(probe_logits(probe, x), y, corp,
                                                             clip_temperatures(t, factors, flags[cond]))
        if args.peers:
            rows = plan.val if cond == "clean" else ev
            waves = degraded_waves(rows, plan.val, spec)
            y_rows = np.array([labels.index(r.label) for r in rows])
            c_rows = np.array([r.corpus for r in rows])
            for name in args.peers:
                z = peer_logits(name, waves, labels, peers)
                results[name]["scores"][cond] = condition_scores(z, y_rows, c_rows, 1.0)
        print(f"{cond} done", flush=True)
    table.write_text(json.dumps(results, indent=1))
    print_table(results, [c for c, _ in CONDITIONS if c in val])


def adapted_logits(probe, x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The probe's logits with each group's rows standardised by that group's own mean and spread (what
    ``emovox classify FOLDER --adapt`` does to a folder of one domain), instead of the training rows'."""
    from emovox.degrade.multicondition import probe_logits

    out = np.zeros((len(x), len(probe["bias"])))
    for g in np.unique(groups):
        m = groups == g
        own = {**probe, "mean": x[m].mean(axis=0), "std": np.maximum(x[m].std(axis=0), 1e-3)}
        out[m] = probe_logits(own, x[m])
    return out


def cmd_adapt(args) -> None:
    """UAR and ECE per condition and corpus: each probe as trained, and adapted to each (corpus, condition) group of
    clips (a folder of one domain: 90-1149 clips, all above MIN_ADAPTATION_CLIPS)."""
    import json

    from emovox.defaults import MIN_ADAPTATION_CLIPS
    from emovox.degrade.multicondition import probe_logits

    plan, labels, encoder, cache = setup(args.data, args.threads)
    _, val = cached_features(plan, labels, cache, 0)
    smallest = min(n for _, _, corp in val.values() for n in np.unique(corp, return_counts=True)[1])
    if smallest < MIN_ADAPTATION_CLIPS:
        sys.exit(f"a (corpus, condition) group has {smallest} clips, fewer than --adapt takes ({MIN_ADAPTATION_CLIPS})")
    probes = named_probes(encoder, args.probe)
    flags = condition_quality(plan, args.out)
    results = {}
    for name, (probe, t, factors) in probes.items():
        for mode in ("as trained", "adapted"):
            key = f"{name}, {mode}"
            results[key] = {"scores": {}}
            for cond, (x, y, corp) in val.items():
                z = probe_logits(probe, x) if mode == "as trained" else adapted_logits(probe, x, corp)
                results[key]["scores"][cond] = condition_scores(z, y, corp, clip_temperatures(t, factors, flags[cond]))
    (args.out / "adapt.json").write_text(json.dumps(results, indent=1))
    conditions = list(val)
    print_table(results, conditions)
    for corpus in CORPORA:
        print_table(results, conditions, metric=corpus)


def cmd_ship(args) -> None:
    """Write a model folder (the shipped default's files, this probe's standardisation, linear layer and
    temperature), its clean validation report and rebuilt runtime graph; move it into place whole."""
    import json
    import shutil
    import tempfile

    import torch

    from emovox.atomic import move_into_place
    from emovox.degrade.multicondition import probe_logits
    from emovox.export.runtime_build import build_runtime
    from emovox.modelio import load_model_dir, save_model
    from emovox.training.evaluation import compute_metrics, write_report

    plan, labels, encoder, cache = setup(args.data, args.threads)
    z = np.load(args.probe)
    probe = {k: z[k] for k in ("mean", "std", "weight", "bias")}
    temperature = float(z["temperature"])
    quality_temperature = json.loads(str(z["quality_temperature"])) if "quality_temperature" in z else None
    src = encoder.model.path.parent.parent
    staging = Path(tempfile.mkdtemp(prefix=".ship-", dir=args.out.parent))
    try:  # a failure leaves the shipped folder as it was and no staging folder beside it
        shutil.copytree(src, staging, dirs_exist_ok=True)
        shutil.rmtree(staging / "onnx")
        loaded = load_model_dir(staging)
        net = loaded.pipeline.model
        with torch.no_grad():
            net.pooled_mean.copy_(torch.from_numpy(probe["mean"]))
            net.pooled_std.copy_(torch.from_numpy(probe["std"]))
        net.set_linear(probe["weight"], probe["bias"])
        save_model(staging, net, {**loaded.config, "temperature": temperature, "quality_temperature": quality_temperature})
        _, val = cached_features(plan, labels, cache, 0)
        x, y, _ = val["clean"]
        if len(y) < len(plan.val):  # the report must describe every validation clip, not what happens to be cached
            raise SystemExit(f"{cache.dir}: {len(y)} of {len(plan.val)} validation clips cached for this encoder; "
                             "run `python -m benchmarks.robustness cache --skip-train` first")
        metrics = compute_metrics(y, probe_logits(probe, x).argmax(axis=1), labels)
        write_report(staging, {**metrics, "split": "val", "split_kind": "speaker"}, title="default, validation speakers")
        meta = json.loads((staging / "model_meta.json").read_text())
        meta.update({"temperature": temperature, "quality_temperature": quality_temperature, "command": " ".join(["python -m benchmarks.robustness", *sys.argv[1:]]),
                     "augment": json.loads(args.augment_note) if args.augment_note else None})
        (staging / "model_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        build_runtime(staging)
        move_into_place(staging, args.out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"wrote {args.out}: clean validation UAR {100 * metrics['uar']:.1f}")


def extra_copies(text: str) -> list[tuple[str, int]]:
    out = []
    for item in filter(None, text.split(",")):
        preset, _, copy = item.partition(":")
        out.append((preset, int(copy)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache", help="pooled encoder states of the evaluation conditions and training copies")
    c.add_argument("--copies", type=int, default=2, help="degraded copies of each training clip")
    c.add_argument("--skip-train", action="store_true", help="only the evaluation conditions")
    f = sub.add_parser("fit", help="multi-condition probes from the cache, chosen on validation speakers")
    f.add_argument("--copies", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2],
                   help="numbers of degraded copies per training clip to compare (0: clean only)")
    f.add_argument("--c", type=lambda s: [float(x) for x in s.split(",")], default=None,
                   help="inverse L2 strengths (default: emovox's probe grid)")
    f.add_argument("--results", default="fit.json", help="file name of the results under --out")
    f.add_argument("--clean-weight", type=float, default=1.0,
                   help="sample weight of the clean rows (the copies' is 1): K weights clean as all its copies")
    f.add_argument("--out", type=Path, default=Path("runs/robustness"))
    for q in (c, f):
        q.add_argument("--extra", type=extra_copies, default=[],
                       help="copies of other presets besides the real-world ones, PRESET:COPY[,...] (e.g. phone:2)")
    t = sub.add_parser("table", help="UAR and ECE per condition: the shipped default, saved probes, peers")
    t.add_argument("--probe", action="append", default=[], help="NAME=FILE.npz: a probe saved by 'fit'")
    t.add_argument("--peers", type=lambda s: [x for x in s.split(",") if x], default=["crnn", "fast", "eGeMAPS + SVM"])
    t.add_argument("--out", type=Path, default=Path("runs/robustness"))
    a = sub.add_parser("adapt", help="each probe as trained and adapted to each corpus and condition's clips")
    a.add_argument("--probe", action="append", default=[], help="NAME=FILE.npz: a probe saved by 'fit'")
    a.add_argument("--out", type=Path, default=Path("runs/robustness"))
    h = sub.add_parser("ship", help="write a model folder from a probe saved by 'fit'")
    h.add_argument("--probe", type=Path, required=True)
    h.add_argument("--out", type=Path, required=True, help="the model folder to write (replaced whole)")
    h.add_argument("--augment-note", default=None, help="JSON recorded as model_meta.json's 'augment'")
    for q in (c, f, t, a, h):
        q.add_argument("--data", type=Path, default=DEFAULT_DATA)
        q.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if getattr(args, "out", None) is not None and args.command != "ship":
        args.out.mkdir(parents=True, exist_ok=True)
    {"cache": cmd_cache, "fit": cmd_fit, "table": cmd_table, "adapt": cmd_adapt, "ship": cmd_ship}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
