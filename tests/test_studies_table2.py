"""studies.table2: Table 2 with many images per class (counts, markdown, heatmap) and where lost images land."""

import numpy as np
import pytest
from helpers import image_record as record

from fakegradient.errors import InvalidArgument
from studies.table2 import counts_heatmap, counts_markdown, fake_output_counts, same_target_as_original


def test_fake_output_counts_place_each_image_by_real_class_and_winning_output():
    records = [record(original=0, plain=10), record(original=0, plain=10), record(original=0, plain=13),
               record(original=2, plain=19), record(original=1, plain=1)]  # the last: a real output won
    counts = fake_output_counts(records, 10)
    assert counts.shape == (10, 11) and counts.sum() == 5
    assert counts[0, 0] == 2 and counts[0, 3] == 1 and counts[2, 9] == 1 and counts[1, 10] == 1
    lines = counts_markdown(counts)
    assert len(lines) == 12 and "**2**" in lines[2]


def test_fake_output_counts_reject_indices_out_of_range():
    with pytest.raises(InvalidArgument):
        fake_output_counts([record(original=0, plain=20)], 10)


def test_same_target_counts_the_lost_images_that_land_where_the_unprotected_attack_lands():
    records = [record(method="original", image="a", adversarial=4), record(image="a", adversarial=4),
               record(method="original", image="b", adversarial=4), record(image="b", adversarial=5),
               record(image="c", adversarial=4),  # no original record: not counted
               record(method="original", image="d", adversarial=1), record(image="d", adversarial=0)]  # defended
    assert same_target_as_original(records) == (1, 2)


def test_the_table2_heatmap_is_written_with_one_panel_per_model(tmp_path):
    from PIL import Image

    panels = {"a": np.eye(3, 4, dtype=int) * 5, "b": np.ones((3, 4), int), "c": np.zeros((3, 4), int)}
    counts_heatmap(tmp_path / "table2.png", panels, "Table 2")
    with Image.open(tmp_path / "table2.png") as image:
        assert image.format == "PNG" and image.width > image.height  # three panels side by side
