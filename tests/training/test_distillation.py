"""Knowledge distillation (emovox.training.distillation) and the shipped `fast` model, on real RAVDESS clips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emovox.errors import TrainingError
from emovox.training.config import TrainConfig
from emovox.training.distillation import (
    DistillationError,
    TeacherLabels,
    distill_loss,
    soft_targets,
    write_teacher_labels,
)

EKMAN7 = ["neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised"]


@pytest.fixture(scope="module")
def clips(shared_data):
    """12 RAVDESS clips of two actors (one for validation), every emotion."""
    from emovox.data.corpora import scan
    from emovox.training.plan import map_labels

    rows = [r for r in scan(shared_data / "ravdess", "ravdess", with_duration=False)
            if r.speaker in ("ravdess_03", "ravdess_04")]
    return map_labels(rows[::8][:12], "ekman7")[0]  # RAVDESS calm is neutral


@pytest.fixture(scope="module")
def teacher_file(clips, tmp_path_factory):
    """The shipped default model's logits for the clips (from the Whisper state cache, else its encoder)."""
    out = tmp_path_factory.mktemp("teacher") / "teacher.jsonl"
    messages = []
    write_teacher_labels("default", [str(r.path) for r in clips], out, echo=messages.append)
    return out, messages


def test_distill_loss_is_zero_at_the_teacher_and_scaled_by_t_squared():
    torch.manual_seed(0)
    t = torch.randn(4, 7)
    assert torch.allclose(distill_loss(t.clone(), t, 2.0), torch.zeros(4), atol=1e-6)
    s = torch.randn(4, 7)
    kl = torch.nn.functional.kl_div(torch.log_softmax(s / 3, -1), torch.softmax(t / 3, -1), reduction="none").sum(-1)
    assert torch.allclose(distill_loss(s, t, 3.0), 9 * kl, atol=1e-5)
    assert torch.allclose(distill_loss(s, None, 3.0, soft_targets(t, 3.0)), distill_loss(s, t, 3.0))


def test_teacher_labels_are_the_teachers_logits_and_resume(clips, teacher_file):
    import emovox

    path, messages = teacher_file
    assert "0 of 12 entries already" in messages[0]
    tl = TeacherLabels.read(path)
    assert tl.labels == EKMAN7 and len(tl.logits) == 12
    assert tl.header["teacher"] == "default" and tl.header["teacher_temperature"] > 1
    # the stored logits at the teacher's temperature are what the teacher answers for the clip
    model = emovox.load_model("default")
    pred = model.predict(clips[0].path)
    probs = soft_targets(torch.from_numpy(tl.lookup([str(clips[0].path)])), tl.header["teacher_temperature"])[0]
    assert np.allclose(probs.numpy(), [pred.scores[k] for k in EKMAN7], atol=2e-3)
    # a run killed mid-line: the torn entry is ignored, and a second run computes only what is missing
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:25])
    assert len(TeacherLabels.read(path).logits) == 11
    again = []
    write_teacher_labels("default", [str(r.path) for r in clips], path, echo=again.append)
    assert "11 of 12 entries already" in again[0] and "computing 1" in again[0]
    assert len(TeacherLabels.read(path).logits) == 12 and path.read_text().endswith("\n")


def test_bad_teacher_labels_are_refused_clearly(clips, teacher_file, tmp_path, shared_data):
    path, _ = teacher_file
    tl = TeacherLabels.read(path)
    other = sorted((shared_data / "ravdess" / "Actor_05").glob("*.flac"))[0]
    with pytest.raises(DistillationError, match="no entry for 1 of 2 training clip.*Actor_05"):
        tl.lookup([str(clips[0].path), str(other)])
    with pytest.raises(DistillationError, match="differ from the student's"):
        tl.check_labels(["neutral", "happy", "sad", "angry"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "x", "logits": [1, 2]}\n')
    with pytest.raises(DistillationError, match="not an emovox teacher-labels file"):
        TeacherLabels.read(bad)
    wrong = tmp_path / "wrong.jsonl"
    lines = path.read_text().splitlines()
    wrong.write_text(lines[0] + "\n" + json.dumps({"key": "abc", "logits": [0.0] * 3}) + "\n" + lines[1] + "\n")
    with pytest.raises(DistillationError, match="line 2 has .*3.* logits, expected 7"):
        TeacherLabels.read(wrong)
    with pytest.raises(DistillationError, match="cannot read"):
        TeacherLabels.read(tmp_path / "absent.jsonl")
    with pytest.raises(TrainingError, match="needs a teacher"):
        TrainConfig(distill_weight=0.5).validate()
    with pytest.raises(TrainingError, match="distill_weight must be between 0 and 1"):
        TrainConfig(distill_weight=1.5, teacher="default").validate()


def _raw_logits(pipeline, rows) -> torch.Tensor:
    from emovox.audio import load_audio

    with torch.inference_mode():
        return torch.cat([pipeline(torch.from_numpy(load_audio(r.path))[None]) for r in rows])


def test_distillation_alone_moves_the_student_toward_the_teacher(clips, teacher_file, tmp_path):
    """distill weight 1 (no true-label term): after a short end-to-end run the student's softened distribution
    on its training clips is much closer to the teacher's than the same network's at initialisation."""
    from emovox.modelio import EmotionPipeline, load_model_dir
    from emovox.models import build_model
    from emovox.training.plan import SplitPlan
    from emovox.training.run import train_model

    path, _ = teacher_file
    train, val = clips[:8], clips[8:]
    plan = SplitPlan(train=train, val=val, test=[], kind="speaker", message="", val_message="")
    cfg = TrainConfig(model="fast", model_kwargs={"channels": [16, 16, 16], "strides": [2, 1], "attention_dim": 8,
                                                  "dropout": 0.0},
                      labels="ekman7", epochs=20, batch_size=4, lr=3e-2, warmup_epochs=0.5, early_stopping_patience=0,
                      class_balance="none", crop_s=None, teacher_labels=str(path), distill_weight=1.0,
                      distill_temperature=2.0, seed=3)
    lines = []
    train_model(plan, EKMAN7, cfg, tmp_path / "student", cache=tmp_path / "cache", echo=lines.append, plots=False)
    assert any("distillation: weight 1 on the teacher's soft labels" in s for s in lines)
    config = load_model_dir(tmp_path / "student").config
    torch.manual_seed(cfg.seed)  # the run's initial weights (build_run seeds the same way)
    initial = EmotionPipeline(build_model("fast", n_features=64, n_classes=7, **cfg.model_kwargs), config).eval()
    last = build_model("fast", n_features=64, n_classes=7, **cfg.model_kwargs)  # the last epoch's weights (the saved
    last.load_state_dict(torch.load(tmp_path / "student" / "checkpoint.pt", weights_only=True)["model_state"])  # best
    final = EmotionPipeline(last, config).eval()  # is chosen on 4 validation clips: any epoch)
    teacher = torch.from_numpy(TeacherLabels.read(path).lookup([str(r.path) for r in train]))
    before = distill_loss(_raw_logits(initial, train), teacher, 2.0).mean()
    after = distill_loss(_raw_logits(final, train), teacher, 2.0).mean()
    assert after < 0.8 * before, (float(before), float(after))
    meta = json.loads((tmp_path / "student" / "model_meta.json").read_text())
    assert meta["train_config"]["distill_weight"] == 1.0 and meta["train_config"]["teacher_labels"] == str(path)


def test_distillation_refuses_a_teacher_with_other_labels(clips, teacher_file, tmp_path):
    from emovox.training.plan import SplitPlan
    from emovox.training.run import train_model

    path, _ = teacher_file
    core4 = [r for r in clips if r.label in ("neutral", "happy", "sad", "angry")]
    plan = SplitPlan(train=core4[:-2], val=core4[-2:], test=[], kind="speaker", message="", val_message="")
    cfg = TrainConfig(model="fast", epochs=1, batch_size=2, teacher_labels=str(path), distill_weight=0.5)
    with pytest.raises(DistillationError, match="teacher's labels .* differ from the student's"):
        train_model(plan, ["neutral", "happy", "sad", "angry"], cfg, tmp_path / "out", cache=tmp_path / "cache",
                    plots=False)


def test_shipped_fast_model_classifies_a_real_clip_and_exports_to_onnx(shared_data, tmp_path):
    import emovox
    from emovox.audio import load_audio
    from emovox.export import export_model
    from emovox.runtime.onnx_backend import OnnxModel

    clip = sorted((shared_data / "ravdess" / "Actor_01").glob("*.flac"))[0]
    model = emovox.load_model("fast")
    assert model.labels == EKMAN7
    pred = model.predict(clip)
    assert pred.label in EKMAN7 and abs(sum(pred.scores.values()) - 1) < 1e-5
    report = export_model(model.path, tmp_path / "onnx", formats=["onnx"], inputs=["waveform"])
    assert report.checks["waveform"]["onnx"]["ok"]
    wave = load_audio(clip)
    onnx = OnnxModel(tmp_path / "onnx", threads=1)
    ref = model.backend.predict_logits(wave[None])
    assert np.abs(onnx.predict_logits(wave[None]) - ref).max() < 1e-4


def test_cli_train_with_a_teacher_writes_its_labels_and_records_the_settings(shared_data, tmp_path, capsys):
    from emovox.cli import main
    from emovox.data.cache import content_key

    labels_file = tmp_path / "teacher.jsonl"
    out = tmp_path / "student"
    rc = main(["train", "--data_dir", str(shared_data / "ravdess"), "--labels", "ekman7", "--max-samples", "24",
               "--model", "fast", "--model-option", "channels=[16,16,16]", "--model-option", "strides=[2,1]",
               "--epochs", "1", "--batch_size", "8", "--val_split", "0.25", "--teacher", "default",
               "--teacher-labels", str(labels_file), "--cache-dir", str(tmp_path / "cache"), "--output_dir", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "distillation: weight 0.7 on the teacher's soft labels at temperature 2" in printed
    cfg = json.loads((out / "model_meta.json").read_text())["train_config"]
    assert (cfg["teacher"], cfg["teacher_labels"], cfg["distill_weight"]) == ("default", str(labels_file), 0.7)
    tl = TeacherLabels.read(labels_file)
    assert tl.labels == EKMAN7 and 12 <= len(tl.logits) <= 24  # the training clips (validation ones are not needed)
    assert all(content_key(p) == k for k, p in tl.paths.items())


def test_cli_train_with_degraded_copies_labels_each_copy_with_the_teacher_on_that_copy(shared_data, tmp_path, capsys):
    """--augment with a teacher: every training clip's degraded copy gets its own entry (the teacher on the
    degraded waveform), which is what the run's teacher tensor holds for that copy."""
    from emovox.cli import main
    from emovox.data.cache import content_key
    from emovox.training.distillation import Teacher, entry_key

    labels_file, out = tmp_path / "teacher.jsonl", tmp_path / "student"
    rc = main(["train", "--data_dir", str(shared_data / "ravdess"), "--labels", "ekman7", "--max-samples", "16",
               "--model", "fast", "--model-option", "channels=[16,16,16]", "--model-option", "strides=[2,1]",
               "--epochs", "1", "--batch_size", "4", "--val_split", "0.25", "--teacher", "default",
               "--teacher-labels", str(labels_file), "--augment", "pink:0", "--augment-copies", "1",
               "--cache-dir", str(tmp_path / "cache"), "--output_dir", str(out)])
    assert rc == 0
    assert "on the clean clips and on each of their 1 degraded copies" in capsys.readouterr().out
    lines = [json.loads(line) for line in labels_file.read_text().splitlines()[1:]]
    copies = [e for e in lines if "variant" in e]
    assert copies and len(copies) == len(lines) - len(copies)  # one copy per clean training clip
    tl = TeacherLabels.read(labels_file)
    from emovox.degrade import parse_spec
    from emovox.degrade.multicondition import DegradedCopy

    entry = copies[0]
    copy = DegradedCopy(parse_spec("pink:0"), 0)
    assert copy.variant(entry["path"]) == entry["variant"]
    degraded = Teacher("default").logits(entry["path"], copy=copy)
    assert np.abs(degraded - tl.logits[entry_key(content_key(entry["path"]), entry["variant"])]).max() < 1e-3
    clean = tl.logits[content_key(entry["path"])]
    assert np.abs(degraded - clean).max() > 0.05  # 0 dB of pink noise changes what the teacher hears


def test_each_clip_in_a_batch_gets_the_teacher_logits_of_the_version_the_epoch_drew():
    from types import SimpleNamespace

    from emovox.training.loop import _batch_teacher

    logits = torch.arange(3 * 5 * 2, dtype=torch.float32).reshape(3, 5, 2)  # clean, copy 1, copy 2 of 5 clips
    drawn = np.array([0, 2, 1, 2, 0])
    data = SimpleNamespace(multi=SimpleNamespace(choice=lambda epoch, n: drawn), sets={"train": SimpleNamespace(
        features=[None] * 5)})
    got = _batch_teacher(SimpleNamespace(teacher_logits=logits), data, [1, 2, 4], epoch=3)
    assert torch.equal(got, torch.stack([logits[2, 1], logits[1, 2], logits[0, 4]]))
    clean_only = SimpleNamespace(teacher_logits=logits[:1])
    assert torch.equal(_batch_teacher(clean_only, data, [1, 3], epoch=0), logits[0, [1, 3]])


def test_a_probe_teacher_gives_the_same_logits_from_a_pooled_row(clips):
    """What benchmarks.distill reads from the pooled-state cache: the teacher's head on a clip's pooled row (as the
    runtime graph pools it) gives the teacher's logits for that clip."""
    from emovox.audio import load_audio
    from emovox.degrade.multicondition import PooledEncoder
    from emovox.inference import resolve_model_path
    from emovox.training.distillation import Teacher

    teacher = Teacher("default", cache=False)
    encoder = PooledEncoder(resolve_model_path("default")[1], threads=1)
    row = encoder.pooled(load_audio(clips[0].path))
    got = teacher.logits_from_pooled(row[None])[0]
    assert np.abs(got - teacher.logits(str(clips[0].path))).max() < 1e-2
