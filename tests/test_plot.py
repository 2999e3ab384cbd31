"""ftlab.plot: figures build with the expected lines, bars, texts and colours (Agg backend)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ftlab import plot  # noqa: E402
from ftlab.training.state import History  # noqa: E402


def history_of(num_epochs=3, steps_per_epoch=4, with_val=True):
    history = History()
    for epoch in range(num_epochs):
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i + 1
            history.steps.append({"step": step, "epoch": epoch, "loss": 1 / step, "lr": 1e-3})
        val = {"loss": 0.5 / (epoch + 1), "accuracy": 0.6 + 0.1 * epoch} if with_val else None
        history.end_epoch(epoch, 1 / (epoch + 1), val, seconds=1.0)
    return history


def test_learning_curves_of_one_run_draws_train_and_val_loss_and_the_metric():
    fig = plot.learning_curves(history_of())
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    loss_ax, metric_ax = fig.axes
    assert len(loss_ax.lines) == 2  # train per step, val per epoch
    assert list(loss_ax.lines[0].get_xdata()) == list(range(1, 13))
    assert list(loss_ax.lines[1].get_xdata()) == [4, 8, 12]  # val drawn at each epoch's end
    assert list(metric_ax.lines[0].get_ydata()) == pytest.approx([0.6, 0.7, 0.8])
    assert metric_ax.get_title() == "val_accuracy" and fig._suptitle.get_text() == "Learning curves"


def test_learning_curves_compare_runs_and_work_without_validation():
    fig = plot.learning_curves({"head only": history_of(), "full": history_of()})
    assert len(fig.axes[0].lines) == 4 and len(fig.axes[1].lines) == 2
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert labels == ["head only train", "head only val", "full train", "full val"]
    fig = plot.learning_curves(history_of(with_val=False))
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 1


def test_confusion_matrix_writes_every_count_on_its_cell():
    cm = torch.tensor([[5, 1], [2, 7]])
    fig = plot.confusion_matrix(cm, ["neg", "pos"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["5", "1", "2", "7"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["neg", "pos"]
    assert ax.get_xlabel() == "predicted" and ax.get_title() == "Confusion matrix"
    with pytest.raises(ValueError, match="one class name per row"):
        plot.confusion_matrix(cm, ["a", "b", "c"])


def test_image_grid_marks_mistakes_in_red_and_undoes_normalization():
    images = torch.rand(5, 3, 8, 8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    normalized = (images - 0.5) / 0.25
    labels, preds = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([0, 2, 2, 0, 0])
    fig = plot.image_grid(normalized, labels, preds, ["cat", "dog", "fox"], mean, std, ncols=3)
    axes = fig.axes
    assert len(axes) == 6 and not axes[5].images  # 2 rows of 3, one empty cell
    titles = [ax.get_title() for ax in axes[:5]]
    assert titles[1] == "fox\n(true: dog)"
    red = [matplotlib.colors.same_color(ax.title.get_color(), "tab:red") for ax in axes[:5]]
    assert red == [False, True, False, False, True]
    shown = axes[0].images[0].get_array()
    assert torch.allclose(torch.as_tensor(shown), images[0].permute(1, 2, 0), atol=1e-6)


def test_image_grid_takes_uint8_images_without_predictions():
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    fig = plot.image_grid(images, [0, 1, 0])
    assert [ax.get_title() for ax in fig.axes] == ["0", "1", "0"]
    with pytest.raises(ValueError, match="channels, height, width"):
        plot.image_grid(torch.rand(3, 8, 8), [0, 1, 0])


def test_ablation_bars_show_mean_and_standard_deviation():
    results = {"head only": [0.80, 0.82, 0.84], "full": [0.90, 0.90, 0.90]}
    fig = plot.ablation_bars(results)
    ax = fig.axes[0]
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == pytest.approx([0.82, 0.90])
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["0.820 ± 0.020", "0.900 ± 0.000"]  # sample std of 0.80, 0.82, 0.84
    assert ax.get_title() == "mean ± std over 3 seeds"
    with pytest.raises(ValueError, match="non-empty"):
        plot.ablation_bars({"empty": []})


def _recipe_texts(fig) -> str:
    texts = [text.get_text() for ax in fig.axes for text in ax.texts]
    return " ".join(texts + [ax.get_title(loc="left") for ax in fig.axes])


@pytest.mark.parametrize("num_layers", [4, 6])
def test_recipe_figure_names_the_four_steps_and_draws_the_freezing_range(num_layers):
    fig = plot.recipe_figure(num_layers=num_layers)
    assert isinstance(fig, Figure)
    texts = _recipe_texts(fig)
    for number, step in enumerate(plot.RECIPE_STEPS, start=1):
        assert f"{number}. {step}" in texts
    assert "old head" in texts and "new head" in texts
    spectrum = fig.axes[1]
    frozen = [patch for patch in spectrum.patches if patch.get_hatch() == "//"]
    heads = [
        patch
        for patch in spectrum.patches
        if matplotlib.colors.same_color(patch.get_facecolor(), plot.HEAD_COLOR)
    ]
    # feature extraction freezes the whole body, partly frozen all but the top 2, full none
    assert len(frozen) == num_layers + (num_layers - 2)
    assert len(heads) == 3  # every column trains a new head
    for title in ("feature extraction", "partly frozen", "full fine-tuning"):
        assert title in texts


def test_recipe_figure_needs_enough_layers_to_show_a_partly_frozen_body():
    with pytest.raises(ValueError, match="at least 3"):
        plot.recipe_figure(num_layers=2)
