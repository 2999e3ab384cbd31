"""The package's own rules: ftlab holds only what a lesson taught, and says which lesson; the
dependency floors it declares are the versions `.ci/floors` runs."""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import ftlab

TOOLING = {  # infrastructure for instructors and the course itself, taught in no lesson
    "ftlab.checks", "ftlab.cli", "ftlab.exercise_build", "ftlab.grade_batch", "ftlab.grade_kernel",
    "ftlab.grading",
    "ftlab.nbtools",
}  # fmt: skip
LESSON = re.compile(r"[Ll]essons? \d\d")


def modules():
    for info in pkgutil.walk_packages(ftlab.__path__, "ftlab."):
        if not info.name.startswith("ftlab.checks."):  # the checks are data for grading
            yield importlib.import_module(info.name)


def test_every_lesson_module_names_the_lesson_that_teaches_it():
    unnamed = [m.__name__ for m in modules() if m.__name__ not in TOOLING]
    unnamed = [
        name for name in unnamed if not LESSON.search(importlib.import_module(name).__doc__ or "")
    ]
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
