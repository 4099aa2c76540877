"""The spectral and gradients tables through summarize, the cache and the CLI, on real training runs."""

import math

import pandas as pd
import pytest
import torch

from _fixtures_runs import write_lightning_run
from ckptboard.core.load import load_stats
from ckptboard.core.summarize import summarize
from ckptboard.dashboard.cli import main


@pytest.fixture
def run_root(tmp_path):
    write_lightning_run(tmp_path / "lit", n_checkpoints=3)  # SGD with momentum 0.9, steps 0, 2, 4
    return tmp_path


def test_spectral_rows_match_torch_and_the_cache_serves_less_work(run_root):
    first = summarize(run_root, spectral="full")
    assert first.computed == 3 and not first.failures
    spectral = load_stats(run_root).spectral
    # embed (5, 4), fc (3, 4) and head (2, 3) are the 2-D parameters of TinyNet, in 3 checkpoints
    assert sorted(set(spectral["name"])) == ["embed.weight", "fc.weight", "head.weight"] and len(spectral) == 9
    last = spectral[spectral["checkpoint"] == "lit/epoch=2-step=4.ckpt"].set_index("name")
    weight = torch.load(run_root / "lit" / "epoch=2-step=4.ckpt")["state_dict"]["fc.weight"].double()
    assert last.loc["fc.weight", "sigma_max"] == pytest.approx(torch.linalg.matrix_norm(weight, 2).item(), rel=1e-9)
    assert last.loc["fc.weight", "stable_rank"] == pytest.approx(
        (torch.linalg.matrix_norm(weight) ** 2 / torch.linalg.matrix_norm(weight, 2) ** 2).item(), rel=1e-9)
    assert math.isnan(last.loc["fc.weight", "alpha"])  # 3 eigenvalues: too few for a power-law fit
    assert set(last["method"]) == {"full"}
    assert summarize(run_root).computed == 0  # off: the full fragments already answer
    assert summarize(run_root, spectral="default").computed == 0
    assert len(load_stats(run_root).spectral) == 9  # the richer rows stay


def test_gradient_rows_come_from_the_saved_momentum(run_root):
    summarize(run_root)
    gradients = load_stats(run_root).gradients
    # step 0 is saved before the first step (no momentum buffer yet); fc, bn and head are trained (embed frozen)
    assert sorted(set(gradients["step"])) == [2, 4]
    assert sorted(set(gradients["name"])) == ["bn.bias", "bn.weight", "fc.bias", "fc.weight", "head.weight"]
    assert set(gradients["moments"]) == {"sgd-momentum"}
    row = gradients[(gradients["step"] == 4) & (gradients["name"] == "fc.weight")].iloc[0]
    ckpt = torch.load(run_root / "lit" / "epoch=2-step=4.ckpt")
    buf = ckpt["optimizer_states"][0]["state"][0]["momentum_buffer"]  # the first trainable parameter: fc.weight
    assert row["m_norm"] == pytest.approx(torch.linalg.norm(buf).item(), rel=1e-6)
    assert row["update_norm"] == pytest.approx(0.1 * row["m_norm"])  # lr 0.1 (_fixtures_runs)


def test_cli_spectral_option_and_csv(run_root, tmp_path, capsys):
    code = main(["export", str(run_root), "--out", str(tmp_path / "out"), "--format", "csv", "--spectral",
                 "default", "--workers", "1"])
    assert code == 0
    spectral = pd.read_csv(tmp_path / "out" / "spectral.csv")
    assert len(spectral) == 9 and set(spectral["method"]) == {"power"}
    assert len(pd.read_csv(tmp_path / "out" / "gradients.csv")) == 10  # 5 trained tensors x 2 checkpoints
    with pytest.raises(SystemExit):
        main(["summarize", str(run_root), "--spectral", "some"])
    assert "invalid choice: 'some'" in capsys.readouterr().err


def test_html_report_has_spectral_and_gradient_sections(run_root, tmp_path):
    from ckptboard.dashboard.report import write_report

    summarize(run_root, spectral="default")
    write_report(load_stats(run_root), tmp_path / "report", ["html"])
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Spectral (lit)" in page and "Gradients from optimizer state (lit)" in page
    assert "exponential moving averages" in page  # the approximation, stated with the gradient figures
