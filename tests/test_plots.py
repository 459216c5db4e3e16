"""Tests of utils.landmarks.plots: PNGs of the documented size, atomic writes, argument checks."""

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from utils.landmarks.plots import (
    plot_error_distribution,
    plot_heatmaps,
    plot_landmarks,
    plot_training_curves,
)


def read_png(path):
    """The PNG at `path` as an (H, W, 4) float array, after checking no temporary file is left beside it."""
    assert [p.name for p in path.parent.iterdir() if ".tmp" in p.name] == []
    assert path.stat().st_size > 0
    return matplotlib.image.imread(path)


def red_pixels(png):
    """Number of pure-red-ish pixels (predicted landmark markers)."""
    return int(np.count_nonzero((png[..., 0] > 0.8) & (png[..., 1] < 0.3) & (png[..., 2] < 0.3)))


def test_plot_landmarks_2d_size_and_markers(tmp_path):
    image = np.zeros((100, 200))  # (y, x): 600 px wide, 600 * 100 / 200 = 300 px high
    target = np.array([[50.0, 20.0], [150.0, 80.0], [np.nan, np.nan]])
    predicted = np.array([[55.0, 25.0], [140.0, 70.0], [100.0, 50.0]])
    path = tmp_path / "landmarks.png"
    plot_landmarks(path, image, predicted=predicted, target=target, title="case 1")
    png = read_png(path)
    assert png.shape == (300, 600, 4)
    assert red_pixels(png) > 0

    plot_landmarks(path, image, target=target)  # overwrites; no predicted markers any more
    assert red_pixels(read_png(path)) == 0


def test_plot_landmarks_3d_volume_projection(tmp_path):
    volume = np.zeros((40, 5, 20))  # (z, y, x): coronal view (z, x) of 600 x 1200 px
    volume[10:20, 2, 5:10] = 1.0
    path = tmp_path / "sub" / "landmarks_3d.png"
    plot_landmarks(path, volume, predicted=np.array([[7.0, 3.0, 15.0]]))
    png = read_png(path)
    assert png.shape == (1200, 600, 4)
    # z upwards: slices 10-19 are rows 29-20 of the view -> 600-899 px; cols 5-9 -> 150-299 px.
    assert png[650:850, 180:280, :3].mean() > 0.9
    assert png[100:300, 400:500, :3].mean() < 0.1
    # the predicted cross at (x=7, z=15) sits at row 39 - 15 = 24 -> about 735 px, col 7 -> about 225 px
    cross = png[715:755, 205:245, :3]
    assert np.any((cross[..., 0] > 0.8) & (cross[..., 1] < 0.3)), "no red marker where z=15 should be"


def test_plot_heatmaps_2d_and_3d(tmp_path):
    y, x = np.mgrid[0:100, 0:200]
    peak = np.exp(-((x - 60.0) ** 2 + (y - 50.0) ** 2) / (2 * 4.0**2))
    heatmaps = np.stack([peak, np.zeros_like(peak)], axis=-1)  # (y, x, N=2)
    path = tmp_path / "heatmaps.png"
    plot_heatmaps(path, heatmaps)
    png = read_png(path)
    assert png.shape == (300, 600, 4)
    # The peak at (x=60, y=50) maps to pixel (row 150, col 180) and is drawn bright.
    assert png[145:155, 175:185, :3].mean() > 0.8
    assert png[20:60, 20:60, :3].mean() < 0.1

    path_3d = tmp_path / "heatmaps_3d.png"
    plot_heatmaps(path_3d, np.stack([heatmaps] * 50, axis=0))  # (z, y, x, N): coronal view (z, x) 50 x 200
    png = read_png(path_3d)
    assert png.shape == (200, 600, 4)  # 150 px by the aspect ratio, raised to the 200 px minimum
    assert png[:, 175:185, :3].mean() > 0.5 and png[:, 20:60, :3].mean() < 0.1  # the peak's column x=60


def test_plot_error_distribution(tmp_path):
    rng = np.random.default_rng(0)
    errors = rng.gamma(2.0, 0.5, size=(20, 37))
    errors[0, :3] = np.nan
    errors[1, 0] = 0.0
    path = tmp_path / "cdf.png"
    plot_error_distribution(path, {"scn": errors, "unet": 2 * errors, "empty": np.full(3, np.nan)})
    assert read_png(path).shape == (500, 800, 4)


def test_plot_training_curves(tmp_path):
    path = tmp_path / "curves.png"
    history = {
        "loss": [(i, 100.0 / (i + 1)) for i in range(0, 1000, 10)],
        "val_pe_mean": [(0, 5.0), (500, 2.0), (1000, 1.0)],
        "val_loss": [],
    }
    plot_training_curves(path, history)
    assert read_png(path).shape == (400, 1200, 4)  # two 600 x 400 panels
    plot_training_curves(path, {"loss": [(0, -1.0), (10, 2.0)]})  # one panel, linear axis (non-positive)
    assert read_png(path).shape == (400, 600, 4)


def test_failure_while_saving_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as stream:
            stream.write(b"\x89PNG partial")
        raise RuntimeError("disk full")

    path = tmp_path / "curves.png"
    history = {"loss": [(0, 1.0), (1, 0.5)]}
    plot_training_curves(path, history)
    before = path.read_bytes()
    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_training_curves(path, history)
    assert path.read_bytes() == before  # the old file is untouched
    new_path = tmp_path / "new.png"
    with pytest.raises(RuntimeError, match="disk full"):
        plot_landmarks(new_path, np.zeros((4, 4)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: plot_landmarks(p, np.zeros(5)), r"image must be 2D .* got shape \(5,\)"),
        (lambda p: plot_landmarks(p, np.zeros((4, 4)), target=np.zeros((3, 3))), r"target must .* \(N, 2\)"),
        (
            lambda p: plot_landmarks(p, np.zeros((4, 4)), np.zeros((2, 2)), np.zeros((3, 2))),
            r"predicted must hold as many landmarks as the other point set \(3\), got shape \(2, 2\)",
        ),
        (lambda p: plot_heatmaps(p, np.zeros((4, 4))), r"heatmaps must have shape .* got shape \(4, 4\)"),
        (lambda p: plot_error_distribution(p, {}), r"errors_by_name .* empty"),
        (lambda p: plot_error_distribution(p, {"a": np.array([1.0, -1.0])}), r"errors_by_name\['a'\]"),
        (lambda p: plot_training_curves(p, {}), r"history .* empty"),
        (lambda p: plot_training_curves(p, {"loss": [(0, 1.0, 2.0)]}), r"history\['loss'\] .* \(1, 3\)"),
    ],
)
def test_invalid_arguments_raise_value_error_and_write_nothing(tmp_path, call, message):
    with pytest.raises(ValueError, match=message):
        call(tmp_path / "plot.png")
    assert list(tmp_path.iterdir()) == []
