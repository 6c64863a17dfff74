"""Class subsets: naming them, renumbering them, and a reader restricted to them."""
from __future__ import annotations

import numpy as np
import pytest

from crossmodal.data import PairedDataset, read_layout
from crossmodal.data.classes import missing_classes, renumbering, resolve_classes
from crossmodal.data.format import LabelInfo
from crossmodal.errors import ConfigError, DataError

INFO = LabelInfo("label", "class", (6,), np.dtype("int64"), 4, ("cat", "dog", "ship", "car"))


def test_classes_are_named_or_numbered_and_keep_their_order():
    assert resolve_classes(INFO, ["ship", "cat"], "--classes") == [2, 0]
    assert resolve_classes(INFO, ["3", 1], "--classes") == [3, 1]


@pytest.mark.parametrize("requested, message", [
    (["cat", "cow"], "'label' has no class 'cow'; its classes are cat, dog, ship, car"),
    (["cat", "4"], "no class '4'"),
    (["dog", "1"], "class dog named twice"),
    (["dog"], "at least 2 classes, got 1"),
])
def test_bad_subsets_are_one_line_naming_the_option(requested, message):
    with pytest.raises(ConfigError, match="^--classes: .*" + message.replace("(", r"\(")):
        resolve_classes(INFO, requested, "--classes")


def test_a_segmentation_set_has_no_class_subsets():
    info = LabelInfo("seg", "segmentation", (6, 4, 4), np.dtype("uint8"), 3, ("a", "b", "c"), 255)
    with pytest.raises(ConfigError, match="task.class_subset: 'seg' is a segmentation label set"):
        resolve_classes(info, ["a", "b"], "task.class_subset")


def test_renumbering_maps_the_subset_to_its_order_and_everything_else_to_unlabelled():
    table = renumbering(4, [2, 0])
    assert table[np.array([0, 1, 2, 3, -1])].tolist() == [1, -1, 0, -1, -1]
    assert missing_classes(np.array([0, 0, 3]), [0, 1, 3]) == [1]


def test_a_reader_keeps_the_subset_renumbered(synthetic_file):
    full = PairedDataset(synthetic_file, "train", modalities=["rgb"], labels=["label"])
    values = np.array([full[i]["label"] for i in range(len(full))])
    kept_ids = [int(c) for c in np.unique(values)[:3][::-1]]  # three present classes, in reverse order
    subset = PairedDataset(synthetic_file, "train", modalities=["rgb"], labels=["label"])
    subset.keep_classes("label", kept_ids)
    expected_rows = full.rows[np.isin(values, kept_ids)]
    assert subset.rows.tolist() == expected_rows.tolist() and len(subset) == int(np.isin(values, kept_ids).sum())
    for index in range(len(subset)):
        item = subset[index]
        original = int(values[full.rows.tolist().index(item["row"])])
        assert item["label"] == kept_ids.index(original)
        assert item["rgb"].shape == full[0]["rgb"].shape


def test_a_subset_class_without_samples_in_the_split_is_one_line(synthetic_file):
    dataset = PairedDataset(synthetic_file, "test", modalities=["rgb"], labels=["label"])
    info = read_layout(synthetic_file).labels["label"]
    absent = [i for i in range(info.num_classes) if i not in set(dataset.class_values["label"][dataset.rows])]
    assert absent, "the 48-scene file should leave a class out of its test split"
    present = int(dataset.class_values["label"][dataset.rows][0])
    with pytest.raises(DataError, match=f"split 'test' has no sample of class {info.class_names[absent[0]]} in "
                                        f"'label'"):
        dataset.keep_classes("label", [present, absent[0]])
