"""Confusion matrix and segmentation scores against counts worked out by hand."""
import math

import pytest
import torch

from crossmodal.engine.confusion import confusion_matrix, segmentation_scores

# A 3 x 4 map, 3 classes, 255 = void.
TARGET = torch.tensor([[0, 0, 1, 1],
                       [0, 2, 2, 255],
                       [1, 1, 255, 2]])
PREDICTED = torch.tensor([[0, 1, 1, 1],
                          [0, 2, 1, 0],
                          [1, 0, 2, 2]])
# Hand count over the 10 labelled pixels (rows: true, columns: predicted):
#   true 0 (3 px): predicted 0, 1, 0          -> [2, 1, 0]
#   true 1 (4 px): predicted 1, 1, 1, 0       -> [1, 3, 0]
#   true 2 (3 px): predicted 2, 1, 2          -> [0, 1, 2]
EXPECTED = [[2, 1, 0], [1, 3, 0], [0, 1, 2]]


def test_confusion_matrix_counts_and_ignores_void():
    confusion = confusion_matrix(PREDICTED, TARGET, 3, ignore_index=255)
    assert confusion.dtype == torch.int64 and confusion.tolist() == EXPECTED


def test_targets_outside_the_classes_are_left_out_without_ignore_index():
    assert confusion_matrix(PREDICTED, TARGET, 3).tolist() == EXPECTED
    target = torch.tensor([0, -1, 1, 7])
    assert confusion_matrix(torch.tensor([0, 1, 1, 1]), target, 2).tolist() == [[1, 0], [0, 1]]


def test_ignore_index_inside_the_class_range():
    target = torch.tensor([0, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 2])
    assert confusion_matrix(predicted, target, 3, ignore_index=2).tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_batches_sum_to_the_whole():
    whole = confusion_matrix(PREDICTED, TARGET, 3, ignore_index=255)
    parts = sum(confusion_matrix(PREDICTED[i], TARGET[i], 3, ignore_index=255) for i in range(3))
    assert torch.equal(whole, parts)


def test_predictions_outside_the_classes_are_refused():
    with pytest.raises(ValueError, match=r"predictions must lie in \[0, 3\)"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(4), 3)
    # a wild prediction on a void pixel does not matter
    assert confusion_matrix(torch.tensor([0, 9]), torch.tensor([0, 255]), 3, 255).sum().item() == 1


def test_segmentation_scores_by_hand():
    scores = segmentation_scores(confusion_matrix(PREDICTED, TARGET, 3, ignore_index=255))
    # pixel accuracy 7/10; class accuracies 2/3, 3/4, 2/3;
    # IoU = correct / (true + predicted - correct): 2/(3+3-2), 3/(4+5-3), 2/(3+2-2).
    assert scores["pixel_acc"] == pytest.approx(0.7)
    assert scores["mean_class_acc"] == pytest.approx((2 / 3 + 3 / 4 + 2 / 3) / 3)
    assert scores["miou"] == pytest.approx((2 / 4 + 3 / 6 + 2 / 3) / 3)


def test_class_absent_from_ground_truth_is_left_out_of_the_means():
    # 4 classes; class 3 never appears in the ground truth but is predicted once.
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 3, 1, 1, 2, 0])
    confusion = confusion_matrix(predicted, target, 4)
    assert confusion.tolist() == [[1, 0, 0, 1], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    scores = segmentation_scores(confusion)
    assert scores["pixel_acc"] == pytest.approx(4 / 6)
    # accuracies 1/2, 2/2, 1/2 over the three present classes (class 3 would add a 0/0)
    assert scores["mean_class_acc"] == pytest.approx(2 / 3)
    # class 0: 1 / (2 + 2 - 1) (the pixel predicted as 3 is in its union); class 1: 2/2; class 2: 1 / (2 + 1 - 1)
    assert scores["miou"] == pytest.approx((1 / 3 + 1 + 1 / 2) / 3)


def test_perfect_prediction():
    target = torch.tensor([[0, 1], [2, 255]])
    scores = segmentation_scores(confusion_matrix(target.clamp(max=2), target, 3, ignore_index=255))
    assert scores == {"pixel_acc": 1.0, "mean_class_acc": 1.0, "miou": 1.0}


def test_all_wrong_prediction():
    scores = segmentation_scores(confusion_matrix(torch.tensor([1, 0]), torch.tensor([0, 1]), 2))
    assert scores == {"pixel_acc": 0.0, "mean_class_acc": 0.0, "miou": 0.0}


def test_nothing_labelled_gives_nan_not_an_error():
    scores = segmentation_scores(confusion_matrix(torch.tensor([0, 1]), torch.tensor([255, 255]), 2, 255))
    assert all(math.isnan(value) for value in scores.values())
