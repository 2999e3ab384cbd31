"""Course tooling for the notebooks: generated badges and setup cells; settled progress bars.

The repository address lives in pyproject's `[project.urls] Repository`;
`python -m ftlab.exercises.nbtools sync notebooks/*.ipynb exercises/*.ipynb solutions/*.ipynb`
rewrites the tagged cells, and a test checks that each badge points at its own file.
`python -m ftlab.exercises.nbtools settle notebooks/*.ipynb`, after a run, gives each stored
progress bar its final text. Not a lesson topic.
"""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BADGE_TAG = "colab-badge"
SETUP_TAG = "setup"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
TQDM_WIDGETS = ["HTMLModel", "FloatProgressModel", "HTMLModel"]  # label, bar, counts
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def repository_url() -> str:
    """Return the repository address from pyproject.toml (or the installed package's metadata)."""
    pyproject = ROOT / "pyproject.toml"
    if pyproject.exists():
        match = re.search(r'^Repository\s*=\s*"([^"]+)"', pyproject.read_text(), re.MULTILINE)
        if match:
            return match.group(1).rstrip("/")
    from importlib.metadata import metadata

    for entry in metadata("ftlab").get_all("Project-URL") or []:
        label, _, url = entry.partition(", ")
        if label == "Repository":
            return url.rstrip("/")
    raise RuntimeError("no Repository URL in pyproject.toml [project.urls]")


def colab_url(relative_path: str) -> str:
    """Return the Colab address that opens `relative_path` (e.g. notebooks/00_start_here.ipynb)."""
    github = repository_url().removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{github}/blob/main/{relative_path}"


def badge_markdown(relative_path: str) -> str:
    """Return the Markdown of an "Open in Colab" badge for a notebook."""
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(relative_path)})"


def setup_source() -> str:
    """Return the one setup cell: install ftlab inside Colab only, never reinstalling its torch."""
    return (
        "# Setup. In Colab this installs ftlab and the small offline models (about a minute);\n"
        "# Colab's own torch is kept. Elsewhere, install once as the README says.\n"
        "import sys\n\n"
        'if "google.colab" in sys.modules:\n'
        f'    %pip install -q "ftlab[offline] @ git+{repository_url()}"'
    )


def sync(path: Path) -> bool:
    """Rewrite the badge and setup cells of one notebook; return True if it changed."""
    notebook = nbformat.read(path, as_version=4)
    relative = path.resolve().relative_to(ROOT).as_posix()
    changed = False
    wanted = {BADGE_TAG: badge_markdown(relative), SETUP_TAG: setup_source()}
    for tag, source in wanted.items():
        cells = [c for c in notebook.cells if tag in c.get("metadata", {}).get("tags", [])]
        if not cells:
            raise ValueError(f"{relative}: no cell tagged {tag!r}; add one (see CONTRIBUTING.md)")
        for cell in cells:
            if cell.source != source:
                cell.source, changed = source, True
    if changed:
        nbformat.write(notebook, path)
    return changed


def header_cells(relative_path: str) -> list:
    """Return the badge and setup cells a new notebook starts with (tagged for `sync`)."""
    badge = nbformat.v4.new_markdown_cell(badge_markdown(relative_path))
    badge.metadata["tags"] = [BADGE_TAG]
    setup = nbformat.v4.new_code_cell(setup_source())
    setup.metadata["tags"] = [SETUP_TAG]
    return [badge, setup]


def settle(path: Path) -> int:
    """Give each stored tqdm widget the text of its last frame; return how many changed.

    A widget output keeps, for viewers without widgets (GitHub, a text diff), the text of its
    first frame ("0%|          | 0/63"); the last frame is in the widget state that
    `jupyter nbconvert --execute` saves in the notebook's metadata.
    """
    notebook = nbformat.read(path, as_version=4)
    state = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    changed = 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            text = view and progress_text(state, view["model_id"])
            if text and output["data"].get("text/plain") != text:
                output["data"]["text/plain"], changed = text, changed + 1
    if changed:
        nbformat.write(notebook, path)
    return changed


def progress_text(state: dict, model_id: str) -> str | None:
    """The text line of a stored tqdm widget (a box of label, bar, counts); None for others."""
    box = state.get(model_id, {})
    is_box = box.get("model_name") == "HBoxModel"
    children = box.get("state", {}).get("children", []) if is_box else []
    parts = [state.get(child.removeprefix("IPY_MODEL_"), {}) for child in children]
    if [part.get("model_name") for part in parts] != TQDM_WIDGETS:
        return None
    label, bar, counts = (part["state"] for part in parts)
    filled = round(10 * bar["value"] / bar["max"]) if bar.get("max") else 0
    drawn = "█" * filled + " " * (10 - filled)
    text = f"{label.get('value', '')}|{drawn}|{counts.get('value', '')}"
    return html.unescape(text).replace("\u2007", " ")  # tqdm pads with figure spaces


def main(argv: list[str] | None = None) -> int:
    """`python -m ftlab.exercises.nbtools sync|settle PATH...`: badges, setup cells, bars."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("sync", "settle"):
        print("usage: python -m ftlab.exercises.nbtools sync|settle NOTEBOOK...", file=sys.stderr)
        return 2
    for name in args[1:]:
        if args[0] == "sync" and sync(Path(name)):
            print(f"updated {name}")
        elif args[0] == "settle" and (count := settle(Path(name))):
            print(f"{name}: {count} progress bars settled")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
