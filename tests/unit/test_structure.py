"""The code's structure, checked from its imports: one direction, no circle, roles that never reach into the control
plane, and no family-specific branch outside the families (docs/architecture.md).

The graph is read from the source with ``ast`` (every ``import``, lazy ones inside functions included), so a new
circle or a worker importing the controller fails here before it lands."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("cluster", "learner", "rollout_workers", "reward_workers", "teacher_workers")
WORKERS = ("learner", "rollout_workers", "reward_workers", "teacher_workers")
RUN_FILE = "relay_rl.cluster.config"  # the one part of the control plane the roles' actors may read
ENTRY = "relay_rl.__main__"  # ``python -m relay_rl``: the CLI, above everything


def module_files() -> dict[str, Path]:
    """Every project module -> its file: ``relay_rl/...`` and the role folders, as ``relay_rl.<...>``."""
    out = {}
    for top in ("relay_rl", *ROLES):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join(parts if top == "relay_rl" else ["relay_rl", *parts])
            out[name] = path
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The project modules ``name`` imports (absolute and relative, at any depth of the file)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # ``import a.b.c`` of a module a.b.c, else its package
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def role_of(module: str) -> str | None:
    part = module.split(".")[1] if module.count(".") else None
    return part if part in ROLES else None


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_graph_is_read(graph):
    # a reader that finds nothing would pass every rule below
    assert len(graph) > 60
    assert "relay_rl.batch" in graph["relay_rl.learner.actor"]
    assert "relay_rl.learner.actor" in graph["relay_rl.cluster.pools"]
    assert "relay_rl.reward_workers.registry" in graph["relay_rl.reward_workers.verifiers"]  # relative import


def test_no_import_circle(graph):
    assert circles(graph) == []


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_vocabulary_imports_no_role(graph):
    """``relay_rl/`` (batch, schema, stats, errors, transports) is what every role speaks: it imports none of them."""
    bad = {m: sorted(t for t in deps if role_of(t)) for m, deps in graph.items() if role_of(m) is None and m != ENTRY}
    assert {m: d for m, d in bad.items() if d} == {}


def test_workers_never_import_the_control_plane(graph):
    """A worker folder may read the run file (``cluster.config``); never the controller, pools, pipeline or CLI."""
    bad = {
        m: sorted(t for t in deps if role_of(t) == "cluster" and not t.startswith(RUN_FILE))
        for m, deps in graph.items()
        if role_of(m) in WORKERS
    }
    assert {m: d for m, d in bad.items() if d} == {}


def test_role_actors_are_started_by_the_control_plane_only(graph):
    actors = {
        "relay_rl.learner.actor",
        "relay_rl.learner.critic",
        "relay_rl.rollout_workers.actor",
        "relay_rl.reward_workers.actor",
        "relay_rl.teacher_workers.actor",
    }
    bad = {
        m: sorted(deps & actors)
        for m, deps in graph.items()
        if deps & actors and role_of(m) != "cluster" and not all(role_of(a) == role_of(m) for a in deps & actors)
    }
    assert bad == {}


# ----------------------------------------------------------------------------------------------------------------
# the family contract: no family-specific branch in shared code
# ----------------------------------------------------------------------------------------------------------------
def shared_files() -> list[Path]:
    return [p for name, p in module_files().items() if not name.startswith("relay_rl.learner.methods")]


def family_branches(path: Path, names: set[str]) -> list[str]:
    """Comparisons with a family's name (``alg.name == "sdpo"``), a role name (``role == "critic"``), and lookups of
    an algorithm's knobs by name (``getattr(cfg.algorithm, "lmbda")``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        operands = [node.left, *node.comparators] if isinstance(node, ast.Compare) else []
        if any(".name" in ast.unparse(c) or "role" in ast.unparse(c) for c in operands):
            for c in operands:
                values = [c] if isinstance(c, ast.Constant) else list(getattr(c, "elts", []))
                for v in values:
                    if isinstance(v, ast.Constant) and v.value in names | {"critic"}:
                        found.append(f"{path.name}:{node.lineno}: compares with {v.value!r}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and node.args
            and "alg" in ast.unparse(node.args[0])
        ):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_family_branch_in_shared_code():
    from relay_rl.learner.methods import FAMILIES

    found = [f for p in shared_files() for f in family_branches(p, set(FAMILIES))]
    assert found == []


def test_the_branch_finder_finds_branches(tmp_path):
    p = tmp_path / "x.py"
    p.write_text(
        'if cfg.algorithm.name == "sdpo" or role in ("critic",):\n    k = getattr(cfg.algorithm, "lmbda", 0)\n'
    )
    assert len(family_branches(p, {"sdpo"})) == 3
