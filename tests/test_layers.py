"""arscale's packages are floors, and imports point down only (ARCHITECTURE.md):

    scaling (0) ← armodels (1) ← pipelines (2) ← cluster (3) ← pipelines.cli (4)

A module may import its own floor and the floors below it. Every import counts, those inside functions too: a lazy
import is still a dependency. The walk reads the sources, so it imports nothing and takes milliseconds.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {"scaling": 0, "armodels": 1, "pipelines": 2, "cluster": 3}
CLI = "pipelines.cli"  # the top floor: the one command, composing the pipeline's commands and the cluster's
CLI_FLOOR = 4


def floor_of(module: str) -> int | None:
    """The floor of an arscale module; None for any other (the standard library, third-party packages)."""
    if module == CLI or module.startswith(CLI + "."):
        return CLI_FLOOR
    return FLOORS.get(module.split(".")[0])


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, tuple[str, ...]]]:
    """(line, the modules it may import) for each import in `source`, anywhere in it: `import a.b` imports a.b,
    `from a import b` a and perhaps a.b (`from pipelines import cli`). Relative imports are resolved against
    `module`."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, (alias.name,)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package `module` is in, `level - 1` packages up
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                yield node.lineno, (base, f"{base}.{alias.name}")


def wrong_way_imports(root: Path) -> list[str]:
    """`file:line: module (floor) imports module (floor)` for every import of a higher floor, in every package."""
    problems = []
    for package in FLOORS:
        for path in sorted((root / package).rglob("*.py")):
            importer = module_name(path, root)
            here = floor_of(importer)
            found = set()
            for line, modules in imports_in(path.read_text(), importer, path.stem == "__init__"):
                there, imported = highest_floor(modules)
                if there > here:
                    found.add((line, f"{path.relative_to(root)}:{line}: {importer} (floor {here}) imports {imported} "
                                     f"(floor {there})"))
            problems += [message for _, message in sorted(found)]
    return problems


def highest_floor(modules: tuple[str, ...]) -> tuple[int, str]:
    """The highest floor among the modules an import may import, and the first of them on it (-1: none of
    arscale's)."""
    floors = [(floor_of(m), m) for m in modules if floor_of(m) is not None]
    if not floors:
        return -1, modules[0]
    top = max(floor for floor, _ in floors)
    return top, next(m for floor, m in floors if floor == top)


def top_level_imports(source: str) -> set[str]:
    """The top-level packages imported when the module is: its body's imports, not those inside functions."""
    found = set()
    pending = list(ast.parse(source).body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
        pending.extend(ast.iter_child_nodes(node))
    return found


def test_imports_point_down_only():
    problems = wrong_way_imports(ROOT)
    assert not problems, "imports of a higher floor (see ARCHITECTURE.md):\n" + "\n".join(problems)


def test_the_check_catches_a_wrong_way_import(tmp_path):
    for package, source in {"scaling": "import numpy\n",
                            "armodels": "from scaling.flops import training_flops\n",
                            "pipelines": "def connect():\n    from cluster import local_cluster\n",
                            "cluster": "from pipelines import cli\nfrom pipelines.config import load_config\n"}.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        (tmp_path / package / "module.py").write_text(source)
    (tmp_path / "pipelines" / "cli.py").write_text("from cluster import commands\nfrom . import module\n")
    (tmp_path / "pipelines" / "steps").mkdir()
    (tmp_path / "pipelines" / "steps" / "__init__.py").write_text("from . import step\n")
    (tmp_path / "pipelines" / "steps" / "step.py").write_text("from .. import module\nfrom .. import cli\n")
    assert wrong_way_imports(tmp_path) == [
        "pipelines/module.py:2: pipelines.module (floor 2) imports cluster (floor 3)",
        "pipelines/steps/step.py:2: pipelines.steps.step (floor 2) imports pipelines.cli (floor 4)",
        "cluster/module.py:1: cluster.module (floor 3) imports pipelines.cli (floor 4)",
    ]


def test_scaling_needs_neither_torch_nor_ray_and_armodels_no_ray():
    for package, banned in {"scaling": {"torch", "ray", "deepspeed"}, "armodels": {"ray"}}.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            source = path.read_text()
            imported = top_level_imports(source) if package == "scaling" else {
                m.split(".")[0] for _, modules in imports_in(source, module_name(path, ROOT)) for m in modules}
            assert not imported & banned, f"{path.relative_to(ROOT)} imports {', '.join(sorted(imported & banned))}"


def test_top_level_imports_leave_out_those_inside_functions():
    source = "import numpy as np\nfrom torch import nn\ntry:\n    import ray.util\nexcept ImportError:\n    pass\n" \
             "def plot():\n    import matplotlib\n"
    assert top_level_imports(source) == {"numpy", "torch", "ray"}
