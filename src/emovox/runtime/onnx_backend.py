"""Run an exported waveform-in ONNX model with onnxruntime, without PyTorch.

>>> from emovox.runtime.onnx_backend import OnnxModel
>>> m = OnnxModel("exports/cnn")               # a folder written by `emovox export`, or a .onnx file
>>> logits = m.predict_logits(waves)           # (batch, samples) float32 at m.sample_rate_hz
>>> m.labels, m.temperature                    # probabilities = softmax(logits / temperature)

This module imports only NumPy, onnxruntime and the standard library, so a server can run
inference without PyTorch installed. Labels, temperature and sample rate come from the model's
own metadata (``metadata_props["emovox"]``, written by the exporter), or else from the
``export.json`` beside it.

A model folder's runtime graphs (``<model>/onnx/``, with ``runtime.json``; written by
:mod:`emovox.export.runtime_build` for the shipped models) load the same way: ``OnnxModel("<model>/onnx")``.
There the graph may refer to a packaged encoder's weights instead of holding them; they are filled in
once and cached (:mod:`emovox.runtime.onnx_materialise`). Clips shorter than the graph's ``min_samples`` are
zero-padded to it (as the PyTorch model does) and clips longer than ``max_samples`` run in windows.
Sessions are created once per process and file (:func:`session`). Work of several clip lengths (a batch from
``predict_batch``) runs its lengths concurrently, one clip length per worker on a 1-intra-op-thread session, a worker
per thread (:attr:`OnnxModel.clip_workers`); one clip runs alone on the session with all the threads.

The graph holds the whole front-end (STFT as a convolution, mel, log, crop/pad, zero-frame
skipping, normalisation), so it takes raw 16 kHz mono samples in [-1, 1].
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from emovox.defaults import RUNTIME_DIR

MANIFEST_FILE = "export.json"
WAVEFORM_FILES = ("emotion_waveform.onnx", "emotion_waveform.int8.onnx")
#: A model folder's runtime graphs: ``<model>/onnx/runtime.json`` and the files it names.
RUNTIME_FILE = "runtime.json"


class OnnxModelError(ValueError):
    """An ONNX model or export folder that cannot be used; the message names the file and the problem."""


def _find_model(path: Path, *, quantized: bool) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise OnnxModelError(f"ONNX model not found: {path}")
    if (path / RUNTIME_FILE).is_file():
        return path / "model.onnx"
    manifest = path / MANIFEST_FILE
    key = "onnx_int8" if quantized else "onnx"
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text()).get("files", {})
        except (OSError, json.JSONDecodeError) as e:
            raise OnnxModelError(f"{manifest}: unreadable export manifest ({e})") from e
        name = (files.get(key) or {}).get("waveform")
        if name and (path / name).is_file():
            return path / name
    candidate = path / WAVEFORM_FILES[1 if quantized else 0]
    if candidate.is_file():
        return candidate
    what = "int8 " if quantized else ""
    raise OnnxModelError(
        f"{path}: no {what}waveform-input ONNX model here (expected {candidate.name}); export one with "
        f"`emovox export --model M --format onnx --input waveform{' --quantize int8' if quantized else ''} "
        f"--output-dir {path}`"
    )


def default_threads() -> int:
    """The cores this process may use (its CPU affinity: a container's limit, not the host's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_SESSIONS: dict[tuple[str, int, tuple[str, ...], bool], Any] = {}
_SESSIONS_LOCK = threading.Lock()


def session(path: Path, *, threads: int | None = None, providers: list[str] | None = None, spinning: bool = True):
    """One ``onnxruntime.InferenceSession`` per file, thread count, providers and spinning in this process (sessions
    are thread-safe to run; creating one costs tens to hundreds of milliseconds). ``spinning=False``: the
    intra-op threads sleep between operators instead of spinning (``runtime.json``: ``intra_op_spinning``)."""
    import onnxruntime as ort

    threads = int(threads or default_threads())
    key = (str(Path(path).resolve()), threads, tuple(providers or ["CPUExecutionProvider"]), bool(spinning))
    with _SESSIONS_LOCK:
        if key not in _SESSIONS:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3  # errors only: not the optimiser's notes on every load
            if not spinning:
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                _SESSIONS[key] = ort.InferenceSession(str(path), opts, providers=list(key[2]))
            except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
                raise OnnxModelError(f"{path}: cannot load ONNX model: {str(e).splitlines()[0][:300]}") from e
        return _SESSIONS[key]


class OnnxModel:
    """A waveform-in emotion model in onnxruntime: ``predict_logits(waves) -> (batch, n_labels)``.

    ``path``: an export folder (its ``emotion_waveform.onnx``, or the int8 file with
    ``quantized=True``) or a ``.onnx`` file. ``threads``: onnxruntime intra-op threads
    (``None``: the cores this process may use).

    ``clip_workers``: how many clip lengths run at once when a call holds several (a graph without a ``lengths``
    input runs one clip length per session run): ``threads`` workers by default (1 off the CPU), each on a session
    with one intra-op thread (:attr:`worker_session`), so on 2 cores two clips run side by side with no
    synchronisation between operators; 1 runs them one after another on the ``threads``-thread session. Each clip's
    logits are the 1-thread session's, bit for bit, however many workers run and in whatever order; against the
    ``threads``-thread session (one clip alone) they differ by float rounding only (a few 1e-6). The 1-thread
    session holds its own copy of the weights (the default model: about 120 MB more at peak), made on first use.
    """

    def __init__(self, path: str | os.PathLike, *, quantized: bool = False, threads: int | None = None,
                 providers: list[str] | None = None):
        self.path = _find_model(Path(path), quantized=quantized)
        self.runtime = _read_runtime(self.path)
        self.threads = int(threads or default_threads())
        self._providers = providers
        self.session = self._session(self.threads, providers)
        cpu_only = not providers or list(providers) == ["CPUExecutionProvider"]
        self.clip_workers = self.threads if cpu_only else 1
        self._worker_session: Any = None
        self.streaming = bool(self.runtime.get("streaming", False))
        self.min_samples = int(self.runtime.get("min_samples") or 1)
        self.max_samples = self.runtime.get("max_samples")
        meta = self._metadata()
        if meta.get("input_kind", "waveform") != "waveform":
            raise OnnxModelError(f"{self.path}: a {meta.get('input_kind')}-input model; OnnxModel runs the "
                                 "waveform-input export (emotion_waveform.onnx)")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.lengths_input = bool(self.runtime.get("lengths_input"))
        if len(inputs) != 1 + self.lengths_input or len(inputs[0].shape) != 2:
            raise OnnxModelError(f"{self.path}: expected a (batch, samples) input{' and lengths' * self.lengths_input}"
                                 f", found {[(i.name, i.shape) for i in inputs]}")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        try:
            self.labels: list[str] = [str(x) for x in meta["labels"]]
            self.sample_rate_hz: int = int(meta["sample_rate_hz"])
            self.temperature: float = float(meta.get("temperature", 1.0))
        except (KeyError, TypeError, ValueError) as e:
            raise OnnxModelError(f"{self.path}: no emovox metadata (labels, sample_rate_hz) in the model or "
                                 f"in {MANIFEST_FILE} beside it") from e
        n_out = outputs[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.labels):
            raise OnnxModelError(f"{self.path}: {n_out} outputs but {len(self.labels)} labels {self.labels}")
        self.metadata = meta
        self.config: dict[str, Any] = self._config()
        probe = self.runtime.get("probe") or {}
        names = [o.name for o in outputs]
        self.pooled_output: str | None = probe.get("pooled_output") if probe.get("pooled_output") in names else None
        self.pooled_size = int(outputs[names.index(self.pooled_output)].shape[-1]) if self.pooled_output else 0
        self._probe: dict[str, np.ndarray] | None = None

    @property
    def pooled_key(self) -> str:
        """A digest of what the pooled features are computed from: every initializer but the probe's (front-end
        constants and the encoder's own weights) and the external weights they refer to. The graph's node layout
        is left out on purpose: a graph rebuilt to compute the same features another way (per length or padded
        batches, both tested equal to the clip alone) keeps the key; a retrained probe keeps it too."""
        import hashlib

        import onnx

        graph = onnx.load(str(self.path), load_external_data=False).graph
        probe = set((self.runtime.get("probe") or {}).values())
        h = hashlib.sha256(json.dumps(self.runtime.get("external_weights"), sort_keys=True).encode())
        for t in sorted(graph.initializer, key=lambda t: t.name):
            if t.name not in probe:
                h.update(t.SerializeToString())
        return h.hexdigest()[:20]

    def probe_parameters(self) -> dict[str, np.ndarray]:
        """A linear-probe graph's standardisation and linear layer (``mean``, ``std``, ``weight``, ``bias``), read
        from the graph's own initializers, so ``logits = (pooled - mean) / std @ weight.T + bias``."""
        if self.pooled_output is None:
            raise OnnxModelError(f"{self.path}: not a linear-probe graph with pooled features")
        if self._probe is None:
            import onnx
            from onnx import numpy_helper

            graph = onnx.load(str(self.path), load_external_data=False).graph
            found = {t.name: t for t in graph.initializer}
            info = self.runtime["probe"]
            try:
                self._probe = {k: numpy_helper.to_array(found[info[k]]).astype(np.float32)
                               for k in ("mean", "std", "weight", "bias")}
            except KeyError as e:
                raise OnnxModelError(f"{self.path}: runtime.json names probe tensor {e} the graph lacks") from e
        return self._probe

    def pooled_features(self, waves: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """The probe's input before standardisation, ``(batch, pooled_size)``; ``lengths`` as :meth:`predict_logits`."""
        if self.pooled_output is None:
            raise OnnxModelError(f"{self.path}: not a linear-probe graph with pooled features")
        return self._predict(waves, lengths, self.pooled_output)

    def frame_stepper(self) -> OnnxFrameStepper | None:
        """A streaming model's frame-by-frame step (its ``frontend.onnx`` + ``step.onnx``), else None."""
        info = self.runtime.get("stream")
        return OnnxFrameStepper(self.path.parent, info, len(self.labels)) if info else None

    def _session(self, threads: int, providers: list[str] | None):
        spinning = bool(self.runtime.get("intra_op_spinning", True))
        self._loadable = self.path
        if not self.runtime.get("external_weights"):
            return session(self.path, threads=threads, providers=providers, spinning=spinning)
        from emovox.runtime.onnx_materialise import (
            materialise,  # a graph that refers to packaged encoder weights
        )

        self._loadable = materialise(self.path, self.runtime)
        try:
            return session(self._loadable, threads=threads, providers=providers, spinning=spinning)
        except OnnxModelError:  # a damaged cached copy (a full disk, an edit): build it again, once
            self._loadable.unlink(missing_ok=True)
            self._loadable = materialise(self.path, self.runtime)
            return session(self._loadable, threads=threads, providers=providers, spinning=spinning)

    @property
    def worker_session(self):
        """The session the concurrent clip workers share: the same graph with one intra-op thread (created on
        first use; the same session object as ``threads=1`` gets). Assign another session to change it."""
        if self._worker_session is None:
            self._worker_session = session(self._loadable, threads=1, providers=self._providers,
                                           spinning=bool(self.runtime.get("intra_op_spinning", True)))
        return self._worker_session

    @worker_session.setter
    def worker_session(self, value) -> None:
        self._worker_session = value

    def _metadata(self) -> dict[str, Any]:
        if self.runtime:
            return {"input_kind": "waveform", **self.runtime}
        props = self.session.get_modelmeta().custom_metadata_map
        if "emovox" in props:
            try:
                return json.loads(props["emovox"])
            except json.JSONDecodeError as e:
                raise OnnxModelError(f"{self.path}: corrupt emovox metadata ({e})") from e
        manifest = self.path.parent / MANIFEST_FILE
        if manifest.is_file():
            try:
                m = json.loads(manifest.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise OnnxModelError(f"{manifest}: unreadable export manifest ({e})") from e
            return {"labels": m.get("labels"), "sample_rate_hz": m.get("sample_rate_hz"),
                    "temperature": m.get("temperature", 1.0), "input_kind": "waveform"}
        return {}

    def _config(self) -> dict[str, Any]:
        cfg = self.path.parent / "model_config.json"
        if self.runtime:  # <model>/onnx/: the model's own config is in the folder above
            cfg = self.path.parent.parent / "model_config.json"
        if cfg.is_file():
            try:
                return json.loads(cfg.read_text())
            except (OSError, json.JSONDecodeError):
                return {}
        return {}

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, labels={self.labels})"

    def predict_logits(self, waves: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Logits ``(batch, n_labels)`` for ``waves`` ``(batch, samples)`` (or one clip ``(samples,)``).

        ``lengths`` (samples per clip) marks a zero-padded batch: each clip gets what it gets alone, which is
        what the PyTorch pipeline's length masking computes. A graph with a ``lengths`` input
        (``runtime.json``: ``lengths_input``) runs the padded batch once; otherwise clips of equal length run
        together, one length at a time.
        """
        return self._predict(waves, lengths, self.output_name)

    def _predict(self, waves: np.ndarray, lengths: np.ndarray | None, output: str) -> np.ndarray:
        x = np.asarray(waves, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise ValueError(f"waves must be (batch, samples) or (samples,), got shape {x.shape}")
        width = self.pooled_size if output == self.pooled_output else len(self.labels)
        if x.shape[0] == 0:
            return np.zeros((0, width), np.float32)
        if lengths is None and not self.lengths_input:
            return self._run(x, output)
        n = np.asarray(lengths if lengths is not None else [x.shape[1]] * x.shape[0], dtype=np.int64).reshape(-1)
        if n.shape[0] != x.shape[0] or (n < 1).any() or (n > x.shape[1]).any():
            raise ValueError(f"lengths must give 1..{x.shape[1]} samples for each of the {x.shape[0]} clips")
        out = np.zeros((x.shape[0], width), np.float32)
        if self.lengths_input:  # one run: the graph masks each clip's padding as the PyTorch pipeline does
            long = n > self.max_samples if self.max_samples else np.zeros(len(n), bool)
            short = np.flatnonzero(~long)
            if short.size:
                out[short] = self._run(x[short, : int(n[short].max())], output, n[short])
            for i in np.flatnonzero(long):  # past the graph's longest input: windows, one clip at a time
                out[i] = self._run(x[i : i + 1, : int(n[i])], output)[0]
            return out
        groups = [np.flatnonzero(n == length) for length in np.unique(n)]
        if len(groups) == 1 or self.clip_workers < 2:
            for idx in groups:
                out[idx] = self._run(x[idx, : n[idx[0]]], output)
            return out
        sess = self.worker_session  # several lengths: one per worker, each on a 1-thread run, in any order

        def run(idx: np.ndarray) -> np.ndarray:
            return self._run(x[idx, : n[idx[0]]], output, sess=sess)

        with ThreadPoolExecutor(max_workers=min(self.clip_workers, len(groups))) as pool:
            for idx, rows in zip(groups, pool.map(run, groups)):  # onnxruntime releases the GIL in run
                out[idx] = rows
        return out

    def _run(self, x: np.ndarray, output: str | None = None, lengths: np.ndarray | None = None, *,
             sess: Any = None) -> np.ndarray:
        output = output or self.output_name
        if x.shape[1] < self.min_samples:  # as the PyTorch model: zero-padded to the shortest input it takes
            x = np.pad(x, ((0, 0), (0, self.min_samples - x.shape[1])))
        if self.max_samples and x.shape[1] > self.max_samples:
            return self._run_windows(x, int(self.max_samples), output, sess)
        feed = {self.input_name: np.ascontiguousarray(x)}
        if self.lengths_input:  # without lengths: a batch of one length, every clip whole
            feed["lengths"] = lengths if lengths is not None else np.full(x.shape[0], x.shape[1], np.int64)
        return (sess if sess is not None else self.session).run([output], feed)[0]

    def _run_windows(self, x: np.ndarray, size: int, output: str, sess: Any = None) -> np.ndarray:
        """A clip longer than the graph takes: consecutive windows of ``size`` samples (the last one ending at
        the clip's end), logits averaged weighted by the new samples each window adds (runtime.json's
        ``long_clips`` says how this relates to the PyTorch model)."""
        starts = list(range(0, x.shape[1] - size + 1, size))
        if starts[-1] + size < x.shape[1]:
            starts.append(x.shape[1] - size)
        total = np.zeros((x.shape[0], self.pooled_size if output == self.pooled_output else len(self.labels)),
                         np.float64)
        covered = 0
        for s in starts:
            new = s + size - covered  # samples not counted yet (the last window overlaps the one before)
            total += new * self._run(x[:, s : s + size], output, sess=sess).astype(np.float64)
            covered = s + size
        return (total / covered).astype(np.float32)

    def probabilities(self, waves: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Calibrated probabilities: ``softmax(logits / temperature)``."""
        z = self.predict_logits(waves, lengths).astype(np.float64) / self.temperature
        z -= z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)


def model_files_digest(model_dir: Path) -> dict[str, str]:
    """SHA-256 of a model folder's weights and config: what its runtime graph records it was built from."""
    import hashlib

    from emovox.defaults import CONFIG_FILE, WEIGHTS_FILE

    out = {}
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        h = hashlib.sha256()
        with open(model_dir / name, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        out[name] = h.hexdigest()
    return out


def stale_reason(model_dir: Path) -> str | None:
    """Why ``<model_dir>/onnx`` cannot be trusted to be this folder's model (None when it provably is): its
    ``runtime.json`` records the weights and config it was built from, and they must be the folder's own."""
    try:
        built_from = _read_runtime(model_dir / RUNTIME_DIR / "model.onnx").get("built_from")
    except OnnxModelError as e:
        return str(e)
    if not isinstance(built_from, dict):
        return "its runtime graph does not record which weights it was built from (made by an older emovox)"
    try:
        now = model_files_digest(model_dir)
    except OSError as e:
        return f"cannot read the model's files ({e})"
    changed = [name for name, digest in now.items() if built_from.get(name) != digest]
    if changed:
        return f"its runtime graph was built from other {' and '.join(changed)} than the folder holds now"
    return None


def _read_runtime(graph: Path) -> dict[str, Any]:
    """``runtime.json`` beside a model folder's runtime graph (empty for ``emovox export`` folders)."""
    manifest = graph.parent / RUNTIME_FILE
    if not manifest.is_file():
        return {}
    try:
        data = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise OnnxModelError(f"{manifest}: unreadable runtime manifest ({e})") from e
    if not isinstance(data, dict) or data.get("format") != "emovox-onnx-runtime":
        raise OnnxModelError(f"{manifest}: not an emovox ONNX runtime manifest")
    return data


class OnnxFrameStepper:
    """One streaming step on ONNX Runtime, equal to :class:`emovox.inference.TorchFrameStepper`: the frames'
    raw features (``frontend.onnx``), all-zero frames skipped (as ``frames.nonzero_frame_mask``), then the
    recurrent step with its state carried over (``step.onnx``)."""

    def __init__(self, folder: Path, info: dict[str, Any], n_labels: int):
        self.frontend = session(folder / info["frontend"])
        self.step_session = session(folder / info["step"])
        self.info = info
        #: frames scaled by the stream's peak so far (``framewise-librosa-mfcc13``): the front-end takes it as input
        self.peak_normalize = bool(info.get("peak_normalize", False))
        self.n_labels = n_labels
        self.hop_length, self.frame_span = int(info["hop_length"]), int(info["frame_span"])

    def num_frames_for(self, num_samples: int) -> int:
        return 0 if num_samples < self.frame_span else 1 + (num_samples - self.frame_span) // self.hop_length

    def samples_for(self, num_frames: int) -> int:
        return self.frame_span + (num_frames - 1) * self.hop_length if num_frames > 0 else 0

    def _nonzero_frames(self, wave: np.ndarray, n: int) -> np.ndarray:
        start, width = int(self.info["window_offset"]), int(self.info["window_length"])
        windows = np.lib.stride_tricks.sliding_window_view(np.abs(wave[start:]), width)[:: self.hop_length][:n]
        return windows.max(axis=1) > 0

    def initial_state(self) -> list[np.ndarray]:
        return [np.zeros(s, np.float32) for s in self.info["state_shapes_at_batch_1"]]

    def step(self, wave: np.ndarray, peak: float, state) -> tuple[np.ndarray, Any]:
        """``wave``: whole frames of samples; ``state``: the previous step's (None to start) →
        ``(logits (frames, n_labels), state)``; skipped frames give no row and leave the state as it was."""
        x = np.ascontiguousarray(wave, dtype=np.float32)[None]
        feed = {"waveform": x, **({"peak": np.full((1, 1), peak, np.float32)} if self.peak_normalize else {})}
        feats = self.frontend.run(None, feed)[0][0]  # (n_features, frames)
        if self.info.get("skip_zero_frames"):
            feats = feats[:, self._nonzero_frames(x[0], feats.shape[1])]
        if feats.shape[1] == 0:
            return np.zeros((0, self.n_labels), np.float32), state
        feed = {"features": np.ascontiguousarray(feats.T[None])}
        feed.update(zip(self.info["state_inputs"], state if state is not None else self.initial_state()))
        logits, *new_state = self.step_session.run(None, feed)
        return logits[0], new_state
