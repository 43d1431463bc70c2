"""The ablation's test-accuracy plot keeps its title inside the picture, also with two arms."""

import dataclasses

import pytest
from matplotlib.figure import Figure

from convrepro.ablate.plots import plot_test_accuracy
from convrepro.ablate.results import collect_results
from convrepro.testing import write_made_up_ablation


@pytest.mark.parametrize(
    "name", [None, "depth_ablation_of_vgg_a_to_e_on_cifar10_with_the_papers_sgd"]
)
def test_test_accuracy_title_fits_the_figure(tmp_path, monkeypatch, name):
    spec = write_made_up_ablation(tmp_path, effects={"lrn": 0.0, "no_lrn": 0.004})
    if name is not None:
        spec = dataclasses.replace(spec, name=name)
    results, _ = collect_results(spec, tmp_path)
    saved: list[Figure] = []
    original = Figure.savefig

    def keep(figure, *args, **kwargs):
        saved.append(figure)
        return original(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    plot_test_accuracy(spec, results, tmp_path / "test_acc.png")
    (figure,) = saved
    figure.draw_without_rendering()  # the layout at the figure's own resolution
    title = figure.axes[0].title
    box, page = title.get_window_extent(), figure.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1
    assert title.get_text().replace("\n", "").startswith(spec.name)
