"""Property tests of the text model's own files (hypothesis, bounded and derandomized like tests/test_input_fuzz.py):
``inference_config.json``, ``labels.json`` and ``onnx/runtime.json`` of the shipped model, each replaced by odd
JSON or by the real file with one value changed.

The contract: the folder loads, or :class:`TextModelError` names the file and the problem; never another
exception. The long campaign is ``python -m benchmarks.fuzz --targets text-model-folder``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emovox.text import TextModelError, default_model_path, load_text_model
from emovox.text.ensemble import load_ensemble
from emovox.text.model import read_model_config, shipped_model_path
from emovox.text.runtime import check_fresh, read_runtime

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FILES = ("inference_config.json", "labels.json", "onnx/runtime.json")
SHIPPED = default_model_path()

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["minilm", "head.safetensors", "../x", "", "sha256:0",
                                                           "emovox-text-model", "emovox-text-onnx"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("fuzz") / "model"
    shutil.copytree(SHIPPED, dst)
    return dst


def _paths(doc, prefix=()):
    """Every key path in a JSON document (to pick one to change)."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


def _with(doc, path, value, delete: bool):
    if not path:
        return value
    doc = json.loads(json.dumps(doc))
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


def _load(folder: Path) -> None:
    """What loading checks before the graph runs (read, check, record); the whole load when all pass."""
    cfg = read_model_config(folder)
    check_fresh(folder, cfg, read_runtime(folder / "onnx"))
    load_text_model(folder, backend="onnx")


def _check(folder: Path, name: str, blob: str) -> None:
    original = (SHIPPED / name).read_text(encoding="utf-8")
    (folder / name).write_text(blob, encoding="utf-8")
    try:
        _load(folder)
    except TextModelError as e:
        assert str(e).strip()
    finally:
        (folder / name).write_text(original, encoding="utf-8")


@FUZZ
@given(name=st.sampled_from(FILES), doc=values)
def test_any_json_is_loaded_or_named(folder, name, doc):
    _check(folder, name, json.dumps(doc))


@FUZZ
@given(name=st.sampled_from(FILES), data=st.data())
def test_one_changed_value_is_loaded_or_named(folder, name, data):
    doc = json.loads((SHIPPED / name).read_text(encoding="utf-8"))
    path = data.draw(st.sampled_from(list(_paths(doc))))
    changed = _with(doc, path, data.draw(values), data.draw(st.booleans()))
    _check(folder, name, json.dumps(changed))


@FUZZ
@given(name=st.sampled_from(FILES), blob=st.binary(max_size=200))
def test_bytes_that_are_not_json_are_named(folder, name, blob):
    original = (SHIPPED / name).read_bytes()
    (folder / name).write_bytes(blob)
    try:
        with pytest.raises(TextModelError, match=name.rsplit("/", 1)[-1]):
            _load(folder)
    finally:
        (folder / name).write_bytes(original)


@pytest.mark.parametrize(("key", "name"), [("head", "head.mbsafetensors"), ("encoder_delta", "encoder_deltaݥܘetensors")])
def test_weights_file_named_but_missing_is_named(folder, key, name):
    """Found by the campaign: a config naming a weights file that is not there raised FileNotFoundError."""
    cfg = json.loads((SHIPPED / "inference_config.json").read_text(encoding="utf-8"))
    cfg[key]["file"] = name
    with pytest.raises(TextModelError, match=f"{name}: cannot read it"):
        _check_raises(folder, json.dumps(cfg))


def _check_raises(folder: Path, blob: str) -> None:
    original = (SHIPPED / "inference_config.json").read_text(encoding="utf-8")
    (folder / "inference_config.json").write_text(blob, encoding="utf-8")
    try:
        _load(folder)
    finally:
        (folder / "inference_config.json").write_text(original, encoding="utf-8")


# -- an ensemble's config (emovox.text.ensemble): its members are the shipped models, read but not run ----------


@pytest.fixture(scope="module")
def ensemble_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-ensemble")
    for name in ("default", "mpnet"):
        (root / name).symlink_to(shipped_model_path(name), target_is_directory=True)
    shutil.copytree(shipped_model_path("ensemble"), root / "ensemble")
    return root / "ensemble"


def _member_config(path: Path) -> SimpleNamespace:
    """A member as the ensemble checks it (its checked config's labels), without loading its weights."""
    return SimpleNamespace(labels=read_model_config(path)["labels"])


@FUZZ
@given(data=st.data())
def test_ensemble_config_with_one_changed_value_is_loaded_or_named(ensemble_folder, data):
    name = "inference_config.json"
    original = (ensemble_folder / name).read_text(encoding="utf-8")
    doc = json.loads(original)
    changed = data.draw(st.one_of(values, st.just(_with(doc, data.draw(st.sampled_from(list(_paths(doc)))),
                                                         data.draw(values), data.draw(st.booleans())))))
    (ensemble_folder / name).write_text(json.dumps(changed), encoding="utf-8")
    try:
        load_ensemble(ensemble_folder, _member_config)
    except TextModelError as e:
        assert str(e).strip()
    finally:
        (ensemble_folder / name).write_text(original, encoding="utf-8")
