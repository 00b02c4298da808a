"""The import graph is the layering docs/architecture.md draws: each module imports only
its own layer and the ones below, pjx imports sit at module level outside the CLI (none
hidden inside a function), and there is no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "pjx"

# Lowest first. A module imports pjx modules of its own layer or lower only.
LAYERS = [
    (
        "pjx.nn",
        "pjx.host_memory",
        "pjx.xla_cpu",
        "pjx.compile_cache",
        "pjx.examples",
        "pjx.logs",
        "pjx.distributed",
        "pjx.checkpoint.lock",
        "pjx.remat",
        "pjx.values",
        "pjx.uri",
        "pjx.flops",
        "pjx.telemetry",
        "pjx.watchdog",
    ),
    ("pjx.models",),
    ("pjx.lora", "pjx.ghost_clipping", "pjx.grads"),
    ("pjx.losses", "pjx.masking", "pjx.metrics", "pjx.packing", "pjx.images"),
    ("pjx.tasks",),
    (
        "pjx.tokenizers",
        "pjx.data",
        "pjx.optim",
        "pjx.privacy",
        "pjx.sharding",
        "pjx.checkpoint",
        "pjx.checkpoint.items",
        "pjx.hf",
        "pjx.nnx",
        "pjx.metrics_log",
    ),
    ("pjx.init_from", "pjx.teacher", "pjx.plan"),
    ("pjx.config", "pjx.resolution", "pjx.workdir", "pjx.checkpoint.saved", "pjx.convert"),
    ("pjx.train", "pjx.loop"),
    (
        "pjx.run",
        "pjx.privacy.audit",
        "pjx.bench",
        "pjx.bench_from_config",
        "pjx.inference",
        "pjx.plot",
        "pjx.explain",
        "pjx.evaluation",
        "pjx.glue",
    ),
    ("pjx.cli",),
]


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def layer(module: str) -> int:
    """The layer of the longest name in LAYERS that is `module` or a package holding it (a
    package's module may sit higher than the package: pjx.privacy.audit runs whole jobs)."""
    found = [
        (len(g), i)
        for i, group in enumerate(LAYERS)
        for g in group
        if module == g or module.startswith(g + ".")
    ]
    if not found:
        raise AssertionError(f"{module} is in no layer of tests/test_layering.py: add it")
    return max(found)[1]


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> list[tuple[str, bool]]:
    """(imported pjx module, at module level?) for every pjx import of `module`."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top = {id(n) for n in tree.body} | {
        id(n) for n in ast.walk(tree) if isinstance(n, (ast.If, ast.Try))
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            target = _resolve(n)
            if target and target.startswith("pjx") and target != module:
                found.append((target, id(node) in top or _module_level(tree, node)))
    return found


def _module_level(tree, node) -> bool:
    """True unless `node` sits inside a function or class body."""
    for parent in ast.walk(tree):
        if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if any(child is node for child in ast.walk(parent)):
                return False
    return True


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module):
    if module == "pjx":
        return
    mine = layer(module)
    for target, _ in imports(module):
        if target == "pjx":
            continue
        assert layer(target) <= mine, (
            f"{module} (layer {mine}) imports {target} (layer {layer(target)}), a higher layer"
        )


# The engine: models, their layers, gradients, the train step. Process-wide CPU tuning
# (pjx.xla_cpu) is applied by the `pjx` command, never pulled in by the engine.
ENGINE = (
    "pjx.nn",
    "pjx.models",
    "pjx.grads",
    "pjx.ghost_clipping",
    "pjx.lora",
    "pjx.train",
    "pjx.optim",
    "pjx.losses",
)


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if any(m == e or m.startswith(e + ".") for e in ENGINE))
)
def test_the_engine_does_not_import_the_cpu_tuning(module):
    assert "pjx.xla_cpu" not in {t for t, _ in imports(module)}, (
        f"{module} imports pjx.xla_cpu: per-backend choices of the engine live in "
        "pjx.nn.backend; CPU tuning is applied by the pjx command"
    )


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.startswith("pjx.cli")))
def test_no_pjx_import_hides_in_a_function(module):
    hidden = [t for t, top in imports(module) if not top]
    assert not hidden, f"{module} imports {hidden} inside a function: import at module level"


def test_no_import_cycle():
    graph = {m: {t for t, _ in imports(m)} - {"pjx"} for m in MODULES if m != "pjx"}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m, path):
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [m, t]))
            if t not in state:
                visit(t, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


# What runs a resolved plan. They read fields of a pjx.plan.Plan: neither the run config
# (its keys, its defaults) nor the private-training host side (the plan holds the DP-SGD
# mechanism the step runs, and the batch it reads).
PLAN_READERS = ("pjx.train", "pjx.loop", "pjx.bench", "pjx.telemetry", "pjx.flops")


@pytest.mark.parametrize("module", PLAN_READERS)
def test_the_engine_reads_the_plan_not_the_config(module):
    targets = {t for t, _ in imports(module)}
    assert not targets & {"pjx.config", "pjx.privacy"}, (
        f"{module} imports {sorted(targets & {'pjx.config', 'pjx.privacy'})}: read what the "
        "run resolved from pjx.plan.Plan's fields"
    )
    source = MODULES[module].read_text()
    for read in ("config[", "config.get(", "s.config", "c.get("):
        assert read not in source, f"{module} reads the run config ({read!r}): use the plan"
