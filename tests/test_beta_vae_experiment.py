"""experiment=dsprites_beta: the sweeps of the README compose job by job as Hydra's multirun
expands them, and a tiny real sweep through `vae-train -m` gives `vae-report` its figures of
each metric against beta and a table read back from the jobs' TensorBoard events."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from hydra import initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from helpers.events import hparams_session_groups
from helpers.paths import CONF_DIR
from helpers.runs import job_dirs, output, output_overrides, run_module, vae_train
from vae_lightning.config_checks import build_checked_model, check_config
from vae_lightning.configs import compose_as_launched
from vae_lightning.data.dsprites import NUM_IMAGES
from vae_lightning.models.disentangling import BetaTC
from vae_lightning.report import read_events, write_report
from vae_lightning.sweep_axes import file_name, numeric_axes, override_items, use_log2

BETAS = (1, 2, 4, 8, 16)
SWEEPS = {  # the README's two commands: the swept key, the extra overrides
    "model.beta": ["experiment=dsprites_beta"],
    "objective.beta": ["experiment=dsprites_beta", "objective=beta_tc"],
}
METRICS = ("val/mig", "val/dci_disentanglement", "val/factorvae_score")


def sweep_jobs(arguments: list[str]) -> list[list[str]]:
    """The jobs' override lists, expanded by Hydra's own basic sweeper (what `-m` runs)."""
    parsed = OverridesParser.create().parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


@pytest.mark.parametrize("swept", list(SWEEPS))
def test_each_job_of_the_readme_sweeps_composes_and_builds(tmp_path, swept):
    values = ",".join(str(beta) for beta in BETAS)
    jobs = sweep_jobs([*SWEEPS[swept], f"{swept}={values}"])
    assert len(jobs) == len(BETAS)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for job, beta in zip(jobs, BETAS, strict=True):
            cfg = compose_as_launched("train", [*job, *output_overrides(tmp_path)])
            check_config(cfg)  # every _target_ node against its signature
            value = cfg.model.beta if swept == "model.beta" else cfg.objective.beta
            assert value == beta
            # The literature's dSprites setting (Burgess et al. 2018): conv 32x4, fc 256,
            # latent 10, Bernoulli, Adam 5e-4, batch 64, about 300k steps.
            assert cfg.data._target_.endswith("DSpritesDataModule")
            assert list(cfg.model.net.channels) == [32] * 4 and cfg.model.net.hidden_dim == 256
            assert cfg.model.latent_dim == 10
            assert cfg.likelihood._target_.endswith("Bernoulli")
            assert cfg.optimizer.lr == 5e-4 and cfg.data.batch_size == 64
            train_size = NUM_IMAGES - cfg.data.val_size - cfg.data.test_size
            steps = cfg.trainer.max_epochs * -(-train_size // cfg.data.batch_size)
            assert 280_000 <= steps <= 320_000
            assert list(cfg.callbacks.disentanglement.metrics) == ["mig", "dci", "factorvae"]
            assert set(METRICS) <= set(cfg.hparams_tab.metrics)
            if swept == "objective.beta":  # N is dSprites' training split, not MNIST's
                assert cfg.model.beta == 1
                objective = instantiate(cfg.objective)
                assert isinstance(objective, BetaTC)
                assert objective.data_problem(train_size) is None
            model = build_checked_model(
                cfg,
                lambda cfg=cfg: instantiate(
                    cfg.model,
                    optimizer=cfg.optimizer,
                    likelihood=cfg.likelihood,
                    objective=cfg.objective,
                    prior=cfg.get("prior"),
                    posterior=cfg.get("posterior"),
                    test_iwae_k=cfg.test_iwae_k,
                ),
            )
            assert model.net.latent_dim == 10


def test_beta_tc_on_other_data_keeps_its_default_dataset_size(tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose_as_launched("train", ["objective=beta_tc", *output_overrides(tmp_path)])
    assert cfg.objective.dataset_size == 55000  # MNIST: 60000 - 5000


def test_the_swept_numeric_keys_and_the_axis_scale():
    class Job:
        def __init__(self, name, overrides):
            self.name, self.overrides = name, override_items(overrides)

    jobs = [Job(str(i), ["experiment=x", f"model.beta={b}", "+s=a"]) for i, b in enumerate(BETAS)]
    assert numeric_axes(jobs) == ["model.beta"]
    assert jobs[0].overrides == {"experiment": "x", "model.beta": "1", "s": "a"}
    assert use_log2([1, 2, 4, 8, 16]) and not use_log2([1, 2, 3]) and not use_log2([0, 4, 8])
    assert file_name("val/mig", "model.beta") == "val_mig_vs_model.beta.png"


def write_job(sweep: Path, job: int, overrides: list[str], scalars: dict[str, float]) -> None:
    """A job folder as a multirun leaves it: overrides and real TensorBoard event files."""
    folder = sweep / str(job)
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    writer = SummaryWriter(str(folder / "tensorboard" / "run"))
    for tag, value in scalars.items():
        writer.add_scalar(tag, value - 1.0, 0)  # an earlier epoch: the report takes the last
        writer.add_scalar(tag, value, 10)
    writer.close()


def test_the_report_draws_each_logged_metric_against_the_swept_beta(tmp_path):
    # Two objectives x three betas, listed out of beta's order; job 6 failed (no events).
    sweep = tmp_path / "sweep"
    jobs = [
        (16, "elbo"),
        (1, "elbo"),
        (4, "elbo"),
        (1, "beta_tc"),
        (4, "beta_tc"),
        (16, "beta_tc"),
    ]
    for job, (beta, objective) in enumerate(jobs):
        scalars = {"val/elbo": -100.0 - beta, "val/rec": 90.0 + beta, "val/mig": beta / 100}
        write_job(sweep, job, ["debug=fast", f"objective={objective}", f"b={beta}"], scalars)
    (sweep / "6" / ".hydra").mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.create(["debug=fast", "objective=elbo", "b=2"]),
        sweep / "6" / ".hydra" / "overrides.yaml",
    )
    write_report(sweep)
    out = sweep / "report"
    for metric in ("val/elbo", "val/rec", "val/mig"):
        assert_png(out / file_name(metric, "b"))
    assert not (out / file_name("val/kl", "b")).exists()  # never logged: not drawn
    text = (out / "comparison.md").read_text()
    assert "against b (log2 axis); one line per objective." in text
    table = [
        line for line in text.split("## Against `b`")[1].splitlines() if line.startswith("| ")
    ]
    assert table[0] == "| job | b | objective | val/elbo | val/rec | MIG |"
    assert table[2:] == [
        "| 1 | 1 | elbo | -101.00 | 91.00 | 0.010 |",
        "| 3 | 1 | beta_tc | -101.00 | 91.00 | 0.010 |",
        "| 2 | 4 | elbo | -104.00 | 94.00 | 0.040 |",
        "| 4 | 4 | beta_tc | -104.00 | 94.00 | 0.040 |",
        "| 0 | 16 | elbo | -116.00 | 106.00 | 0.160 |",
        "| 5 | 16 | beta_tc | -116.00 | 106.00 | 0.160 |",
    ]


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    with Image.open(path) as image:
        assert image.size == (550, 400)  # 5.5 x 4 inches at 100 dpi
        assert np.asarray(image.convert("L")).std() > 5  # not blank


@pytest.mark.slow
def test_a_tiny_beta_sweep_reports_metrics_against_beta(tmp_path):
    sweep = tmp_path / "sweep"
    result = vae_train(
        [
            "-m",
            "experiment=dsprites_beta",
            "model.beta=1,4",
            "debug=fast",
            f"data.root={tmp_path / 'data'}",  # no DeepMind file there: generated
            "data.subset=600",
            "data.val_size=100",
            "data.test_size=100",
            "test=false",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "+trainer.num_sanity_val_steps=0",
            "~callbacks.progress_bar",
            "callbacks.disentanglement.num_images=100",
            "callbacks.latent_space.num_images=50",
            "callbacks.traversals.num_images=50",
            "callbacks.posterior_collapse.num_images=50",
            f"hydra.sweep.dir={sweep}",
            f"paths.log_dir={tmp_path / 'outputs'}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, output(result)
    assert [job.name for job in job_dirs(sweep)] == ["0", "1"]

    report = run_module("vae_lightning.report", [f"run_dir={sweep}"], cwd=tmp_path)
    assert report.returncode == 0, output(report)
    out = sweep / "report"
    for metric in ("val/elbo", "val/rec", "val/kl", *METRICS):
        assert_png(out / file_name(metric, "model.beta"))

    # The table: one row per beta, in beta's order, each value the job's last logged one.
    text = (out / "comparison.md").read_text()
    header = "| job | model.beta | val/elbo | val/rec | val/kl | MIG | DCI D | DCI C | DCI I |"
    assert header + " FactorVAE | active units |" in text
    assert "(log2 axis)" in text
    rows = [line for line in text.splitlines() if line.startswith(("| 0 | 1 |", "| 1 | 4 |"))]
    assert len(rows) == 2
    tags = ("val/elbo", "val/rec", "val/kl", "val/mig", "val/dci_disentanglement")
    for row, job in zip(rows, ("0", "1"), strict=True):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        events = read_events(sweep / job)
        for cell, tag in zip(cells[2:], tags, strict=False):
            value = events.last(tag)
            assert value is not None and np.isfinite(value), tag
            assert float(cell) == pytest.approx(value, abs=0.006 if abs(value) >= 10 else 6e-4)
        factorvae = events.last("val/factorvae_score")
        assert 0 <= factorvae <= 1
    # The run table in comparison.csv is unchanged: the sweep's usual columns.
    with (out / "comparison.csv").open() as handle:
        assert [row["job"] for row in csv.DictReader(handle)] == ["0", "1"]
    # The HParams tab lists the disentanglement metrics of each job.
    for group in hparams_session_groups(sweep):
        names = {metric.name.tag for metric in group.metric_values}
        assert set(METRICS) <= names
