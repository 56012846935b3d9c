import json

import pytest
import torch
from safetensors.torch import save_file

from sae.analysis.plots import density_histogram, fvu_vs_l0, l0_distribution, training_curves, write_run_plots


def _run(path, fvu, l0):
    path.mkdir()
    (path / "log.jsonl").write_text(
        "\n".join(
            json.dumps({"step": s, "tokens": 1024 * s, "loss": 1 / s, "fvu": 1 / s, "l0": 8.0, "dead_fraction": 0.0})
            for s in range(1, 6)
        )
        + "\n"
    )
    (path / "metrics.json").write_text(json.dumps({"fvu": fvu, "l0": l0, "pca_fvu": 0.5}))
    (path / "eval").mkdir()
    save_file(
        {
            "latent_frequency": torch.tensor([0.0, 0.01, 0.1, 0.0]),
            "l0": torch.tensor([2, 3, 3], dtype=torch.int32),
            "decoder_cos_hist_edges": torch.tensor([-1.0, 0, 1]),
            "decoder_cos_hist_counts": torch.tensor([3, 4]),
        },
        str(path / "eval" / "latents.safetensors"),
    )
    return path


def test_figures_hold_the_data():
    assert list(l0_distribution(torch.tensor([1, 3, 3])).data[0].y) == [0, 1, 0, 2]
    dens = density_histogram(torch.tensor([0.0, 0.01, 0.1]))
    assert list(dens.data[0].x) == pytest.approx([-2.0, -1.0]) and "1 dead" in dens.layout.title.text


def test_run_plots_are_one_offline_page(tmp_path):
    a, b = _run(tmp_path / "a", 0.2, 8.0), _run(tmp_path / "b", 0.1, 32.0)
    page = write_run_plots(a)
    html = page.read_text()
    assert page == a / "eval" / "plots.html"
    assert "<script src=" not in html and len(html) > 1_000_000  # plotly.js embedded, nothing fetched
    assert html.count("Plotly.newPlot") == 5
    fig = fvu_vs_l0([a, b])
    assert list(fig.data[0].x) == [8.0, 32.0] and list(fig.data[0].y) == [0.2, 0.1]
    assert list(training_curves(a / "log.jsonl").data[1].y) == pytest.approx([1, 0.5, 1 / 3, 0.25, 0.2])


def test_nothing_to_plot_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="holds nothing to plot"):
        write_run_plots(tmp_path)
    (tmp_path / "log.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds no logged steps"):
        training_curves(tmp_path / "log.jsonl")
