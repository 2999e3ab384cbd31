import json
from pathlib import Path

import nbformat
import pytest

from ftlab.exercises import nbtools

ROOT = Path(__file__).resolve().parents[2]
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


def _widget_notebook(value, maximum, first_frame="epoch 1/1:   0%|          | 0/6 [00:00<?]"):
    """A notebook with one tqdm widget output, its state saved as nbconvert saves it."""

    def model(name, **state):
        return {"model_name": name, "model_module": "@jupyter-widgets/controls", "state": state}

    state = {
        "box": model(
            "HBoxModel", children=["IPY_MODEL_label", "IPY_MODEL_bar", "IPY_MODEL_counts"]
        ),
        "label": model("HTMLModel", value="epoch\u20071/1:\u2007100%"),
        "bar": model("FloatProgressModel", value=value, max=maximum),
        "counts": model("HTMLModel", value="\u20076/6\u2007[00:01&lt;00:00,\u20075.0it/s]"),
        "slider": model("IntSliderModel", value=3),
    }
    view = {"model_id": "box", "version_major": 2, "version_minor": 0}
    other = {"model_id": "slider", "version_major": 2, "version_minor": 0}
    cell = nbformat.v4.new_code_cell("fit(...)")
    cell.outputs = [
        nbformat.v4.new_output(
            "display_data", {nbtools.WIDGET_VIEW: view, "text/plain": first_frame}
        ),
        nbformat.v4.new_output(
            "display_data", {nbtools.WIDGET_VIEW: other, "text/plain": "slider"}
        ),
    ]
    notebook = nbformat.v4.new_notebook(cells=[cell])
    notebook.metadata["widgets"] = {nbtools.WIDGET_STATE: {"state": state}}
    return notebook


def test_settle_gives_a_stored_progress_bar_its_last_frame(tmp_path):
    path = tmp_path / "lesson.ipynb"
    nbformat.write(_widget_notebook(6.0, 6.0), path)
    assert nbtools.settle(path) == 1
    bar, slider = nbformat.read(path, 4).cells[0].outputs
    assert bar.data["text/plain"] == "epoch 1/1: 100%|██████████| 6/6 [00:01<00:00, 5.0it/s]"
    assert slider.data["text/plain"] == "slider"  # not a progress bar: left alone
    assert nbtools.settle(path) == 0  # settled already: nothing to do


def test_settle_leaves_a_notebook_without_saved_widget_state_alone(tmp_path):
    notebook = _widget_notebook(3.0, 6.0)
    del notebook.metadata["widgets"]
    path = tmp_path / "lesson.ipynb"
    nbformat.write(notebook, path)
    assert nbtools.settle(path) == 0
    assert "0/6" in nbformat.read(path, 4).cells[0].outputs[0].data["text/plain"]


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_stored_progress_bars_show_their_last_frame(path, tmp_path):
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    unsettled = nbtools.settle(copy)  # how many bars still showed another frame
    assert unsettled == 0, (
        f"run `python -m ftlab.exercises.nbtools settle {path.relative_to(ROOT)}`"
    )
