"""Multirun, Optuna and launchers, run as a user runs them: `vae-train -m ...` in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from helpers.events import written_scalars
from helpers.paths import CONF_DIR
from helpers.runs import job_dirs, output, tensorboard_runs, tiny_job_args, vae_train


def test_multirun_gives_each_job_its_folder_config_and_named_tensorboard_run(tmp_path, idx_root):
    sweep_dir = tmp_path / "sweep"
    result = vae_train(
        ["-m", "model.latent_dim=2,8", "model.beta=0.5,4", *tiny_job_args(idx_root, sweep_dir)],
        cwd=tmp_path,
    )
    assert result.returncode == 0, output(result)

    jobs = job_dirs(sweep_dir)
    assert [job.name for job in jobs] == ["0", "1", "2", "3"]
    seen, names = set(), set()
    for job in jobs:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        swept = dict(o.split("=", 1) for o in overrides if o.startswith("model."))
        config = OmegaConf.load(job / ".hydra" / "config.yaml")
        assert config.model.latent_dim == int(swept["model.latent_dim"])
        assert config.model.beta == float(swept["model.beta"])
        seen.add((config.model.latent_dim, config.model.beta))

        (run,) = tensorboard_runs(job)  # exactly one TensorBoard run per job ...
        # ... named by the job's overrides (sorted, comma-separated), not by the data path.
        items = run.name.split(",")
        assert f"model.beta={swept['model.beta']}" in items
        assert f"model.latent_dim={swept['model.latent_dim']}" in items
        assert items == sorted(items) and "debug=fast" in items
        assert "data.root" not in run.name
        names.add(run.name)
        hparams = yaml.safe_load((run / "hparams.yaml").read_text())
        assert (hparams["latent_dim"], hparams["beta"]) == (
            config.model.latent_dim,
            config.model.beta,
        )
        assert len(written_scalars(run, "val/elbo")) == 1
        assert {p.name for p in (job / "checkpoints").iterdir()} == {"epoch_000.ckpt", "last.ckpt"}
    assert seen == {(2, 0.5), (2, 4.0), (8, 0.5), (8, 4.0)}
    assert len(names) == 4
    # Nothing was written outside the sweep folder.
    assert not (tmp_path / "outputs").exists()


def test_failing_job_is_reported_and_the_others_keep_their_results(tmp_path, idx_root):
    sweep_dir = tmp_path / "sweep"
    # Job 1 asks for a validation split larger than the 600 training images: it fails in setup.
    args = tiny_job_args(idx_root, sweep_dir)
    result = vae_train(["-m", *args, "data.val_size=100,5000"], tmp_path)

    assert result.returncode == 1, output(result)
    good, bad = job_dirs(sweep_dir)
    assert (good / "checkpoints" / "last.ckpt").is_file()
    assert not (good / "failure.txt").exists()
    failure = (bad / "failure.txt").read_text()
    assert "data.val_size=5000" in failure.splitlines()[0].split()  # the job's overrides
    assert "ConfigError: data.val_size=5000 must be between 1 and 599" in failure
    assert "Traceback" in (bad / "train.log").read_text()  # the job's own log has it too
    # The summary at the end names the failed job, its error and where the traceback is.
    summary = result.stdout.split("1 job(s) of this sweep failed", 1)[1]
    assert "1: overrides:" in summary and "ConfigError: data.val_size=5000" in summary
    assert f"traceback: {bad / 'failure.txt'}" in summary


@pytest.mark.slow
def test_optuna_search_stores_each_trial_with_the_value_its_job_returned(tmp_path, idx_root):
    optuna = pytest.importorskip(
        "optuna", reason="needs the sweeps extra: pip install -e .[sweeps]"
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = [
        "hparams_search=optuna",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=test_search",
    ]
    sweep_dir = tmp_path / "search"
    # No -m: hparams_search=optuna makes the run a multirun by itself.
    args = [*search, "hydra.sweeper.n_trials=3", *tiny_job_args(idx_root, sweep_dir)]
    result = vae_train(args, tmp_path)
    assert result.returncode == 0, output(result)

    study = optuna.load_study(study_name="test_search", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for trial, job in zip(study.trials, job_dirs(sweep_dir), strict=True):
        # The trial's value is what the job returned: the val/elbo it logged.
        (run,) = tensorboard_runs(job)
        assert trial.value == pytest.approx(written_scalars(run, "val/elbo")[-1][1], rel=1e-6)
        # The job ran with the parameters the study sampled, inside the search space.
        config = OmegaConf.load(job / ".hydra" / "config.yaml")
        assert trial.params["model.latent_dim"] == config.model.latent_dim
        assert trial.params["model.beta"] == pytest.approx(config.model.beta)
        assert trial.params["optimizer.lr"] == pytest.approx(config.optimizer.lr)
        hidden_dims = yaml.safe_load(trial.params["model.net.hidden_dims"])  # e.g. "[400,400]"
        assert hidden_dims == list(config.model.net.hidden_dims)
        assert 1e-4 <= config.optimizer.lr <= 3e-3 and 0.25 <= config.model.beta <= 4
    assert study.best_value == max(trial.value for trial in study.trials)

    # The same command again resumes the study: its trials are added to the stored ones.
    sweep_dir = tmp_path / "resumed"
    args = ["-m", *search, "hydra.sweeper.n_trials=1", *tiny_job_args(idx_root, sweep_dir)]
    result = vae_train(args, tmp_path)
    assert result.returncode == 0, output(result)
    trials = optuna.load_study(study_name="test_search", storage=storage).trials
    assert [trial.number for trial in trials] == [0, 1, 2, 3]
    (job,) = job_dirs(sweep_dir)
    assert (
        trials[3].params["model.latent_dim"]
        == OmegaConf.load(job / ".hydra/config.yaml").model.latent_dim
    )


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local", "parallel"])
def test_parallel_launchers_write_each_job_into_its_numbered_folder(tmp_path, idx_root, launcher):
    plugin = {"local": "submitit", "parallel": "joblib"}[launcher]
    pytest.importorskip(plugin, reason="needs the sweeps extra: pip install -e .[sweeps]")
    sweep_dir = tmp_path / "sweep"
    args = ["-m", f"hydra/launcher={launcher}", "model.latent_dim=2,8", "trainer=cpu"]
    if launcher == "parallel":
        args.append("hydra.launcher.n_jobs=2")
    result = vae_train([*args, *tiny_job_args(idx_root, sweep_dir)], tmp_path)
    assert result.returncode == 0, output(result)

    jobs = job_dirs(sweep_dir)
    assert [job.name for job in jobs] == ["0", "1"]
    for job, latent_dim in zip(jobs, (2, 8), strict=True):
        assert OmegaConf.load(job / ".hydra" / "config.yaml").model.latent_dim == latent_dim
        (run,) = tensorboard_runs(job)
        assert f"model.latent_dim={latent_dim}" in run.name.split(",")
        assert len(written_scalars(run, "val/elbo")) == 1
        assert (job / "checkpoints" / "last.ckpt").is_file()
    if launcher == "local":  # submitit's own logs of each job
        assert len(list((sweep_dir / ".submitit").glob("*/*_log.out"))) == 2


def test_slurm_launcher_asks_for_one_task_per_device_and_a_time_limit(tmp_path, monkeypatch):
    """The sbatch script submitit would submit for hydra/launcher=slurm (no cluster needed)."""
    submitit = pytest.importorskip("submitit", reason="needs the sweeps extra")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    fake_bin = tmp_path / "bin"  # submitit only checks that `srun` exists
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")

    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4"]
    overrides += ["hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # the launcher resolves ${hydra.sweep.dir}
        try:
            params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
        finally:
            HydraConfig.instance().cfg = None
    # What hydra_submitit_launcher's SlurmLauncher.launch does with its config.
    assert params.pop("_target_").endswith("SlurmLauncher")
    executor = submitit.AutoExecutor(
        cluster="slurm",
        folder=params.pop("submitit_folder"),
        slurm_max_num_timeout=params.pop("max_num_timeout"),
    )
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{k if k in shared else f"slurm_{k}": v for k, v in params.items()}
    )
    sbatch = executor._executor._make_submission_file_text("python -u -m job", "0")

    for line in ("--ntasks-per-node=4", "--gpus-per-node=4", "--nodes=1", "--time=240"):
        assert f"#SBATCH {line}\n" in sbatch
    assert "#SBATCH --partition=gpu\n" in sbatch
    assert "#SBATCH --signal=USR2@120\n" in sbatch


def test_job_name_is_a_folder_safe_name_of_the_overrides(compose_train):
    """The TensorBoard run of every run, single or a job of a sweep, is named by its
    overrides, so `tensorboard --logdir outputs` tells them apart."""
    from omegaconf import open_dict, read_write

    from vae_lightning.sweeps import MAX_NAME_LENGTH, NO_OVERRIDES_NAME, job_name

    cfg = compose_train(["model.beta=4"])  # where data and outputs live is left out
    assert job_name() == "data.val_size=100,model.beta=4"
    assert cfg.logger.tensorboard.version == job_name()
    hydra_cfg = HydraConfig.get()
    try:
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.job.override_dirname = ""
            assert job_name() == NO_OVERRIDES_NAME
            hydra_cfg.mode = "MULTIRUN"
            hydra_cfg.job.override_dirname = "data.search_dirs=[/a/b],model.beta=4"
            assert job_name() == "data.search_dirs=[_a_b],model.beta=4"
            hydra_cfg.job.override_dirname = ",".join(f"model.beta={b}" for b in range(100))
            long_name = job_name()
    finally:
        HydraConfig.instance().cfg = None  # no multirun state for the tests that follow
    assert len(long_name) == MAX_NAME_LENGTH and long_name.startswith("model.beta=0,model.beta=1,")


def sweep_dir_and_pid_of_a_new_launch() -> tuple[str, str]:
    """The sweep folder a `vae-train -m` launched by a fresh process resolves, and its pid."""
    code = (
        "import os\n"
        "from hydra import initialize_config_dir, compose\n"
        "from hydra.core.hydra_config import HydraConfig\n"
        "import vae_lightning.train\n"
        f"with initialize_config_dir(config_dir='{CONF_DIR}', version_base='1.3'):\n"
        "    cfg = compose('train', return_hydra_config=True)\n"
        "    HydraConfig.instance().set_config(cfg)\n"
        "    print(cfg.hydra.sweep.dir, os.getpid())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    sweep_dir, pid = result.stdout.split()
    return sweep_dir, pid


def test_two_multiruns_started_in_the_same_second_get_their_own_folders():
    """<log dir>/multirun/<date>/<time>-<id of the launching process>: two launches never
    share a folder, even in the same second."""
    (first, first_pid), (second, second_pid) = (sweep_dir_and_pid_of_a_new_launch() for _ in "ab")
    assert re.fullmatch(r".*/multirun/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d+", first), first
    assert first.endswith(f"-{first_pid}") and second.endswith(f"-{second_pid}")
    assert first != second
