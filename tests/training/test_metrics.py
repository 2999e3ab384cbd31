"""Metrics against hand-counted cases and scikit-learn (when installed); the noise rule."""

import pytest
import torch

from ftlab.training.metrics import accuracy, confusion_matrix, get_metric, macro_f1, within_noise

PREDS = torch.tensor([0, 1, 1, 2, 2, 2, 0])
LABELS = torch.tensor([0, 1, 2, 2, 2, 0, 0])


def test_accuracy_from_preds_and_from_logits():
    assert accuracy(PREDS, LABELS) == pytest.approx(5 / 7)
    logits = torch.nn.functional.one_hot(PREDS, 3).float() * 5 - 1  # argmax = PREDS
    assert accuracy(logits, LABELS) == pytest.approx(5 / 7)
    assert accuracy(LABELS, LABELS) == 1.0


def test_accuracy_rejects_mismatched_shapes_and_empty_input():
    with pytest.raises(ValueError, match="do not match labels"):
        accuracy(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        accuracy(torch.zeros(0), torch.zeros(0))


def test_confusion_matrix_counts_rows_as_true_columns_as_predicted():
    cm = confusion_matrix(PREDS, LABELS, num_classes=3)
    expected = torch.tensor([[2, 0, 1], [0, 1, 0], [0, 1, 2]])
    assert torch.equal(cm, expected)
    assert cm.sum() == len(LABELS)
    assert confusion_matrix(PREDS, LABELS).shape == (3, 3)  # num_classes inferred
    assert confusion_matrix(PREDS, LABELS, num_classes=5).shape == (5, 5)


def test_confusion_matrix_rejects_class_ids_out_of_range():
    with pytest.raises(ValueError, match="raise num_classes"):
        confusion_matrix(PREDS, LABELS, num_classes=2)


def test_macro_f1_by_hand():
    # F1 = 2tp / (2tp + fp + fn): class 0 -> 4/5, class 1 -> 2/3, class 2 -> 4/6
    assert macro_f1(PREDS, LABELS) == pytest.approx((0.8 + 2 / 3 + 2 / 3) / 3)
    assert macro_f1(LABELS, LABELS) == 1.0
    assert macro_f1(torch.ones(4), torch.zeros(4)) == 0.0  # all wrong: both classes score 0


def test_macro_f1_matches_scikit_learn_on_random_and_extreme_inputs():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(0)
    cases = [
        (torch.randint(0, 4, (50,), generator=generator), torch.randint(0, 4, (50,)))
        for _ in range(5)
    ]
    cases += [
        (torch.zeros(6, dtype=torch.long), torch.tensor([0, 0, 1, 1, 2, 2]))
    ]  # one class predicted
    for preds, labels in cases:
        expected = sklearn_metrics.f1_score(labels, preds, average="macro")
        assert macro_f1(preds, labels) == pytest.approx(expected)
        expected_all = sklearn_metrics.f1_score(
            labels, preds, average="macro", labels=list(range(6)), zero_division=0
        )
        assert macro_f1(preds, labels, num_classes=6) == pytest.approx(expected_all)
        assert torch.equal(
            confusion_matrix(preds, labels, 4),
            torch.as_tensor(sklearn_metrics.confusion_matrix(labels, preds, labels=range(4))),
        )


def test_get_metric_accepts_names_and_functions_and_rejects_unknown_names():
    assert get_metric("macro_f1") == ("macro_f1", macro_f1)

    def top_class_share(logits, labels):
        return 0.5

    assert get_metric(top_class_share)[0] == "top_class_share"
    with pytest.raises(ValueError, match="unknown metric"):
        get_metric("f1")


def test_within_noise_when_the_gap_is_at_most_twice_the_larger_spread():
    assert within_noise([0.80, 0.84, 0.82], [0.83, 0.85, 0.87])  # gap 0.03, sd 0.02
    assert within_noise([0.9, 0.9, 0.9], [0.9, 0.9, 0.9])  # equal, no spread at all
    assert not within_noise([0.80, 0.81, 0.82], [0.90, 0.91, 0.92])  # gap 0.10, sd 0.01
    assert not within_noise([0.5, 0.5], [0.51, 0.51])  # no spread: any gap is a difference


def test_a_noisy_run_is_within_noise_of_a_clearly_different_one():
    steady = [0.96, 0.96, 0.96]
    noisy = [0.82, 0.88, 0.94]  # mean 0.88, sd 0.06: its seeds cannot tell it from 0.96
    assert within_noise(noisy, steady) and within_noise(steady, noisy)
    assert not within_noise([0.87, 0.88, 0.89], steady)  # the same mean, steady seeds


def test_within_noise_needs_two_seeds_per_side():
    with pytest.raises(ValueError, match="at least 2 seeds.*got 1 and 3"):
        within_noise([0.9], [0.8, 0.85, 0.9])
