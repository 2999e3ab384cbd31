"""The package's own rules: library and tooling apart by folder, no import cycles, one home per
name, every lesson module names its lesson; the floors it declares are what `.ci/floors` runs."""

import ast
import importlib
import inspect
import json
import pkgutil
import re
from pathlib import Path

import ftlab

PACKAGE = Path(ftlab.__file__).parent
TOOLING = (
    "bench",
    "exercises",
    "cli",
)  # folders (and cli.py) of course tooling, taught in no lesson
LESSON = re.compile(r"[Ll]essons? \d\d")


def is_tooling(module: str) -> bool:
    """Whether `module` (e.g. "ftlab.exercises.grade") lies in a tooling folder."""
    parts = module.split(".")
    return len(parts) > 1 and parts[1] in TOOLING


def modules():
    for info in pkgutil.walk_packages(ftlab.__path__, "ftlab."):
        if ".checks." not in info.name:  # the exercises' checks are data for grading
            yield importlib.import_module(info.name)


def imports_of(path: Path) -> set[str]:
    """The ftlab modules a source file imports, at any depth (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ftlab"):
            found.add(node.module)
            for alias in node.names:  # `from ftlab.training import loop` imports a module
                if (
                    (PACKAGE.parent / (node.module + "." + alias.name).replace(".", "/"))
                    .with_suffix(".py")
                    .exists()
                ):
                    found.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("ftlab")}
    return found


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        graph[name.removesuffix(".__init__")] = imports_of(path)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules (package __init__ re-exports aside)."""
    found, done = [], set()

    def visit(module, path):
        if module in path:
            found.append(path[path.index(module) :] + [module])
            return
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            if target != "ftlab" and target in graph:
                visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return found


def test_no_module_imports_a_module_that_imports_it_back():
    assert cycles(import_graph()) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]  # finds one


def test_the_library_never_imports_course_tooling():
    graph = import_graph()
    library = [module for module in graph if not is_tooling(module) and module != "ftlab"]
    reaching = {m: sorted(t for t in graph[m] if is_tooling(t)) for m in library}
    assert {m: t for m, t in reaching.items() if t} == {}
    assert is_tooling("ftlab.exercises.grade") and not is_tooling("ftlab.training.loop")


DOWNWARD = {"ftlab.training": "ftlab.scaling", "ftlab.models": "ftlab.training"}  # never imports


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports against DOWNWARD: training knows nothing of scaling, models nothing of training."""

    def inside(module, folder):
        return module == folder or module.startswith(folder + ".")

    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        for importer, imported in DOWNWARD.items()
        if inside(module, importer) and inside(target, imported)
    )


def test_speed_ups_plug_into_training_and_models_know_nothing_of_training():
    graph = import_graph()
    assert upward_imports(graph) == []
    assert "ftlab.training.loop" in graph["ftlab.scaling.compile"]  # the allowed way is seen
    before = {"ftlab.training.loop": {"ftlab.scaling.cuda_graphs", "ftlab.training.step"}}
    assert upward_imports(before) == ["ftlab.training.loop imports ftlab.scaling.cuda_graphs"]


def test_every_public_name_has_one_home():
    """Package __init__ files (ftlab's own short list aside) hold no names; no module lists
    another's names in __all__; the repository imports each name from its home."""
    misplaced = []
    for module in modules():
        for name, obj in vars(module).items():
            home = getattr(obj, "__module__", None)
            if name.startswith("_") or not callable(obj) or not (home or "").startswith("ftlab"):
                continue
            reexported = (
                name in getattr(module, "__all__", ())
                or module.__name__ != "ftlab"
                and (module.__file__.endswith("__init__.py"))
            )
            if home != module.__name__ and reexported and not inspect.ismodule(obj):
                misplaced.append(f"{module.__name__}.{name} (home: {home})")
    assert misplaced == []


FROM_IMPORT = re.compile(r"^\s*from (ftlab(?:\.\w+)+) import \(?([\w\s,]+)\)?", re.M)


def misplaced_imports(text: str) -> list[str]:
    """`from ftlab.M import N` lines in `text` where N's home is not M."""
    found = []
    for module, names in FROM_IMPORT.findall(text):
        for name in re.split(r"[\s,]+", names.strip()):
            obj = getattr(importlib.import_module(module), name, None) if name else None
            home = getattr(obj, "__module__", module) if callable(obj) else module
            if not inspect.ismodule(obj) and home.startswith("ftlab") and home != module:
                found.append(f"from {module} import {name} (home: {home})")
    return found


def test_the_repository_imports_every_name_from_its_home():
    root = PACKAGE.parent
    sources = [*root.glob("ftlab/**/*.py"), *root.glob("tests/**/*.py")]
    texts = [path.read_text() for path in sources]
    for notebook in [*root.glob("notebooks/*.ipynb"), *root.glob("solutions/*.ipynb")]:
        cells = json.loads(notebook.read_text())["cells"]
        texts.append("\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code"))
    assert [line for text in texts for line in misplaced_imports(text)] == []
    wrong = misplaced_imports("from ftlab.training.loop import compute_loss")
    assert wrong == ["from ftlab.training.loop import compute_loss (home: ftlab.training.step)"]


def test_every_lesson_module_names_the_lesson_that_teaches_it():
    library = [m for m in modules() if not is_tooling(m.__name__) and m.__name__ != "ftlab"]
    unnamed = [m.__name__ for m in library if not LESSON.search(m.__doc__ or "")]
    assert unnamed == []
    assert not LESSON.search("the engine of the course")  # the pattern is not trivially true


def test_every_public_function_and_class_has_a_docstring():
    missing = [
        f"{module.__name__}.{name}"
        for module in modules()
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == module.__name__
        and not obj.__doc__
    ]
    assert missing == []


TORCH_PINNED = {"torch", "torchvision"}  # .ci/floors keeps CI's local wheels (.ci/constraints.txt)


def floor_mismatches(pyproject: str, floors: str) -> list[str]:
    """What differs between pyproject's `name>=version` floors and .ci/floors.txt's pins."""
    from packaging.version import Version

    dependencies = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    wanted = dict(re.findall(r'"([A-Za-z0-9_.-]+)>=([0-9.]+)"', dependencies))
    pinned = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([0-9.]+)$", floors, flags=re.M))
    return [
        f"{name}: pyproject >={floor}, .ci/floors.txt =={pinned.get(name)}"
        for name, floor in wanted.items()
        if name not in TORCH_PINNED
        and (name not in pinned or Version(pinned[name]) != Version(floor))
    ]


def test_the_floors_run_by_ci_floors_are_pyprojects_floors():
    root = Path(__file__).parents[1]
    pyproject = (root / "pyproject.toml").read_text()
    floors = (root / ".ci" / "floors.txt").read_text()
    assert floor_mismatches(pyproject, floors) == []
    # a floor raised in pyproject without .ci/floors.txt is caught, and so is one left out
    raised = pyproject.replace('"datasets>=2.19"', '"datasets>=3.0"')
    assert floor_mismatches(raised, floors) == [
        "datasets: pyproject >=3.0, .ci/floors.txt ==2.19.0"
    ]
    dropped = floors.replace("timm==0.9.16\n", "")
    assert floor_mismatches(pyproject, dropped) == [
        "timm: pyproject >=0.9.16, .ci/floors.txt ==None"
    ]
