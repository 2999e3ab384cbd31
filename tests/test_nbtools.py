import json
from pathlib import Path

import nbformat
import pytest

from ftlab import nbtools

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(
    p for folder in ("notebooks", "exercises", "solutions") for p in (ROOT / folder).glob("*.ipynb")
)


def test_repository_address_comes_from_pyproject():
    url = nbtools.repository_url()
    assert url.startswith("https://github.com/")
    assert f'Repository = "{url}"' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_badge_points_at_its_own_file_and_setup_is_generated(path):
    notebook = json.loads(path.read_text())
    relative = path.relative_to(ROOT).as_posix()
    badges = [c for c in notebook["cells"] if "colab-badge" in c["metadata"].get("tags", [])]
    assert badges, f"{relative} has no Colab badge cell"
    for cell in badges:
        assert "".join(cell["source"]) == nbtools.badge_markdown(relative)
    setups = [c for c in notebook["cells"] if "setup" in c["metadata"].get("tags", [])]
    assert setups and "".join(setups[0]["source"]) == nbtools.setup_source()


def test_sync_repairs_a_stale_badge(tmp_path, monkeypatch):
    monkeypatch.setattr(nbtools, "ROOT", tmp_path)
    notebook = nbformat.v4.new_notebook(cells=nbtools.header_cells("notebooks/x.ipynb"))
    (tmp_path / "notebooks").mkdir()
    path = tmp_path / "notebooks" / "99_new.ipynb"
    nbformat.write(notebook, path)
    assert nbtools.sync(path)  # the badge named x.ipynb, the file is 99_new.ipynb
    assert "notebooks/99_new.ipynb" in nbformat.read(path, 4).cells[0].source
    assert not nbtools.sync(path)


def test_sync_refuses_a_notebook_without_tagged_cells(tmp_path, monkeypatch):
    monkeypatch.setattr(nbtools, "ROOT", tmp_path)
    path = tmp_path / "plain.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), path)
    with pytest.raises(ValueError, match="colab-badge"):
        nbtools.sync(path)


def test_setup_cell_installs_only_in_colab_and_keeps_torch():
    source = nbtools.setup_source()
    assert 'if "google.colab" in sys.modules' in source
    assert "torch" not in source.split("%pip")[1]


def test_readme_badges_point_at_existing_notebooks():
    readme = (ROOT / "README.md").read_text()
    prefix = nbtools.colab_url("")
    linked = [part.split(")")[0] for part in readme.split(f"]({prefix}")[1:]]
    assert linked, "the README's learning path has no Colab badges"
    for relative in linked:
        assert (ROOT / relative).exists(), f"README badge points at missing {relative}"
    for lesson in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert f"notebooks/{lesson.name}" in linked, f"README has no badge for {lesson.name}"
