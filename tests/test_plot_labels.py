"""What the figures say: heatmaps of non-image data are labelled, the twin-axis legend stays off
the curves."""
import pytest
import torch

from infomax_ext import plots
from infomax_ext.trainer import TrainConfig, build_model

pytest.importorskip("matplotlib")


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions draw, captured instead of saved."""
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig))
    return drawn


def small_vae(n_features=5):
    torch.manual_seed(0)
    return build_model(TrainConfig(latent_dim=2, encoder_neurons=[8], decoder_neurons=[8],
                                   mi_neurons=[8], likelihood="gaussian"), (n_features,)).vae


def test_reconstructions_of_non_image_data_are_a_labelled_heatmap(figures):
    plots.plot_reconstructions(small_vae(), torch.randn(10, 5) * 3 + 7, "unused.png",
                               image_shape=None, units=lambda t: t * 100)
    fig = figures[0]
    panels = [ax for ax in fig.axes if ax.get_title() in ("original", "reconstruction")]
    assert len(panels) == 2
    for ax in panels:
        assert ax.get_xlabel() == "feature" and ax.get_ylabel() == "sample"
        assert len(ax.get_xticks()) > 0 and len(ax.get_yticks()) > 0
        lo, hi = ax.images[0].get_clim()
        assert lo < -100 or hi > 500  # drawn in the units given: 100 x the model values
    colorbars = [ax for ax in fig.axes if ax.get_ylabel() == "value"]
    assert len(colorbars) == 2


def test_image_data_stays_a_mosaic_without_axes(figures):
    plots.plot_prior_samples(small_vae(16), 2, "unused.png", image_shape=(4, 4), n=9)
    ax = figures[0].axes[0]
    assert len(ax.get_xticks()) == 0 and ax.get_xlabel() == ""


def test_the_twin_axis_legend_covers_no_curve(figures):
    history = [{"epoch": e, "vae_loss": 80.0 - e, "mi": 0.1 * e, "val_kl": 20.0 - e,
                "val_active_units": min(e, 8)} for e in range(1, 31)]
    plots.plot_training_curves(history, "unused.png")
    fig = figures[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = next(a for a in fig.axes if a.get_legend() is not None)
    legend_box = ax.get_legend().get_window_extent(renderer)
    plot_box = ax.get_window_extent(renderer)  # the data area, which the twin axis shares
    assert legend_box.y0 >= plot_box.y1 - 1  # above the data area, not over it
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["held-out KL", "active units"]
    title = ax.title.get_window_extent(renderer)
    assert title.y0 >= legend_box.y1 - 1  # and the title above the legend
