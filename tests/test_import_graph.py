"""The package layout's rules, read from the source with `ast` (nothing is imported):
no import cycles among our modules, `offload` never imports `specdec`, sampling and
verification import no model code (not even indirectly), nothing edits sys.path.

Every import statement counts, including those inside functions: a lazy import is still
a dependency, and a cycle through one only waits for the right call order to break."""
from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("specdec", "offload", "tools")
MODEL_CODE = ("specdec.model", "specdec.weights", "specdec.loading", "offload")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in known)
    found.discard(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_graph_sees_known_edges(graph):
    """The parser resolves relative, lazy and `from . import x` imports (else the rules
    below would pass vacuously)."""
    assert "specdec.api" in graph["specdec.session"]  # from .api import ...
    assert "offload.prefetch" in graph["specdec.session"]  # from offload.prefetch import ...
    assert "specdec.bench.hf" in graph["specdec.bench.worker"]  # lazy `from . import hf`
    assert "specdec.config" in graph["specdec.bench.workloads"]  # lazy `from ..config import`
    assert len(graph) > 30


def test_no_import_cycles(graph):
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


def test_offload_imports_nothing_from_specdec(graph):
    bad = {m: sorted(d for d in deps if d.startswith("specdec"))
           for m, deps in graph.items() if m.startswith("offload")}
    assert not {m: d for m, d in bad.items() if d}


@pytest.mark.parametrize("module", ["specdec.sampling", "specdec.penalty", "specdec.verify"])
def test_sampling_and_verify_import_no_model_code(graph, module):
    reached = _reachable(graph, module)
    assert not sorted(m for m in reached if m.startswith(MODEL_CODE))


def test_decoding_and_offload_do_not_import_the_bench(graph):
    """The harness sits on top: the decoding path and offload never reach it."""
    for start in ("specdec", "specdec.session", "offload.prefetch", "offload.pack"):
        assert not sorted(m for m in _reachable(graph, start) if m.startswith("specdec.bench"))


def test_the_runtime_never_imports_the_tools(graph):
    """tools/ (draft data and training, workload builders) sits outside the runtime: nothing
    under specdec/ or offload/ reaches it, so `import specdec` never loads it."""
    assert "tools.draft.cli" in graph  # the graph sees the tools (else this passes vacuously)
    bad = {m: sorted(d for d in _reachable(graph, m) if d.startswith("tools"))
           for m in graph if m.startswith(("specdec", "offload"))}
    assert not {m: d for m, d in bad.items() if d}


FRONT_ENDS = ("specdec.cli", "specdec.serve")


def _is_front_end(module: str) -> bool:
    return module == "specdec.__main__" or any(module == f or module.startswith(f + ".")
                                               for f in FRONT_ENDS)


def test_the_front_ends_are_packages_the_graph_sees(graph):
    """The command line and the server are packages (so the rules below have something to
    check)."""
    assert "specdec.cli.load_args" in graph["specdec.cli.commands"]
    assert "specdec.session" in graph["specdec.cli.load_args"]  # lazy `from ..session import`
    assert "specdec.serve.server" in graph["specdec.cli.commands"]  # `specdec serve` starts it
    assert "specdec.serve.worker" in graph["specdec.serve.app"]


def test_the_core_never_imports_a_front_end(graph):
    """Front ends (specdec/cli/, specdec/serve/) sit on top of the decoding core: they may
    import it, never the other way round, so the core loads and tests without them."""
    core = [m for m in graph if not _is_front_end(m)]
    bad = {m: sorted(d for d in _reachable(graph, m) if _is_front_end(d)) for m in core}
    assert not {m: d for m, d in bad.items() if d}


def test_the_server_does_not_import_the_command_line(graph):
    """specdec/serve/ is HTTP over a decoder it is handed; parsing arguments and loading
    stay in specdec/cli/ (which starts the server)."""
    for module in (m for m in graph if m.startswith("specdec.serve")):
        assert not sorted(d for d in _reachable(graph, module) if d.startswith("specdec.cli"))


def test_nothing_edits_sys_path():
    files = [p for d in (*PACKAGES, "scripts", "tests") for p in sorted((ROOT / d).rglob("*.py"))]
    edits = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if (isinstance(node, ast.Attribute) and node.attr == "path"
                    and isinstance(node.value, ast.Name) and node.value.id == "sys"):
                edits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not edits
