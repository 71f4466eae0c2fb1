"""The package's data flows one way: no import cycle between lfmkit's modules, and no module
importing one of a higher layer — imports inside functions included (read from the source with
`ast`, so a lazy import counts as much as a top-level one)."""

import ast
from pathlib import Path

import lfmkit

ROOT = Path(lfmkit.__file__).parent

# Lowest first. A module may import its own layer and the layers before it. The README's
# "What is where" table lists the same order.
LAYERS = [
    ["errors", "checks", "config", "default_model"],
    ["io"],
    ["text", "testing"],
    ["model"],
    ["kernels"],
    ["quant"],
    ["fast"],
    ["loader"],
    ["inference"],
    ["train", "evals"],
    ["serve", "export"],
    ["bench"],
    ["commands", "cli", "__main__"],
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every lfmkit module `name` imports, anywhere in its source."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "lfmkit")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "lfmkit":
                target = node.module
            else:
                continue
            for a in node.names:  # `from . import kernels` imports the submodule
                sub = f"{target}.{a.name}"
                found.add(sub if sub in known else target)
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    assert len(parts) > 1, "the lfmkit package root is the public facade; no module imports it"
    assert parts[1] in RANK, f"{module}: not in a layer (add it to LAYERS and the README)"
    return RANK[parts[1]]


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) - {name} for name, path in mods.items() if name != "lfmkit"}


def test_no_module_imports_a_higher_layer_or_the_package_root():
    bad = []
    for name, deps in graph().items():
        for dep in deps:
            if dep == "lfmkit":
                bad.append(f"{name} imports the package root")
            elif layer(dep) > layer(name):
                bad.append(f"{name} (layer {layer(name)}) imports {dep} (layer {layer(dep)})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(g.get(node, ())):
            if dep not in g:
                continue
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    src = tmp_path / "lfmkit" / "model"
    src.mkdir(parents=True)
    f = src / "x.py"
    f.write_text("def f():\n    from ..serve import app\n    import lfmkit.inference.engine\n")
    found = imports_of("lfmkit.model.x", f, {"lfmkit.serve.app"})
    assert found == {"lfmkit.serve.app", "lfmkit.inference.engine"}


def test_every_public_name_imports():
    for name in dir(lfmkit):
        if not name.startswith("_"):
            assert getattr(lfmkit, name) is not None, name
