"""Figures shared by the stages: each writes a PNG of the expected size, and bad arguments are refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from embedlens.plots import bar_chart, curve, image_grid, scatter_map


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_a_curve_with_a_marked_point(tmp_path):
    curve([2, 3, 4, 5], [4.0, 2.0, 1.5, 1.2], tmp_path / "elbow.png", xlabel="k", ylabel="inertia",
          marked_x=3, marked_label="chosen k = 3", title="elbow")
    width, height = png_size(tmp_path / "elbow.png")
    assert width > height > 300


def test_a_scatter_map_with_centres_for_few_and_many_groups(tmp_path):
    rng = np.random.default_rng(0)
    for groups in (3, 40):
        xy = rng.normal(size=(500, 2))
        scatter_map(xy, rng.integers(0, groups, 500), tmp_path / f"map{groups}.png",
                    centers=rng.normal(size=(groups, 2)), group_name="cluster", xlabel="PC 1", ylabel="PC 2")
        assert min(png_size(tmp_path / f"map{groups}.png")) > 500


def test_bars_grow_with_their_number(tmp_path):
    bar_chart(["a", "b"], [3, 5], tmp_path / "few.png", xlabel="cluster", ylabel="images")
    bar_chart([str(i) for i in range(60)], np.arange(60), tmp_path / "many.png", xlabel="cluster", ylabel="images")
    assert png_size(tmp_path / "many.png")[0] > png_size(tmp_path / "few.png")[0]


def test_an_image_grid_leaves_unreadable_images_blank_and_says_when_empty(tmp_path):
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 255
    image_grid([red, None, red], ["a", "b (unreadable)", "c"], tmp_path / "grid.png", columns=2, title="most novel")
    with Image.open(tmp_path / "grid.png") as grid:
        pixels = np.asarray(grid.convert("RGB"))
    assert (pixels[..., 0] > 200).sum() > 1000 and ((pixels[..., 0] > 200) & (pixels[..., 1] < 50)).any()
    image_grid([], [], tmp_path / "empty.png")
    assert png_size(tmp_path / "empty.png")[0] > 100
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        image_grid([red, red], ["a"], tmp_path / "bad.png")
