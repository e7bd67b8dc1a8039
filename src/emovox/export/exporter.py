"""``export_model``: a model folder → ONNX, Core ML and TorchScript files, checked against PyTorch.

Everything is written into a temporary folder beside the output folder and renamed into place at
the end; on any failure (unreadable model, conversion error, a parity check over tolerance) the
temporary folder is removed and nothing is left at the output path.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emovox import __version__
from emovox.atomic import move_into_place, write_json
from emovox.defaults import CONFIG_FILE, LABELS_FILE, WEIGHTS_FILE
from emovox.errors import ExportError
from emovox.export.checks import DEFAULT_TOLERANCE, build_cases, check_runner, synthetic_clips, top1_agreement
from emovox.export.coreml_export import FLAVOURS
from emovox.export.onnx_export import DEFAULT_OPSET
from emovox.export.preprocessing import preprocessing_spec
from emovox.export.spec import DEFAULT_COREML_MAX_SECONDS, INPUT_KINDS, GraphSpec, build_graph_spec
from emovox.modelio import LoadedModel, ModelLoadError, load_model_dir

FORMATS = ("onnx", "coreml", "torchscript")
EXPORT_FORMAT = "emovox-export"
EXPORT_FORMAT_VERSION = 1
MANIFEST_FILE = "export.json"
PREPROCESSING_FILE = "preprocessing.json"
DEFAULT_LICENSE = ("not stated in the model config: see the model card (models trained on RAVDESS are "
                   "CC BY-NC-SA 4.0, non-commercial)")


@dataclass
class ExportReport:
    output_dir: Path
    files: dict[str, Any]
    checks: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"output_dir": str(self.output_dir), "files": self.files, "checks": self.checks,
                "quantization": self.quantization, "versions": self.versions, "seconds": round(self.seconds, 2)}


def export_model(model: str | os.PathLike, output_dir: str | os.PathLike, *,
                 formats: Sequence[str] = FORMATS, inputs: Sequence[str] = INPUT_KINDS,
                 input_name: str | None = None, output_name: str | None = None, quantize: str | None = None,
                 opset: int = DEFAULT_OPSET, coreml_flavours: Sequence[str] = FLAVOURS,
                 coreml_max_seconds: float = DEFAULT_COREML_MAX_SECONDS, check: bool = True,
                 check_audio: Sequence[str | os.PathLike | np.ndarray] | None = None,
                 tolerance: float = DEFAULT_TOLERANCE, overwrite: bool = False, author: str | None = None,
                 license_text: str | None = None, description: str | None = None) -> ExportReport:
    """Export a model folder (``best_model.pth`` + ``model_config.json`` + ``labels.json``).

    ``formats``: any of ``onnx``, ``coreml``, ``torchscript``. ``inputs``: ``waveform`` (16 kHz
    samples; front-end inside) and/or ``features`` (raw log-mel dB / MFCC; normalisation inside;
    streaming models: one frame plus state). ``input_name``/``output_name`` override the names in
    the model's ``config["io"]`` (``input_name`` needs a single input kind). ``quantize="int8"``
    adds dynamically quantised ONNX files. ``check`` runs every exported graph that can run here
    (ONNX, TorchScript; Core ML on macOS) on ``check_audio`` (paths or 1-D arrays at the model's
    rate; default: synthetic clips) and fails when a logit differs from PyTorch by ``tolerance``
    or more.
    """
    t0 = time.perf_counter()
    formats = _choose(formats, FORMATS, "format")
    inputs = _choose(inputs, INPUT_KINDS, "input")
    flavours = _choose(coreml_flavours, FLAVOURS, "Core ML flavour")
    if quantize not in (None, "int8"):
        raise ExportError(f"quantize must be 'int8' or None, got {quantize!r}")
    if quantize and "onnx" not in formats:
        raise ExportError("int8 quantisation applies to ONNX: add 'onnx' to the formats")
    if input_name and len(inputs) != 1:
        raise ExportError("an input name override needs a single input kind (waveform or features)")
    check_dependencies(formats)
    out = Path(output_dir)
    if out.exists() and not overwrite:
        raise ExportError(f"output folder {out} already exists; choose another or allow overwriting (--overwrite)")
    ref, conv = _load(model)
    pipe = conv.pipeline
    if pipe.feature_config.kind == "waveform" and "features" in inputs:  # raw-sample models (ssl): one input
        if inputs == ("features",):
            raise ExportError(f"{model} takes raw samples (a pretrained backbone is its front-end) and has no "
                              "separate feature input: export --input waveform")
        inputs = tuple(k for k in inputs if k != "features")
    clips = _clips(check_audio, pipe.sample_rate_hz) if check else []
    specs = []
    for kind in inputs:
        try:
            specs.append(build_graph_spec(pipe, kind, input_name=input_name, output_name=output_name,
                                          coreml_max_seconds=coreml_max_seconds))
        except ValueError as e:
            raise ExportError(f"cannot export the {kind}-input graph: {e}") from e

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        report = _export_into(tmp, ref, conv, specs, formats=formats, flavours=flavours, quantize=quantize,
                              opset=opset, clips=clips, tolerance=tolerance, author=author,
                              license_text=license_text, description=description)
        report.seconds = time.perf_counter() - t0
        report.output_dir = out
        write_json(tmp / MANIFEST_FILE, _manifest(report, conv, specs, opset))
        replace_export_folder(tmp, out, overwrite=overwrite)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (RuntimeError, OSError)) or (isinstance(e, ValueError) and not isinstance(e, ExportError)):
            raise ExportError(str(e)) from e
        raise
    return report


# ---------------------------------------------------------------------------------------------


def _choose(values: Sequence[str] | str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    values = [values] if isinstance(values, str) else list(values)
    if "all" in values or "both" in values:
        values = list(allowed)
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ExportError(f"unknown {what} {', '.join(map(repr, bad)) or '(none)'}; available: "
                          f"{', '.join(allowed)}, all")
    return tuple(v for v in allowed if v in values)


def check_dependencies(formats: Sequence[str]) -> None:
    """Raise :class:`ExportError` naming the missing packages when ``formats`` cannot be exported here."""
    need = {"onnx": ["onnx", "onnxruntime"], "coreml": ["coremltools"], "torchscript": []}
    import importlib.util

    missing = sorted({m for f in formats for m in need[f] if importlib.util.find_spec(m) is None})
    if missing:
        raise ExportError(f"exporting {', '.join(formats)} needs {', '.join(missing)}: pip install 'emovox[export]'")


#: Where ``emovox train --export`` writes the export inside the trained model folder.
TRAIN_EXPORT_DIR = "export"
#: The Core ML mobile CNN's names for the feature-input graph, placed at the top of a trained model folder.
SEED000_FILES = {"onnx": "emotion_classifier.onnx", "coreml": "EmotionClassifier.mlmodel"}


def export_trained_model(model_dir: str | os.PathLike, *, formats: Sequence[str] = ("onnx", "coreml"),
                         inputs: Sequence[str] | str = INPUT_KINDS) -> tuple[ExportReport, list[Path]]:
    """``emovox train --export``: export a trained model folder into ``model_dir/export/`` (everything
    :func:`export_model` writes, checked against PyTorch; Core ML as ``.mlmodel``, the Core ML mobile CNN's format) and
    put its feature-input ONNX and Core ML files at the top of the folder under the Core ML mobile CNN's names,
    ``emotion_classifier.onnx`` and ``EmotionClassifier.mlmodel`` (hard links to the files in ``export/``,
    copies where the file system has no links). Returns the report and the top-level files.
    """
    out = Path(model_dir)
    report = export_model(out, out / TRAIN_EXPORT_DIR, formats=formats, inputs=inputs,
                          coreml_flavours=("neuralnetwork",), overwrite=True)
    top = []
    for fmt, name in SEED000_FILES.items():
        written = report.files.get(fmt, {}).get("features")
        if isinstance(written, dict):  # Core ML: {flavour: file}
            written = written.get("neuralnetwork")
        if not written:
            continue
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        target.unlink(missing_ok=True)
        try:
            os.link(out / TRAIN_EXPORT_DIR / written, target)
        except OSError:
            shutil.copyfile(out / TRAIN_EXPORT_DIR / written, target)
        top.append(target)
    return report, top


def _load(model: str | os.PathLike) -> tuple[LoadedModel, LoadedModel]:
    p = Path(model)
    try:
        if p.is_dir():
            for name in (WEIGHTS_FILE, CONFIG_FILE, LABELS_FILE):
                if not (p / name).is_file():
                    raise ModelLoadError(f"{p}: not a complete model folder: {name} is missing")
        ref = load_model_dir(p, stft_mode="torch")
        conv = load_model_dir(p, stft_mode="conv")
        if p.is_dir():
            _check_json_files(p, ref.config)
    except ModelLoadError as e:
        raise ExportError(f"cannot export {p}: {e}") from e
    return ref, conv


def _check_json_files(folder: Path, config: dict[str, Any]) -> None:
    for name in (CONFIG_FILE, LABELS_FILE):
        try:
            data = json.loads((folder / name).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"{folder / name}: corrupt or unreadable JSON ({e})") from e
        labels = data if name == LABELS_FILE else data.get("labels") if isinstance(data, dict) else None
        if labels != config["labels"]:
            raise ModelLoadError(f"{folder / name}: labels {labels} differ from the checkpoint's {config['labels']}")


def _clips(sources, sample_rate_hz: int) -> list[np.ndarray]:
    if not sources:
        return synthetic_clips(sample_rate_hz)
    from emovox.audio import load_audio

    clips = []
    for s in sources:
        if isinstance(s, np.ndarray):
            clips.append(np.ascontiguousarray(s, dtype=np.float32).reshape(-1))
        else:
            clips.append(load_audio(s, sample_rate_hz=sample_rate_hz))
    if len(clips) < 2:
        raise ExportError("checking needs at least 2 clips (for a batch)")
    return clips


def _metadata(conv: LoadedModel, spec: GraphSpec, description: str) -> dict[str, Any]:
    pipe, cfg = conv.pipeline, conv.config
    meta: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "emovox_version": __version__,
        "description": description,
        "model": cfg["model"]["name"],
        "labels": list(pipe.labels),
        "temperature": float(pipe.temperature),
        "sample_rate_hz": pipe.sample_rate_hz,
        "input_kind": spec.kind,
        "feature_kind": pipe.feature_config.kind,
        "num_frames": pipe.feature_config.num_frames,
        "normalization_in_graph": True,
        "streaming": spec.streaming,
        "inputs": [t.name for t in spec.inputs],
        "outputs": [t.name for t in spec.outputs],
    }
    if spec.streaming and spec.kind == "features":
        meta["state"] = {"inputs": [t.name for t in spec.inputs[1:]], "outputs": [t.name for t in spec.outputs[1:]],
                         "shapes_at_batch_1": [list(s) for s in spec.state_shapes],
                         "batch_axes": spec.state_batch_axes, "initial": "zeros"}
    return meta


def _describe(conv: LoadedModel, spec: GraphSpec) -> str:
    pipe = conv.pipeline
    fc = pipe.feature_config
    feat = {"mfcc": f"{fc.n_mfcc} MFCC", "waveform": "pretrained speech backbone"}.get(fc.kind, f"{fc.n_mels}-bin log-mel")
    what = (f"{fc.sample_rate_hz} Hz mono waveform in ({feat} front-end inside)" if spec.kind == "waveform"
            else f"raw {feat} in (normalised inside)")
    return (f"emovox {conv.config['model']['name']} speech emotion classifier: {what}, logits out for "
            f"{len(pipe.labels)} labels ({', '.join(pipe.labels)}).")


def _export_into(tmp: Path, ref: LoadedModel, conv: LoadedModel, specs: list[GraphSpec], *, formats, flavours,
                 quantize, opset, clips, tolerance, author, license_text, description) -> ExportReport:
    config = conv.config
    prep = preprocessing_spec(config)
    write_json(tmp / PREPROCESSING_FILE, prep)
    write_json(tmp / "model_config.json", config)
    write_json(tmp / "labels.json", list(config["labels"]))
    report = ExportReport(output_dir=tmp, files={}, versions=_versions(formats))
    author = author or config.get("author") or "emovox"
    license_text = license_text or config.get("license") or DEFAULT_LICENSE

    for spec in specs:
        desc = description or _describe(conv, spec)
        meta = _metadata(conv, spec, desc)
        cases = build_cases(spec, ref.pipeline, clips) if clips else []
        checks: dict[str, Any] = {}
        if "onnx" in formats:
            from emovox.export.onnx_export import OnnxRunner, external_data_files, quantize_int8, write_onnx

            path = tmp / f"{spec.stem}.onnx"
            write_onnx(spec, path, opset=opset, metadata={**meta, "opset": opset})
            if external_data_files(path):
                raise ExportError(f"{path.name} refers to external data; expected one self-contained file")
            report.files.setdefault("onnx", {})[spec.kind] = path.name
            if cases:
                checks["onnx"] = check_runner(spec, OnnxRunner(path), cases, tolerance=tolerance)
            if quantize:
                qpath = tmp / f"{spec.stem}.int8.onnx"
                info = quantize_int8(path, qpath)
                report.files.setdefault("onnx_int8", {})[spec.kind] = qpath.name
                q = {"float32_bytes": path.stat().st_size, "int8_bytes": qpath.stat().st_size, **info}
                q["size_ratio"] = round(q["int8_bytes"] / q["float32_bytes"], 4)
                if cases:
                    q["vs_float_onnx"] = top1_agreement(spec, OnnxRunner(path), OnnxRunner(qpath), cases)
                    q["vs_pytorch"] = check_runner(spec, OnnxRunner(qpath), cases, tolerance=float("inf"))
                    q["vs_pytorch"].pop("ok")
                    q["vs_pytorch"].pop("tolerance")
                report.quantization[spec.kind] = q
        if "torchscript" in formats:
            from emovox.export.torchscript_export import TorchScriptRunner, write_torchscript

            path = tmp / f"{spec.stem}.pt"
            write_torchscript(spec, path, config=config, metadata=meta, preprocessing=prep)
            report.files.setdefault("torchscript", {})[spec.kind] = path.name
            if cases:
                checks["torchscript"] = check_runner(spec, TorchScriptRunner(path, spec), cases, tolerance=tolerance)
        if "coreml" in formats:
            from emovox.export.coreml_export import CoreMLRunner, can_predict, write_coreml

            written = write_coreml(spec, tmp, flavours=flavours, metadata=meta, author=author,
                                   license_text=license_text, description=desc)
            report.files.setdefault("coreml", {})[spec.kind] = {f: w["file"] for f, w in written.items()}
            for flavour, w in written.items():
                result: dict[str, Any] = {"specification_version": w["specification_version"],
                                          "spec": verify_coreml_spec(tmp / w["file"], spec)}
                if cases and can_predict():
                    result.update(check_runner(spec, CoreMLRunner(tmp / w["file"], spec), cases,
                                               batch_one_only=True, tolerance=tolerance))
                else:
                    result["numeric_check"] = "skipped: Core ML runs on macOS only"
                checks[f"coreml_{flavour}"] = result
        if checks:
            report.checks[spec.kind] = checks
    failed = [f"{kind}/{fmt}: max |diff| {c['max_abs_diff']:.3g}" for kind, per in report.checks.items()
              for fmt, c in per.items() if c.get("ok") is False]
    if failed:
        raise ExportError(f"exported graphs disagree with PyTorch beyond {tolerance:g}: {'; '.join(failed)}")
    return report


def verify_coreml_spec(path: Path, spec: GraphSpec) -> dict[str, Any]:
    """Read a saved Core ML model back and check input/output names, float32 types and shapes."""
    import coremltools as ct
    from coremltools.proto import FeatureTypes_pb2 as ft

    mspec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    got_in = [d.name for d in mspec.description.input]
    got_out = [d.name for d in mspec.description.output]
    want_in, want_out = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
    problems = []
    if got_in != want_in or got_out != want_out:
        problems.append(f"names {got_in} -> {got_out}, expected {want_in} -> {want_out}")
    for d, t in zip([*mspec.description.input, *mspec.description.output], [*spec.inputs, *spec.outputs]):
        arr = d.type.multiArrayType
        if d.type.WhichOneof("Type") != "multiArrayType" or arr.dataType != ft.ArrayFeatureType.FLOAT32:
            problems.append(f"{d.name}: not a float32 multi-array")
            continue
        fixed = [int(x) if not isinstance(x, tuple) else None for x in t.coreml_shape]
        shape = list(arr.shape)
        if len(shape) != len(fixed) or any(f is not None and f != s for f, s in zip(fixed, shape)):
            problems.append(f"{d.name}: shape {shape}, expected {t.coreml_shape}")
    if problems:
        raise ExportError(f"{path.name}: Core ML spec check failed: {'; '.join(problems)}")

    def shape(d):
        arr = d.type.multiArrayType
        ranges = arr.shapeRange.sizeRanges
        if ranges:  # flexible: [lower, upper] per axis (upper -1: unbounded)
            return [int(r.lowerBound) if r.lowerBound == r.upperBound else [int(r.lowerBound), int(r.upperBound)]
                    for r in ranges]
        return list(arr.shape)

    return {"ok": True, "inputs": {d.name: shape(d) for d in mspec.description.input},
            "outputs": {d.name: shape(d) for d in mspec.description.output}}


def _versions(formats) -> dict[str, str]:
    import importlib.metadata as md

    out = {"emovox": __version__}
    for pkg in ("torch", "onnx", "onnxruntime", "coremltools"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _manifest(report: ExportReport, conv: LoadedModel, specs: list[GraphSpec], opset: int) -> dict[str, Any]:
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "model": {"name": conv.config["model"]["name"], "source": str(conv.path)},
        "labels": list(conv.pipeline.labels),
        "temperature": float(conv.pipeline.temperature),
        "sample_rate_hz": conv.pipeline.sample_rate_hz,
        "onnx_opset": opset,
        "graphs": {s.kind: {**s.io_dict(), "streaming": s.streaming} for s in specs},
        "preprocessing": PREPROCESSING_FILE,
        **{k: v for k, v in report.to_dict().items() if k != "output_dir"},
    }


def replace_export_folder(tmp: Path, out: Path, *, overwrite: bool) -> None:
    """Move a finished export folder into place; an ``out`` that appeared meanwhile is replaced only with ``overwrite``."""
    if out.exists() and not overwrite:
        raise ExportError(f"output folder {out} appeared during the export; not replacing it")
    move_into_place(tmp, out)
