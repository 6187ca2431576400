"""The package's layers (``rlhf_bench.LAYERS``): no import runs upward and there is no cycle.

The import graph is built from the source with ``ast``, so imports inside functions count as
much as those at the top of a module (they are how a cycle used to hide).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rlhf_bench

PACKAGE = Path(rlhf_bench.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in it (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            # "from rlhf_bench.core import models" imports the module rlhf_bench.core.models
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(paths)) for name, path in paths.items()}


def layer_of(module: str) -> int:
    """The index of the layer whose prefix matches ``module`` most specifically."""
    best = None
    for index, (_, prefixes) in enumerate(rlhf_bench.LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    if best is None:
        raise AssertionError(f"{module} is in no layer of rlhf_bench.LAYERS: add it to the table")
    return best[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_is_read_from_source_including_function_level_imports(tmp_path):
    # the walker must see an import inside a function body, a relative import and "from pkg import module"
    graph = import_graph()
    assert "rlhf_bench.core.rollout" in graph["rlhf_bench.core.models"]  # imported inside a function there
    assert "rlhf_bench.errors" in graph["rlhf_bench.config"]
    assert "rlhf_bench.core.distributed" in graph["rlhf_bench.core.train"]  # "from rlhf_bench.core import distributed"


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, f"import cycles: {found}"


def test_no_import_from_a_lower_layer_to_a_higher_one():
    names = [name for name, _ in rlhf_bench.LAYERS]
    upward = [
        f"{a} ({names[layer_of(a)]}) imports {b} ({names[layer_of(b)]})"
        for a, targets in import_graph().items()
        if a != "rlhf_bench"
        for b in sorted(targets)
        if layer_of(b) > layer_of(a)
    ]
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_the_checks_catch_an_upward_import_and_a_cycle():
    graph = {"rlhf_bench.core.ops": {"rlhf_bench.methods.ppo"}, "rlhf_bench.methods.ppo": {"rlhf_bench.core.ops"}}
    assert cycles(graph) == [["rlhf_bench.core.ops", "rlhf_bench.methods.ppo"]]
    assert layer_of("rlhf_bench.methods.ppo") > layer_of("rlhf_bench.core.ops")
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("rlhf_bench.nowhere")


HEAVY = ("transformers", "peft", "lm_eval", "wandb", "deepspeed", "accelerate", "datasets")


def test_help_imports_none_of_the_heavy_libraries():
    """``rlhf-bench --help`` (and so every config error) stays fast: the heavy libraries are lazy."""
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['rlhf-bench', '--help']\n"
        "try:\n"
        "    runpy.run_module('rlhf_bench', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "rlhf-bench" in out.stdout or "config" in out.stdout  # the help text was printed
    heavy = out.stdout.strip().rpartition("HEAVY=")[2]
    assert heavy == "", f"rlhf-bench --help imported {heavy}"
