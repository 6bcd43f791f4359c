"""The modules of ``trainer/`` import each other in layers, without a cycle, at module top.

Read with ``ast`` only (nothing is imported). The layers, lowest first (a module takes the layer
of its longest matching prefix):

    errors, fake, rlhf, rm_metrics  (no trainer imports)
    -> infra -> data -> models -> decode, rollout
    -> eval.plot, eval.report       (the end-of-run plots and page the trainers write)
    -> sft, reward, ppo -> eval -> cli, demo

* The graph of every ``trainer.*`` import -- at module top and inside functions -- has no cycle
  (``if TYPE_CHECKING:`` and ``if __name__ == "__main__":`` blocks are not imports of the module).
* A module-top import never reaches a higher layer.
* An import inside a function is the exception and says why on its line: ``# lazy: <reason>``
  (e.g. torch, kept off the torch-free ``fgrlhf --help``) or ``# optional: <reason>``; a
  temporary re-export shim that reaches a higher layer says ``# layering: <until when>`` (such an
  edge is the shim's own and is left out of the graph).
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [  # lowest first
    ("trainer.errors", "trainer.fake", "trainer.rlhf", "trainer.rm_metrics"),
    ("trainer.infra",),
    ("trainer.data",),
    ("trainer.models",),
    ("trainer.decode", "trainer.rollout", "trainer.memory"),
    ("trainer.eval.plot", "trainer.eval.report"),
    ("trainer.loop",),  # the run skeleton: set-up, schedule, resume, cadence, end of run
    ("trainer.sft", "trainer.reward", "trainer.ppo"),
    ("trainer.eval",),
    ("trainer.cli", "trainer.demo"),
]
# Files whose function-local imports are not checked yet (none: every file is)
PENDING: set[str] = set()
MARKERS = ("# lazy:", "# optional:", "# layering:")
SKIP = ("TYPE_CHECKING", "__name__ == '__main__'")  # type-only imports; a script's main block
FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
MODS = {
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
    for p in sorted((ROOT / "trainer").rglob("*.py"))
}


def layer(mod: str) -> int:
    """The layer of ``mod``; the bare ``trainer`` package (a docstring) sits at the bottom."""
    if mod == "trainer":
        return 0
    hits = [(len(p), i) for i, ps in enumerate(LAYERS) for p in ps if mod == p or mod.startswith(p + ".")]
    assert hits, f"{mod} is in no layer: add it to LAYERS in {Path(__file__).name}"
    return max(hits)[1]


def _absolute(mod: str, node: ast.ImportFrom) -> str:
    """The absolute module of ``from <node.module> import ...`` written in module ``mod``."""
    if not node.level:
        return node.module or ""
    package = mod if MODS[mod].name == "__init__.py" else mod.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports(mod: str, node: ast.AST, top: bool = True):
    """``(imported module, the import node, at module top)`` of every ``trainer.*`` import under
    ``node`` (``from trainer.eval import plot`` imports the module ``trainer.eval.plot``)."""
    for ch in ast.iter_child_nodes(node):
        if isinstance(ch, ast.If) and ast.unparse(ch.test) in SKIP:
            continue
        if isinstance(ch, ast.Import):
            for a in ch.names:
                if a.name == "trainer" or a.name.startswith("trainer."):
                    yield a.name, ch, top
        elif isinstance(ch, ast.ImportFrom):
            base = _absolute(mod, ch)
            if base == "trainer" or base.startswith("trainer."):
                subs = sorted({f"{base}.{a.name}" for a in ch.names} & MODS.keys())
                for target in subs or [base]:
                    yield target, ch, top
        yield from imports(mod, ch, top and not isinstance(ch, FUNCS))


def scan() -> tuple[dict[str, dict[str, str]], list[str]]:
    """The import graph ``{module: {imported module: "file:line"}}`` and the rule violations."""
    graph: dict[str, dict[str, str]] = {m: {} for m in MODS}
    bad = []
    for mod, path in MODS.items():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for target, node, top in imports(mod, ast.parse(text, rel)):
            where = f"{rel}:{node.lineno} imports {target}"
            src = "\n".join(lines[node.lineno - 1 : node.end_lineno])
            marker = next((m for m in MARKERS if m in src), None)
            if top and layer(target) > layer(mod):
                bad.append(f"{where} (layer {layer(target)}) at module top, above its own layer {layer(mod)}")
            if not top and rel not in PENDING:
                if marker is None:
                    bad.append(f"{where} inside a function: move it to the module top, or say why "
                               f"on its line ({' / '.join(m + ' ...' for m in MARKERS)})")  # fmt: skip
                elif layer(target) > layer(mod) and marker != "# layering:":
                    bad.append(f"{where} (layer {layer(target)}) above its own layer {layer(mod)}")
            if marker == "# layering:" and not top:
                continue  # a temporary re-export shim: not an edge of the layered graph
            if target != mod and target in MODS:
                graph[mod].setdefault(target, f"{rel}:{node.lineno}")
    return graph, bad


def test_every_trainer_module_has_a_layer():
    assert len(MODS) > 30, sorted(MODS)
    for mod in MODS:
        layer(mod)


def test_trainer_imports_have_no_cycle():
    graph, _ = scan()
    try:
        graphlib.TopologicalSorter({m: set(ts) for m, ts in graph.items()}).prepare()
    except graphlib.CycleError as e:
        cycle = e.args[1]  # [a, b, ..., a]: each imports the one before it
        edges = [f"{b} -> {a} ({graph[b][a]})" for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("import cycle in trainer/:\n" + "\n".join(reversed(edges))) from None


def test_trainer_imports_are_layered_and_at_module_top():
    _, bad = scan()
    assert not bad, "\n".join(bad)


def test_the_checks_catch_a_violation(tmp_path, monkeypatch):
    """The scan itself: an upward module-top import, an unmarked import in a function and a cycle
    are all reported."""
    pkg = tmp_path / "trainer"
    (pkg / "infra").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""x"""\n')
    (pkg / "infra" / "__init__.py").write_text('"""x"""\n')
    (pkg / "errors.py").write_text("def f():\n    from trainer.infra import dist\n")
    dist = "from trainer import models\n\n\ndef g():\n    import trainer.fake\n"
    (pkg / "infra" / "dist.py").write_text(dist)
    (pkg / "models.py").write_text("def h():\n    from trainer.infra.dist import g  # lazy: torch\n")
    mods = {
        ".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"): p
        for p in pkg.rglob("*.py")
    }
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "MODS", mods)
    graph, bad = scan()
    assert graph["trainer.errors"] == {"trainer.infra.dist": "trainer/errors.py:2"}
    text = "\n".join(bad)
    assert "trainer/infra/dist.py:1 imports trainer.models (layer 3) at module top" in text
    assert "trainer/infra/dist.py:5 imports trainer.fake inside a function" in text
    assert "trainer/errors.py:2 imports trainer.infra.dist inside a function" in text
    assert "trainer/models.py" not in text  # marked, and below its layer
    try:
        test_trainer_imports_have_no_cycle()
    except AssertionError as e:
        assert "trainer.infra.dist -> trainer.models" in str(e) and "import cycle" in str(e)
    else:
        raise AssertionError("the cycle errors -> dist -> models -> dist was not found")
