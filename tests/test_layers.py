"""The floors of the house, enforced: no module imports up a floor, and only the pipeline knows the shapes world.

    foundation  models, sae, store (with its FAISS index and migrations), files, grids, errors, viz, location, lazy
    stages      capture, annotate, dictionary, layout, search, edit, report, shapes
    pipeline    build, the per-stage loops, executors, presets
    surfaces    cli, server

Every import counts, at the top of a module or inside a function: a lazy import up a floor is still a
dependency up a floor. `import atlas` must stay instant, so the package face imports nothing heavy.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folders of the repository and the package name each is installed under (pyproject's package-dir).
SOURCES = {"atlas": "atlas", "cli": "atlas.cli", "migrations": "atlas.migrations", "data": "atlas.data"}
FLOORS = {
    "foundation": ("atlas.errors", "atlas.lazy", "atlas.files", "atlas.grids", "atlas.viz", "atlas.location",
                   "atlas.progress", "atlas.tables", "atlas.models", "atlas.sae", "atlas.store", "atlas.migrations",
                   "atlas.data"),
    "stages": ("atlas.capture", "atlas.annotate", "atlas.dictionary", "atlas.evolution", "atlas.layout",
               "atlas.search", "atlas.edit", "atlas.report", "atlas.shapes"),
    "pipeline": ("atlas.pipeline",),
    "surfaces": ("atlas.cli", "atlas.server"),
}
ORDER = list(FLOORS)
SHAPES_WORLD = "atlas.shapes"
MAY_IMPORT_SHAPES = ("atlas.shapes", "atlas.pipeline", "atlas.cli.shapes")
"""The shapes world's own rooms, the pipeline (its presets and the jobs that train and score the shapes model)
and the `atlas shapes` commands."""


def room_of(module: str) -> str | None:
    """The room (e.g. atlas.store) a module belongs to, or None for the package face `atlas` itself."""
    for rooms in FLOORS.values():
        for room in rooms:
            if module == room or module.startswith(room + "."):
                return room
    return None


def floor_of(module: str) -> str:
    room = room_of(module)
    if room is None:
        raise AssertionError(f"{module} is in no floor: add its room to FLOORS in tests/test_layers.py")
    return next(floor for floor, rooms in FLOORS.items() if room in rooms)


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """Every module of the tree that `module` imports (absolutely or relatively), with its line. `from a import b`
    counts as importing a.b when that is a module of the tree, else as importing a."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parent = parts[: len(parts) - node.level + (1 if is_package else 0)]
                base = ".".join(parent + ([base] if base else []))
            out += [(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base, node.lineno)
                    for alias in node.names]
    return [(name, line) for name, line in out if name == "atlas" or name.startswith("atlas.")]


def wrong_way_imports() -> list[str]:
    known = modules()
    problems: list[str] = []
    for module, path in known.items():
        if module == "atlas":
            continue
        mine = ORDER.index(floor_of(module))
        for target, line in imports_of(module, path, set(known)):
            where = f"{path.relative_to(ROOT)}:{line}"
            if target == "atlas":
                problems.append(f"{where}: {module} imports the package face `atlas`; import the room that owns it")
                continue
            theirs = ORDER.index(floor_of(target))
            if theirs > mine:
                problems.append(f"{where}: {module} ({ORDER[mine]}) imports {target} ({ORDER[theirs]})")
            if room_of(target) == SHAPES_WORLD and not module.startswith(MAY_IMPORT_SHAPES):
                problems.append(f"{where}: {module} imports the shapes world ({target}); only the pipeline may")
    return list(dict.fromkeys(problems))


def test_no_import_runs_up_a_floor() -> None:
    assert wrong_way_imports() == []


def test_every_module_lives_on_a_floor() -> None:
    for module in modules():
        if module != "atlas":
            floor_of(module)


@pytest.mark.parametrize("where, source, expected", [
    ("store", "from atlas.pipeline.build import build_atlas\n", "atlas.store.x (foundation) imports atlas.pipeline"),
    ("store", "def f():\n    from atlas.server import create_app\n", "atlas.store.x (foundation) imports atlas.server"),
    ("layout", "from atlas.shapes.world import POSITIONS\n", "atlas.layout.x imports the shapes world"),
    ("layout", "from ..shapes import world\n", "atlas.layout.x imports the shapes world"),
])
def test_the_check_finds_a_wrong_way_import(tmp_path: Path, where: str, source: str, expected: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A store module importing the pipeline or the server (inside a function), a stage importing the shapes world
    (absolutely or relatively): each is reported once."""
    for folder in ("atlas", f"atlas/{where}", "atlas/pipeline", "atlas/server", "atlas/shapes"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "atlas" / "pipeline" / "build.py").write_text("")
    (tmp_path / "atlas" / "shapes" / "world.py").write_text("")
    (tmp_path / "atlas" / where / "x.py").write_text(source)
    (tmp_path / "atlas" / where / "fine.py").write_text("from atlas.store import x\nfrom . import x\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "SOURCES", {"atlas": "atlas"})
    problems = wrong_way_imports()
    assert len(problems) == 1 and expected in problems[0], problems


def test_import_atlas_loads_no_heavy_library() -> None:
    """The package face is lazy: `import atlas` (and the CLI's startup) loads no torch, DuckDB, SQLAlchemy or FAISS;
    a name of the face loads its room on first use."""
    heavy = ("torch", "duckdb", "sqlalchemy", "faiss", "diffusers", "transformers", "pyarrow")
    code = ("import sys, atlas, atlas.cli.main; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules)); "
            "atlas.open; print('duckdb' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.split("\n")[:2] == ["[]", "True"], out


def test_the_package_list_names_every_package_of_the_tree() -> None:
    """pyproject.toml lists the packages by hand (cli/, migrations/, data/ install under atlas.): a new room that
    is not listed would be missing from `pip install .`."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {module for module, path in modules().items() if path.name == "__init__.py"}
    assert listed == packages | data_packages()


def data_packages() -> set[str]:
    """Folders of shipped files (templates, migration scripts, model weights) inside a package: Python can import
    them as namespace packages, so setuptools wants them listed (it warns about each one that is not) and only
    then ships their files. A folder whose name is no identifier (shapes-dit) cannot be imported and is not one."""
    found = set()
    for folder, package in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*")):
            parts = path.relative_to(ROOT / folder).parts
            if not path.is_dir() or (path / "__init__.py").exists() or "__pycache__" in parts:
                continue
            parent_importable = (path.parent / "__init__.py").exists() or ".".join([package, *parts[:-1]]) in found
            if parent_importable and all(p.isidentifier() for p in parts):
                found.add(".".join([package, *parts]))
    return found


def test_every_imported_package_is_declared():
    """Each third-party module the package imports comes from a distribution pyproject.toml names (a dependency or
    an extra), so `pip install concept-atlas[...]` never leaves an import to luck."""
    import ast
    import importlib.metadata
    import re
    import sys

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    declared = {re.split(r"[<>=!~\[; ]", d)[0].lower().replace("_", "-") for d in wanted}
    owners = importlib.metadata.packages_distributions()
    modules = set()
    for path in [*ROOT.glob("atlas/**/*.py"), *ROOT.glob("cli/*.py"), *ROOT.glob("migrations/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"atlas", "ram"}  # ram: RAM++ from its git repo, optional
    undeclared = {m: owners.get(m) for m in third_party
                  if not {d.lower().replace("_", "-") for d in owners.get(m, [m])} & declared}
    assert not undeclared


def test_the_floor_constraints_are_the_pyproject_floors():
    """constraints-floor.txt (what `make test-floor` installs) pins every dependency at its pyproject.toml floor,
    torch and torchvision at our own pin (constraints.txt), and nothing else."""
    import re

    import tomllib
    from packaging.version import Version

    def pins(name: str) -> dict[str, str]:
        lines = (line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines())
        return {k.lower().replace("_", "-"): v for k, v in (line.split("==") for line in lines if line)}

    floors = {}
    for dependency in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, floor = re.fullmatch(r"([\w.-]+)>=([\w.]+)", dependency.replace(" ", "")).groups()
        floors[name.lower().replace("_", "-")] = floor
    ours, floor_pins = pins("constraints.txt"), pins("constraints-floor.txt")
    assert {n: floor_pins.get(n) for n in ours} == ours
    rest = {n: v for n, v in floor_pins.items() if n not in ours}
    assert rest.keys() == floors.keys() - ours.keys()
    assert all(Version(v) == Version(floors[n]) for n, v in rest.items()), {n: (v, floors[n]) for n, v in rest.items()}
