"""Keep every notebook's Colab badge and install cell generated from one repository address.

The address lives in pyproject's `[project.urls] Repository`; `python -m ftlab.nbtools sync
notebooks/*.ipynb exercises/*.ipynb solutions/*.ipynb` rewrites the tagged cells, and a test
checks that each badge points at its own file. Not a lesson topic: course tooling.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BADGE_TAG = "colab-badge"
SETUP_TAG = "setup"
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


def main(argv: list[str] | None = None) -> int:
    """`python -m ftlab.nbtools sync PATH...`: regenerate badges and setup cells."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "sync":
        print("usage: python -m ftlab.nbtools sync NOTEBOOK...", file=sys.stderr)
        return 2
    for name in args[1:]:
        if sync(Path(name)):
            print(f"updated {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
