"""vae-eval end to end: a tiny trained run on generated IDX data, evaluated and read back."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from helpers.data import idx_data
from helpers.events import scalars
from helpers.paths import CONF_DIR
from helpers.runs import output, run_module, train_run, vae_train
from vae_lightning.checkpoints import CheckpointError
from vae_lightning.configs import compose_as_launched
from vae_lightning.data import MNISTDataModule
from vae_lightning.errors import ConfigError
from vae_lightning.evaluate import EvaluationError, evaluate, evaluate_checkpoint
from vae_lightning.train import train

TEST_IMAGES = 200  # in the generated test split (helpers.data.write_dataset)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, idx_root) -> Path:
    """A one-epoch run, laid out by train() as vae-train's: .hydra/, checkpoints/, tensorboard/."""
    overrides = ["debug=fast", "~callbacks.progress_bar", "~callbacks.images"]
    # k=100 as a real run's test (debug=fast uses 10), the k that vae-eval reproduces below
    overrides.append("test_iwae_k=100")
    run_dir = train_run(tmp_path_factory.mktemp("run"), idx_root, overrides).dir
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    return run_dir


@pytest.fixture
def evaluate_in_process(tmp_path):
    def _evaluate(overrides: list[str]) -> dict:
        base = [
            f"paths.output_dir={tmp_path}",
            f"paths.log_dir={tmp_path}",
            "eval.progress_bar=false",
        ]
        return evaluate(compose_as_launched("eval", [*base, *overrides]))

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield _evaluate
    GlobalHydra.instance().clear()


def test_vae_eval_cli_reproduces_the_test_metrics_logged_after_training(trained_run, tmp_path):
    """Same checkpoint, batch and k as the end-of-training test: the very same numbers."""
    ckpt = trained_run / "checkpoints" / "epoch_000.ckpt"
    eval_dir = tmp_path / "eval"
    result = run_module(
        "vae_lightning.evaluate",
        [
            f"ckpt_path={ckpt}",
            "eval.iwae_k=100",
            "eval.batch_size=1000",
            f"hydra.run.dir={eval_dir}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/nll_iwae (k=100)" in result.stdout

    report = json.loads((eval_dir / "eval.json").read_text())
    logged = scalars(trained_run)
    for name in ("elbo", "rec", "kl", "loss", "nll_iwae", "bits_per_dim", "active_units"):
        (value,) = logged[f"test/{name}"]
        assert report[f"test/{name}"] == pytest.approx(value, abs=1e-4), name
    assert report["test/bits_per_dim"] == pytest.approx(
        report["test/nll_iwae"] / (784 * math.log(2)), rel=1e-6
    )
    assert report["iwae_k"] == 100 and report["split"] == "test"
    assert report["num_images"] == TEST_IMAGES
    assert report["ckpt_path"] == str(ckpt)
    assert report["data"]["dataset"] == "mnist" and report["data"]["binarize"] == "dynamic"
    assert report["likelihood"] == "Bernoulli" and report["objective"] == "ELBO"
    assert report["prior"] == "StandardNormal" and report["kl_estimator"] == "closed_form"
    assert report["peak_memory_mb"] > 0


def test_val_split_and_data_key_overrides_apply_on_the_runs_data(
    trained_run, evaluate_in_process, idx_root
):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    report = evaluate_in_process(
        [f"ckpt_path={ckpt}", "eval.split=val", "eval.iwae_k=10", "data.val_size=60"]
    )
    assert report["split"] == "val" and report["num_images"] == 60
    assert report["data"]["val_size"] == 60
    assert report["data"]["root"] == str(idx_root)  # the run's own, kept
    assert report["val/nll_iwae"] <= -report["val/elbo"] + 1.0
    assert not any(key.startswith("test/") for key in report)


def test_k_and_subset_are_honoured(trained_run, evaluate_in_process):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    small = evaluate_in_process([f"ckpt_path={ckpt}", "eval.iwae_k=1", "eval.batch_size=50"])
    large = evaluate_in_process(
        [f"ckpt_path={ckpt}", "eval.iwae_k=200", "eval.batch_size=50", "eval.limit_batches=2"]
    )
    assert small["num_images"] == TEST_IMAGES and large["num_images"] == 100
    # k = 1 is a single-sample ELBO estimate, k = 200 a much tighter bound.
    assert small["test/nll_iwae"] == pytest.approx(-small["test/elbo"], abs=3.0)
    assert large["test/nll_iwae"] < small["test/nll_iwae"]
    off = evaluate_in_process([f"ckpt_path={ckpt}", "eval.iwae_k=0", "eval.limit_batches=1"])
    assert "test/nll_iwae" not in off and "test/bits_per_dim" not in off
    assert "test/elbo" in off and "test/active_units" in off


def test_checkpoint_outside_its_run_needs_a_data_option(
    trained_run, evaluate_in_process, idx_root
):
    loose = trained_run.parent / "loose.ckpt"
    shutil.copy(trained_run / "checkpoints" / "last.ckpt", loose)
    with pytest.raises(EvaluationError, match="data=<option>"):
        evaluate_in_process([f"ckpt_path={loose}", "eval.iwae_k=2"])
    report = evaluate_in_process(
        [
            f"ckpt_path={loose}",
            "eval.iwae_k=2",
            "data=mnist",
            *idx_data(idx_root),
        ]
    )
    assert report["data"]["root"] == str(idx_root) and report["num_images"] == TEST_IMAGES


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ([], "vae-eval needs the checkpoint"),
        (["ckpt_path=/nonexistent/x.ckpt"], "no such file"),
    ],
)
def test_bad_invocations_say_what_to_do(trained_run, evaluate_in_process, overrides, match):
    ckpt = str(trained_run / "checkpoints" / "last.ckpt")
    with pytest.raises(EvaluationError, match=match):
        evaluate_in_process([o.replace("RUN", ckpt) for o in overrides])


def test_a_truncated_checkpoint_is_named_as_such(trained_run, evaluate_in_process, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((trained_run / "checkpoints" / "last.ckpt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        evaluate_in_process([f"ckpt_path={truncated}"])


def test_bad_eval_settings_are_listed_together(trained_run, evaluate_in_process):
    ckpt = str(trained_run / "checkpoints" / "last.ckpt")
    bad = ["eval.split=train", "eval.iwae_k=-1", "eval.chunk_rows=0", "eval.batch_size=abc"]
    with pytest.raises(ConfigError) as info:
        evaluate_in_process([f"ckpt_path={ckpt}", *bad])
    message = str(info.value)
    assert "eval.split='train' is invalid: it should be 'test' or 'val'." in message
    assert "eval.iwae_k=-1 is invalid: it should be greater than or equal to 0." in message
    assert "eval.chunk_rows=0 is invalid: it should be greater than 0." in message
    assert "eval.batch_size='abc' is invalid: it should be a valid integer." in message


@pytest.mark.slow
def test_test_metrics_under_ddp_equal_one_process(tmp_path, idx_root):
    """test/nll_iwae and active units of a 2-process CPU run = one process on the same split."""
    run_dir = tmp_path / "run"
    result = vae_train(
        [
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "debug=fast",
            "trainer.limit_test_batches=1.0",
            *idx_data(idx_root),
            "data.eval_batch_size=30",  # 200 test images: 7 batches dealt out to 2 ranks
            "test_iwae_k=20",
            "~callbacks.progress_bar",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, output(result)
    logged = scalars(run_dir)
    single = evaluate_checkpoint(
        run_dir / "checkpoints" / "epoch_000.ckpt",
        MNISTDataModule(root=str(idx_root), download=False, val_size=100, eval_batch_size=30),
        iwae_k=20,
        accelerator="cpu",
        progress_bar=False,
    )
    assert single["num_images"] == TEST_IMAGES
    for name in ("elbo", "nll_iwae", "bits_per_dim", "active_units"):
        (value,) = logged[f"test/{name}"]
        assert single[f"test/{name}"] == pytest.approx(value, rel=1e-5, abs=1e-4), name


def test_test_loss_uses_the_kl_weight_of_the_evaluated_checkpoints_step(
    tmp_path, idx_root, compose_train
):
    """With a KL warm-up, test/loss = rec + beta * s(step) * kl with the step of the weights
    tested: the best checkpoint's after training, the checkpoint's own in vae-eval (which
    used to rebuild the trainer at step 0 and report the reconstruction term alone)."""
    warmup, beta = 100, 2.0
    cfg = compose_train(
        [
            "debug=fast",
            "trainer.max_epochs=2",
            f"objective.kl_warmup_steps={warmup}",
            f"model.beta={beta}",
            "test_iwae_k=0",
            "report=false",
            "~callbacks.progress_bar",
        ]
    )
    metrics = train(cfg)
    checkpoints = tmp_path / "checkpoints"
    (best,) = checkpoints.glob("epoch_*.ckpt")  # save_top_k=1: the best by val/elbo
    best_step = torch.load(best, weights_only=True)["global_step"]
    assert 0 < best_step < warmup
    weight = beta * best_step / warmup

    def assert_loss_uses_weight(results: dict, prefix: str) -> None:
        expected = results[f"{prefix}/rec"] + weight * results[f"{prefix}/kl"]
        assert results[f"{prefix}/loss"] == pytest.approx(expected, rel=1e-5)

    assert_loss_uses_weight(metrics, "test")
    data = MNISTDataModule(root=str(idx_root), download=False, val_size=100)
    for checkpoint in (best, checkpoints / "last.ckpt"):
        step = torch.load(checkpoint, weights_only=True)["global_step"]
        weight = beta * step / warmup
        assert_loss_uses_weight(
            evaluate_checkpoint(checkpoint, data, iwae_k=0, progress_bar=False), "test"
        )
