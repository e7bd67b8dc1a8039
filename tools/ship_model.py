"""Copy a model folder written by `emovox train` into the package and write its model card.

    python -m tools.ship_model runs/default_cnn --name default --command "emovox train ..."
    python -m tools.ship_model --runtime-only default crnn streaming     # rebuild the shipped models' onnx/

It also writes the model's ONNX Runtime graphs (``onnx/``, :mod:`emovox.export.runtime_build`), which
inference runs without PyTorch; ``--runtime-only`` rebuilds just those for models already shipped.

A maintainer tool: it writes into ``src/emovox/assets/models/NAME`` (the models shipped with the
package), so it lives outside ``benchmarks/``, whose scripts only read the package and write reports.

Only the files needed to load and to audit the model are copied (weights, config, labels, metrics,
report, history, confusion matrices). The card's figures are read from the run's own metrics files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "src" / "emovox" / "assets" / "models"
FILES = ["best_model.pth", "model_config.json", "labels.json", "model_meta.json", "metrics_overall.json",
         "metrics_report.csv", "training_history.json", "confusion_matrix.npy", "confusion_matrix_rownorm.png"]


#: What the card says of each training corpus (source, licence) and of its speakers (for the limits).
CORPUS_TEXT = {
    "ravdess": ("RAVDESS speech, actors 1–20 (Livingstone & Russo 2018, CC BY-NC-SA 4.0)",
                "RAVDESS's 20 North-American actors, English"),
    "crema-d": ("CREMA-D, actors 1001–1060 (Cao et al. 2014, ODbL / DbCL)", "CREMA-D's 60 actors, English"),
    "nemo": ("nEMO, 9 actors (Christop 2024, LREC-COLING; CC BY-NC-SA 4.0)", "nEMO's 9 actors, Polish"),
}


def backbone_parameters(cfg: dict) -> int:
    """Parameters of the frozen backbone a model config references (loaded to count them)."""
    from emovox.pretrained.backbone_loading import load_backbone

    return sum(p.numel() for p in load_backbone(cfg["model"]["kwargs"]["backbone"]).model.parameters())


def describe_backbone(kwargs: dict) -> str:
    """The input line of a model on a pretrained backbone (``ssl``)."""
    bb = kwargs["backbone"]
    layers = kwargs.get("layers") or []
    front = ("Whisper's log-mel (80 bins, 25 ms windows, 10 ms hop)" if bb.get("model_type") == "whisper"
             else "the raw waveform")
    head = kwargs.get("head", "cnn")
    probes = {"mean": "each averaged over the clip",
              "stats": "each averaged over the clip, with its log standard deviation over the clip"}
    how = (f"{probes[head]}, standardised with the training clips' statistics → one linear layer (a logistic "
           f"regression fit by L-BFGS, its L2 strength chosen on the validation speakers)" if head in probes
           else f"each normalised and mixed with learned layer weights → `{head}` head → classifier")
    return (f"16 kHz mono audio → {front} → frozen `{bb['source']}` encoder ({bb['model_type']}, {bb['num_layers']} "
            f"layers × {bb['hidden_size']}; weights from the installed package, not stored in this folder) → its "
            f"{len(layers)} hidden states at 50 frames/s, {how}; whole clips at their own length (no padding to 30 s).")


def probe_c(run: Path) -> float | None:
    """The kept inverse L2 strength of a probe head's fit (its history has one entry per C), else None."""
    history = json.loads((run / "training_history.json").read_text())
    metrics = json.loads((run / "metrics_overall.json").read_text())
    if not history or "C" not in history[0]:
        return None
    return history[metrics["best_epoch"] - 1]["C"]


def describe_input(feats: dict, streaming: bool) -> str:
    win = feats.get("win_length") or feats["n_fft"]
    if feats["kind"] == "mfcc":
        what = (f"{feats['n_mfcc']} MFCCs per frame (from {feats['n_mels']} mel bands, {feats['n_fft']}-point FFT, "
                f"{win}-sample window, {feats['hop_length']}-sample hop)")
    else:
        what = (f"log-mel ({feats['n_mels']} mel bands, {feats['n_fft']}-point FFT, {win}-sample window, "
                f"{feats['hop_length']}-sample hop)")
    how = ("frame by frame: an LSTM carries its hidden state, so `emovox stream` and `StreamingSession` update "
           "the answer every 10 ms frame, and a whole clip gives the same result as streaming it"
           if streaming else "whole clips (variable length) at inference")
    level = (f", each clip shifted to a speech level of {feats['level_db']:g} dB (independent of recording gain)"
             if feats.get("level_db") is not None else "")
    return f"16 kHz mono audio → {what}{level}, normalised with statistics from the training data; {how}."


def weakest(rows: list[str], n: int = 3) -> list[str]:
    """The ``n`` labels with the lowest recall in a metrics_report.csv."""
    per_class = []
    for line in rows[1:]:
        parts = line.split(",")
        if len(parts) == 5 and parts[2] and not parts[0].startswith(("accuracy", "macro", "weighted")):
            per_class.append((float(parts[2]), parts[0]))
    return [lab for _, lab in sorted(per_class)[:n]]


def _and(words: list[str]) -> str:
    return " and ".join([", ".join(words[:-1]), words[-1]]) if len(words) > 1 else "".join(words)


def card(run: Path, name: str, command: str, extra: str, notes: str = "") -> str:
    m = json.loads((run / "metrics_overall.json").read_text())
    meta = json.loads((run / "model_meta.json").read_text())
    cfg = json.loads((run / "model_config.json").read_text())
    labels = cfg["labels"]
    rows = (run / "metrics_report.csv").read_text().strip().splitlines()
    feats = cfg["features"]
    split = meta.get("split", {})
    sizes = m.get("sizes", {})
    corpora = [c for c in CORPUS_TEXT if c in (meta.get("corpora") or ["ravdess", "crema-d"])]
    lines = [
        f"# emovox speech emotion model `{name}`",
        "",
        f"**Labels ({len(labels)}, in output order):** {', '.join(labels)}. RAVDESS *calm* is counted as *neutral*.",
        "",
        "## What it is",
        "",
        f"- Architecture: `{cfg['model']['name']}` ({meta.get('parameters', 0):,} parameters"
        + (f", of which {meta.get('parameters', 0) - backbone_parameters(cfg):,} trained and the rest the frozen encoder's"
           if cfg["model"]["name"] == "ssl" else "")
        + f"; weights file {(run / 'best_model.pth').stat().st_size / 1024:.0f} KB), settings "
        f"`{json.dumps(cfg['model']['kwargs'])}`.",
        f"- Input: {describe_backbone(cfg['model']['kwargs']) if cfg['model']['name'] == 'ssl' else describe_input(feats, cfg['model']['name'] == 'lstm')}",
        f"- Output: softmax over the labels with temperature scaling (T = {cfg['temperature']:.3f}, fitted on the "
        "validation speakers).",
        "",
        "## Data and licence",
        "",
        f"- Trained on {_and([CORPUS_TEXT[c][0] for c in corpora])}, as provided in `../shared/data` (16 kHz).",
        "- **Licence: non-commercial use only** (CC BY-NC-SA 4.0 inherited from RAVDESS"
        + (" and nEMO" if "nemo" in corpora else "") + "). The code is Apache-2.0."
        + (" The Whisper encoder's weights are OpenAI's, MIT licence." if cfg["model"]["name"] == "ssl" else ""),
        f"- Split: {split.get('message', '')}. Sizes: {sizes}.",
        "",
        "## Measured",
        "",
        f"On the {sizes.get('val', '?')} clips of the **{split.get('kind', '')} validation split** "
        "(speakers never seen in training; also used to pick the best epoch or L2 strength and fit the temperature, "
        "so these figures are mildly optimistic):",
        "",
        "| metric | value |",
        "|---|---|",
        f"| UAR (unweighted average recall) | {100 * m['uar']:.1f} % |",
        f"| accuracy | {100 * m['accuracy']:.1f} % |",
        f"| macro-F1 | {100 * m['macro_f1']:.1f} % |",
        f"| weighted-F1 | {100 * m['weighted_f1']:.1f} % |",
        f"| expected calibration error, before → after temperature scaling | {m['ece']:.3f} → {m['ece_calibrated']:.3f} |",
        (f"| L2 strengths tried / kept (C) | {m.get('epochs_run')} / {probe_c(run)} |" if probe_c(run) is not None
         else f"| best epoch / epochs run | {m.get('best_epoch')} / {m.get('epochs_run')} |"),
        f"| training time | {m.get('training_time_s', 0) / 60:.0f} min on {extra or 'a shared 2-core CPU'} |",
        "",
        "Per class (precision, recall, F1, support):",
        "",
        "```",
        *rows,
        "```",
        "",
        *([notes.strip(), ""] if notes.strip() else []),
        "The independent measurement on unseen speakers and corpora is done outside the project; "
        "see `BENCHMARKS.md` for the speaker-independent cross-validation of each model family.",
        "",
        "## Reproduce",
        "",
        "```bash",
        command,
        f"python -m tools.ship_model {run} --name {name}",
        "```",
        "",
        "## Known limits",
        "",
        f"- Acted speech only ({_and([CORPUS_TEXT[c][1] for c in corpora])}; studio and lab recordings): expect "
        "lower accuracy on spontaneous speech, other languages, children, noisy or far-field audio, and phone codecs.",
        "- Clips of 1–6 s hold one emotion; longer recordings should use `--timeline`.",
        f"- {_and(weakest(rows)).capitalize()} are the least reliable classes (lowest recall in the "
        "per-class table); `low_confidence` flags top scores below 0.70.",
        *([] if feats.get("level_db") is not None or cfg["model"]["name"] == "ssl" else [
            "- Recording level is a cue: the model learnt that angry speech is louder, so 10–20 dB below a "
            "normal recording level many answers change and accuracy drops sharply "
            "(`python -m benchmarks.gain_robustness --model NAME`; `BENCHMARKS.md`, \"Recording level\"). "
            "Record at a normal speaking level, not far from the microphone."]),
        *(["- Recording level: not yet measured for this model (`python -m benchmarks.gain_robustness --model NAME` "
           "measured the CRNN, whose answers change 10–20 dB below a normal level). Whisper's log-mel is not "
           "normalised for level, so record at a normal speaking level."] if cfg["model"]["name"] == "ssl" else []),
        "- Silence and non-speech get a label too (flagged `silent` when the peak is below -60 dBFS): "
        "the model has no 'no speech' class.",
        "- Not for decisions about people (hiring, health, policing): emotion expressed in a voice is not a "
        "reliable sign of what someone feels.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run", type=Path, nargs="?")
    ap.add_argument("--runtime-only", nargs="+", metavar="NAME", default=None,
                    help="rebuild the ONNX Runtime graphs (onnx/) of these shipped models, and nothing else")
    ap.add_argument("--no-lengths-input", action="store_true",
                    help="runtime graph without a lengths input: each clip length runs on its own (the crnn: faster)")
    ap.add_argument("--name", default="default")
    ap.add_argument("--command", default="(see the model's model_meta.json: train_config)")
    ap.add_argument("--machine", default="")
    ap.add_argument("--notes", type=Path, default=None,
                    help="Markdown file of further measured figures (e.g. cross-corpus) for the card's Measured section")
    args = ap.parse_args(argv)
    from emovox.export.runtime_build import build_runtime

    if args.runtime_only:
        for name in args.runtime_only:
            print(f"wrote {build_runtime(ASSETS / name, lengths_input=not args.no_lengths_input)}")
        return 0
    if args.run is None:
        ap.error("give a run folder to ship, or --runtime-only NAME...")
    missing = [f for f in FILES if not (args.run / f).exists()]
    if missing:
        raise SystemExit(f"{args.run}: missing {', '.join(missing)}")
    dest = ASSETS / args.name
    tmp = ASSETS / f".{args.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in FILES:
        shutil.copy2(args.run / f, tmp / f)
    (tmp / "MODEL_CARD.md").write_text(card(args.run, args.name, args.command, args.machine,
                                               args.notes.read_text() if args.notes else ""))
    build_runtime(tmp, tmp / "onnx", lengths_input=not args.no_lengths_input)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(f"shipped {args.run} as {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
