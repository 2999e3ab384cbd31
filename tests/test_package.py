"""The package's own rule: ftlab holds only what a lesson taught, and says which lesson."""

import importlib
import inspect
import pkgutil
import re

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
