"""`vae-report`: the entry point, its errors, the report written at the end of training and
its comparison of a multirun (from trained runs and from a real Hydra multirun)."""

import csv
import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
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


# ------------------------------------ the report of a trained run (session fixtures, conftest)
def assert_png_not_blank(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100, path.name
    assert pixels.std() > 5 and pixels.min() < 100 < pixels.max(), f"{path.name} looks blank"


REPORT_FILES = ("loss_curves.png", "samples.png", "reconstructions.png", "latent_pca.png")


def test_report_is_written_at_the_end_of_training(visuals_run):
    report = visuals_run.dir / "report"
    for name in REPORT_FILES:
        assert_png_not_blank(report / name)
    summary = (report / "summary.md").read_text()
    assert f"| val/elbo | {visuals_run.metrics['val/elbo']:.2f} |" in summary
    assert f"| test/elbo | {visuals_run.metrics['test/elbo']:.2f} |" in summary
    assert f"| val/active_units | {visuals_run.metrics['val/active_units']:.2f} |" in summary
    for name in REPORT_FILES:
        assert f"]({name})" in summary
    assert "Not drawn" not in summary


def test_report_of_a_run_without_some_visuals_says_what_is_missing(manifold_run):
    summary = (manifold_run.dir / "report" / "summary.md").read_text()
    assert not (manifold_run.dir / "report" / "latent_pca.png").exists()
    assert "Not drawn: latent_pca.png" in summary


def test_vae_report_cli_rewrites_the_report_of_a_finished_run(visuals_run, tmp_path):
    run_dir = shutil.copytree(visuals_run.dir, tmp_path / "run")
    shutil.rmtree(run_dir / "report")
    result = run_module("vae_lightning.report", [f"run_dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Report: {run_dir / 'report' / 'summary.md'}" in result.stdout
    for name in REPORT_FILES:
        assert_png_not_blank(run_dir / "report" / name)


def test_report_of_a_multirun_folder_compares_its_jobs(visuals_run, manifold_run, tmp_path):
    # The two trained runs as Hydra lays out a sweep, and a third job that failed at once.
    sweep = tmp_path / "multirun"
    jobs = [
        (visuals_run.dir, "model.latent_dim=5"),
        (manifold_run.dir, "model.latent_dim=2"),
        (None, "x=1"),
    ]
    for job, (run_dir, override) in enumerate(jobs):
        (sweep / str(job)).mkdir(parents=True)
        if run_dir is not None:
            shutil.copytree(run_dir, sweep / str(job), dirs_exist_ok=True)
        (sweep / str(job) / ".hydra").mkdir(exist_ok=True)
        overrides = OmegaConf.create(["debug=fast", override])
        OmegaConf.save(overrides, sweep / str(job) / ".hydra" / "overrides.yaml")
    (sweep / "2" / "failure.txt").write_text("overrides: debug=fast x=1\n\nValueError: x\n")

    markdown = write_report(sweep)
    assert markdown == sweep / "report" / "comparison.md"
    text = markdown.read_text()
    assert "Overrides shared by every job: `debug=fast`" in text
    # First column: the selection metric, the best val/bound (one epoch here: its val/elbo).
    for job, run in (("0", visuals_run), ("1", manifold_run)):
        selected, last = run.metrics["best/val/bound"], run.metrics["val/elbo"]
        assert selected == pytest.approx(last)  # one epoch, objective=elbo
        assert (
            f"| {job} | `model.latent_dim={run.cfg.model.latent_dim}` | {selected:.2f} | " in text
        )
    assert "| 2 (failed) | `x=1` | — | — | — | — |" in text
    best = max(
        (visuals_run.metrics["best/val/bound"], "0"), (manifold_run.metrics["best/val/bound"], "1")
    )
    assert f"Selected by best/val/bound: job {best[1]} ({best[0]:.2f})." in text

    rows = (sweep / "report" / "comparison.csv").read_text().splitlines()
    assert rows[0] == "job,status,overrides,best/val/bound,val/elbo,val/kl,val/active_units"
    job0, job1, job2 = (row.split(",") for row in rows[1:])
    assert job0[:3] == ["0", "ok", "debug=fast model.latent_dim=5"]
    assert float(job0[4]) == pytest.approx(visuals_run.metrics["val/elbo"], rel=1e-5)
    assert float(job1[6]) == manifold_run.metrics["val/active_units"]
    assert job2 == ["2", "failed", "debug=fast x=1", "", "", "", ""]
    assert_png_not_blank(sweep / "report" / "val_elbo.png")
