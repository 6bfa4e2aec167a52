"""`vae-report`: the entry point, its errors, and a real Hydra multirun compared end to end."""

import csv
import importlib
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers.data import idx_data
from helpers.events import hparams_session_groups
from helpers.paths import PROJECT_ROOT
from helpers.runs import run_module
from vae_lightning.report import ReportError, read_events, write_report


def test_vae_report_is_a_console_script():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["vae-report"].split(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_a_folder_that_is_not_a_run_gets_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="is not a folder.*outputs/runs/<date>/<time>"):
        write_report(tmp_path / "no-such-run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="No TensorBoard event files under .*empty"):
        write_report(tmp_path / "empty")


@pytest.mark.slow
def test_vae_report_compares_the_jobs_of_a_real_multirun(tmp_path, idx_root):
    sweep = tmp_path / "sweep"
    result = run_module(
        "vae_lightning.train",
        [
            "-m",
            "debug=fast",
            *idx_data(idx_root),
            "model.latent_dim=2,3",
            f"hydra.sweep.dir={sweep}",
            "~callbacks.progress_bar",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):  # each job wrote its own report when it finished
        assert (sweep / job / "report" / "summary.md").is_file()
        assert "## Config" in (sweep / job / "report" / "summary.md").read_text()
    # The sweep's comparison was written when the multirun ended; vae-report writes it again.
    assert (sweep / "report" / "comparison.md").is_file()
    shutil.rmtree(sweep / "report")
    result = run_module("vae_lightning.report", [f"run_dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Report: {sweep / 'report' / 'comparison.md'}" in result.stdout
    with (sweep / "report" / "comparison.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["job"] for row in rows] == ["0", "1"]
    for row, latent_dim in zip(rows, (2, 3), strict=True):
        assert f"model.latent_dim={latent_dim}" in row["overrides"].split()
        events = read_events(sweep / row["job"])
        assert "test/elbo" not in row  # sweeps are compared on validation only
        for metric in ("val/elbo", "val/kl", "val/active_units"):
            assert float(row[metric]) == pytest.approx(events.last(metric), rel=1e-5)
        assert float(row["val/active_units"]) <= latent_dim
    text = (sweep / "report" / "comparison.md").read_text()
    assert "| 0 | `model.latent_dim=2` |" in text and "| 1 | `model.latent_dim=3` |" in text
    with Image.open(sweep / "report" / "val_elbo.png") as image:
        assert np.asarray(image.convert("L")).std() > 5

    # `tensorboard --logdir <sweep>`: the HParams tab holds one row per job.
    groups = hparams_session_groups(sweep)
    latent = sorted(group.hparams["model.latent_dim"].number_value for group in groups)
    assert latent == [2, 3]
    for group in groups:
        assert {m.name.tag for m in group.metric_values} >= {"val/elbo", "val/active_units"}
