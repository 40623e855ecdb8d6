"""
The package's structure: dependencies run one way (data, modeling -> evaluation -> engine -> tools)
and nothing patches detectron2 (no assignment to an attribute of an imported detectron2 name).
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tinysaver_det"
SETTERS = ("setattr", "delattr")
SOURCES = sorted(
    p
    for folder in ("tinysaver_det", "tools", "bench", "datasets")
    for p in (REPO / folder).rglob("*.py")
)


def imported_modules(tree: ast.AST, path: Path):
    """Every module a file imports, relative imports resolved against its package."""
    package = path.relative_to(REPO).with_suffix("").parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def detectron2_names(tree: ast.AST):
    """Local names bound to something imported from detectron2 (modules, functions, classes)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "detectron2":
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "detectron2":
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def patches(tree: ast.AST):
    """Assignments to (or setattr on) an attribute of a name imported from detectron2."""
    names = detectron2_names(tree)

    def root(node):
        while isinstance(node, ast.Attribute):
            node = node.value
        return node.id if isinstance(node, ast.Name) else None

    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in SETTERS and node.args:
            targets = [ast.Attribute(value=node.args[0], attr="?")]
        while targets:
            target = targets.pop()
            if isinstance(target, (ast.Tuple, ast.List)):
                targets.extend(target.elts)
            elif isinstance(target, ast.Attribute) and root(target) in names:
                yield node.lineno, ast.unparse(target)


def test_sources_are_found():
    assert PACKAGE / "engine" / "trainer.py" in SOURCES and len(SOURCES) > 20


@pytest.mark.parametrize("layer", ["metrics", "data", "modeling", "evaluation"])
def test_lower_layers_do_not_import_engine(layer):
    offenders = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for module in imported_modules(ast.parse(path.read_text()), path):
            if module.startswith("tinysaver_det.engine"):
                offenders.append(f"{path.relative_to(REPO)} imports {module}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize(
    "layer,above",
    [
        ("metrics", ("data", "modeling", "evaluation", "engine")),
        ("data", ("modeling", "evaluation")),
        ("modeling", ("evaluation",)),
    ],
)
def test_lower_layers_do_not_import_the_layers_above(layer, above):
    offenders = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for module in imported_modules(ast.parse(path.read_text()), path):
            if any(module.startswith(f"tinysaver_det.{name}") for name in above):
                offenders.append(f"{path.relative_to(REPO)} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_nothing_assigns_to_detectron2_attributes():
    found = [
        f"{path.relative_to(REPO)}:{line}: {what}"
        for path in SOURCES
        for line, what in patches(ast.parse(path.read_text()))
    ]
    assert not found, "detectron2 is patched:\n" + "\n".join(found)


def test_the_patch_check_sees_aliases_and_setattr():
    source = (
        "from detectron2.data import detection_utils as utils\n"
        "import detectron2.engine.defaults\n"
        "from detectron2.engine import defaults as d\n"
        "utils.read_image = None\n"
        "detectron2.engine.defaults.create_ddp_model = None\n"
        "setattr(d, 'create_ddp_model', None)\n"
        "a, utils.b = 1, 2\n"
        "local = object()\nlocal.x = 1\n"
    )
    assert sorted(line for line, _ in patches(ast.parse(source))) == [4, 5, 6, 7]


def test_the_package_does_not_run_the_tools():
    # Orchestrating tools/ (subprocesses, the repository's layout) is tools/demo.py's job.
    offenders = [
        f"{path.relative_to(REPO)} imports {module}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for module in imported_modules(ast.parse(path.read_text()), path)
        if module.split(".")[0] == "subprocess"
    ]
    assert not offenders, "\n".join(offenders)
