"""The package's shape: no import cycles, layers that point down, exceptions in one low module.

The import graph is read from the source with :mod:`ast` (nothing is imported): an edge ``a → b``
for every ``import``/``from ... import`` of an emovox module in ``a``, at module level AND inside
functions and methods (a lazy import still ties the two modules together; it only hides the cycle
until run time). Imports under ``if TYPE_CHECKING:`` are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "emovox"


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return mods


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth, except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """``module → emovox modules it imports`` (module level and inside functions)."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        package = name if is_pkg else name.rpartition(".")[0]
        out: set[str | None] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                out.update(resolve(a.name) for a in node.names if a.name.split(".")[0] == "emovox")
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "emovox":
                continue
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{a.name}"
                out.add(sub if sub in mods else resolve(target))
        out.discard(None)
        out.discard(name)
        graph[name] = out  # type: ignore[assignment]
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert "emovox.pretrained.backbone_loading" in graph["emovox.models.ssl"]  # imported inside SSLHybrid.__init__ only
    assert "emovox.features" in graph["emovox.modelio"]  # a module-level import
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    graph = import_graph()
    detail = "; ".join(" ".join(f"{m} → {sorted(graph[m] & set(c))}" for m in c) for c in cycles)
    assert not cycles, f"import cycles among emovox modules: {detail}"


#: What a network may not depend on: the layers above it (data, training, serving).
ABOVE_MODELS = ("emovox.training", "emovox.data", "emovox.inference", "emovox.streaming",
                "emovox.modelio", "emovox.server", "emovox.export", "emovox.cli", "emovox.commands")


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m.startswith("emovox.models")))
def test_models_import_networks_only(module):
    """``emovox.models`` holds networks: nothing it imports, even indirectly, is data, training or serving."""
    bad = sorted(m for m in reachable(import_graph(), module) if m.startswith(ABOVE_MODELS))
    assert not bad, f"{module} reaches {bad}"


def test_errors_and_defaults_are_at_the_bottom():
    graph = import_graph()
    assert graph["emovox.errors"] == set() and graph["emovox.defaults"] == set()


def test_exceptions_are_the_same_class_wherever_imported():
    from emovox import audio, errors, modelio
    from emovox.data import corpora, labels
    from emovox.pretrained import backbone_loading as backbones
    from emovox.text import data as text_data
    from emovox.training import run as training

    assert audio.AudioError is errors.AudioError
    assert labels.LabelError is errors.LabelError
    assert corpora.CorpusError is errors.CorpusError
    assert modelio.ModelLoadError is errors.ModelLoadError
    assert backbones.BackboneError is errors.BackboneError
    assert issubclass(errors.BackboneError, errors.ModelLoadError)
    assert training.TrainingError is errors.TrainingError
    assert text_data.TextError is errors.TextError
    assert all(issubclass(getattr(errors, n), ValueError) for n in errors.__all__)


#: A function that does not fit on a screen or two is doing several things; split it into named steps.
MAX_FUNCTION_LINES = 100


def test_no_function_over_100_lines():
    """Every function and method in ``src/`` (nested functions counted in the one that holds them)."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 100 lines: " + ", ".join(long)


def test_streaming_models_declare_the_protocol():
    """Every registered model that says ``streaming = True`` has what :class:`StreamingModel` declares
    (instead of ``hasattr`` checks where it is used); frame models do not claim it."""
    from emovox.models import MODELS, build_model, load_all
    from emovox.models.common import StreamingModel, is_streaming

    load_all()
    streaming = [name for name, cls in MODELS.items() if is_streaming(cls)]
    assert streaming
    for name in streaming:
        assert isinstance(build_model(name, n_features=13, n_classes=3), StreamingModel), name
    assert not is_streaming(build_model("cnn", n_features=32, n_classes=3))


def test_nonzero_frame_mask_is_one_trace_safe_function():
    import torch

    from emovox.features import preset
    from emovox.frames import nonzero_frame_mask

    cfg = preset("seed003")
    x = torch.zeros(2, 16000)
    x[0, 4000:6000] = 0.1
    padded = torch.nn.functional.pad(x, (cfg.n_fft // 2, cfg.n_fft // 2)) if cfg.center else x
    windows = padded.unfold(-1, cfg.frame_span, cfg.hop_length)[..., cfg.window_offset:][..., : cfg.window_length]
    mask = nonzero_frame_mask(x, cfg)  # the unfold definition, computed as a max-pool
    assert torch.equal(mask, windows.abs().amax(-1) > 0) and mask[0].any() and not mask[1].any()
    traced = torch.jit.trace(lambda w: nonzero_frame_mask(w, cfg), (x,))
    y = torch.zeros(1, 24000)
    y[0, 100] = 1.0
    assert torch.equal(traced(y), nonzero_frame_mask(y, cfg))  # a dynamic length through the traced graph


#: The package's top level holds the few modules every stage shares; a stage's modules live in its folder.
MAX_TOP_LEVEL_MODULES = 16
#: A module longer than this holds several jobs; split it along them.
MAX_MODULE_LINES = 600


def test_few_top_level_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"{len(top)} top-level modules in src/emovox: {top}"


def test_no_module_over_600_lines():
    long = [f"{p.relative_to(SRC)} ({n} lines)" for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not long, "modules over 600 lines: " + ", ".join(long)


def _calls_os_replace(tree: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "replace"
               and isinstance(n.func.value, ast.Name) and n.func.value.id == "os" for n in ast.walk(tree))


def test_one_module_renames_files_into_place():
    """Atomic writes have one owner (:mod:`emovox.atomic`); everything else calls it instead of ``os.replace``."""
    callers = sorted(name for name, (path, _) in _modules().items()
                     if _calls_os_replace(ast.parse(path.read_text(encoding="utf-8"))))
    assert len(callers) <= 2 and "emovox.atomic" in callers, f"os.replace called in {callers}"


def test_no_private_name_imported_across_modules():
    """A ``_name`` is its module's own business: what another module needs gets a public name."""
    bad = []
    for name, (path, _) in _modules().items():
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or not (node.level or (node.module or "").split(".")[0] == "emovox"):
                continue
            bad += [f"{name}: {node.module or '.'}.{a.name}" for a in node.names
                    if a.name.startswith("_") and not (a.name.startswith("__") and a.name.endswith("__"))]
    assert not bad, "private names imported across modules: " + ", ".join(bad)
