"""vae-eval's representation metrics (eval.metrics): wired to a real trained checkpoint,
refused before any computation on data without factors, and equal to the metric functions
applied to the codes encoded independently."""

import json
from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import Tensor

from helpers.events import scalars
from helpers.paths import CONF_DIR
from helpers.runs import output, output_overrides, run_module, train_run
from vae_lightning.configs import compose_as_launched
from vae_lightning.data import MNISTDataModule
from vae_lightning.data.datamodule import prepare_images
from vae_lightning.errors import ConfigError
from vae_lightning.evaluate import EvaluationError, evaluate, evaluate_checkpoint
from vae_lightning.lit_module import VAELitModule
from vae_lightning.metrics import code_metrics
from vae_lightning.seeding import EVAL_SEED
from vae_lightning.train import train

TEST_IMAGES = 200  # in the generated test split (helpers.data.write_dataset)


class DigitFactors(MNISTDataModule):
    """Generated MNIST whose one ground-truth factor is the label: a data module with
    factors(split), as dSprites' is."""

    def factors(self, split: str) -> Tensor:
        self.setup()
        return self.splits[split][1][:, None].cpu()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, idx_root) -> Path:
    overrides = ["debug=fast", "~callbacks.progress_bar", "~callbacks.images"]
    run_dir = train_run(tmp_path_factory.mktemp("run"), idx_root, overrides).dir
    return run_dir / "checkpoints" / "epoch_000.ckpt"


@pytest.fixture
def evaluate_in_process(tmp_path):
    def _evaluate(overrides: list[str]) -> dict:
        base = [f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}"]
        return evaluate(
            compose_as_launched("eval", [*base, "eval.progress_bar=false", *overrides])
        )

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield _evaluate
    GlobalHydra.instance().clear()


def test_factor_metrics_on_data_without_factors_are_refused_before_any_work(
    checkpoint, evaluate_in_process, tmp_path
):
    with pytest.raises(EvaluationError, match=r"asks for mig, sap.*ground-truth factors"):
        evaluate_in_process([f"ckpt_path={checkpoint}", "eval.metrics=[nll,mig,sap,tc]"])
    assert not (tmp_path / "eval.json").exists()


def test_an_unknown_metric_is_a_config_error(checkpoint, evaluate_in_process):
    with pytest.raises(ConfigError, match=r"eval.metrics=\['nll', 'beta'\] is invalid"):
        evaluate_in_process([f"ckpt_path={checkpoint}", "eval.metrics=[nll,beta]"])


def test_unsupervised_metrics_agree_with_the_test_loop(checkpoint, evaluate_in_process, tmp_path):
    """Same images, same codes: the per-dimension KL sums to test/kl (closed form), and the
    codes' active units are the test loop's."""
    nll = evaluate_in_process([f"ckpt_path={checkpoint}", "eval.iwae_k=2"])
    assert nll["metrics"] == ["nll"] and "test/tc" not in nll  # today's default unchanged
    result = evaluate_in_process(
        [f"ckpt_path={checkpoint}", "eval.metrics=[tc,active_units,kl_per_dim]"]
    )
    assert "test/elbo" not in result  # nll not asked for: no test loop
    per_dim = [value for key, value in result.items() if key.startswith("test/kl_per_dim/")]
    assert len(per_dim) == 20  # the default latent_dim
    assert sum(per_dim) == pytest.approx(nll["test/kl"], rel=1e-4)
    assert result["test/active_units"] == nll["test/active_units"]
    assert result["test/tc"] >= 0
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["test/tc"] == result["test/tc"] and written["num_images"] == TEST_IMAGES
    val = evaluate_in_process([f"ckpt_path={checkpoint}", "eval.split=val", "eval.metrics=[tc]"])
    assert val["num_images"] == 100 and val["val/tc"] != result["test/tc"]  # the val images


def test_factor_metrics_equal_the_functions_on_independently_encoded_codes(checkpoint, idx_root):
    names = ("mig", "dci", "sap", "factorvae", "tc")
    datamodule = DigitFactors(root=str(idx_root), download=False, val_size=100)
    result = evaluate_checkpoint(
        checkpoint,
        datamodule,
        iwae_k=2,
        accelerator="cpu",
        progress_bar=False,
        metrics=("nll", *names),
    )
    keys = ["mig", "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap"]
    for key in [*keys, "factorvae_score", "tc"]:
        assert f"test/{key}" in result, key
    assert "test/nll_iwae" in result

    model = VAELitModule.load_from_checkpoint(checkpoint, map_location="cpu")
    images, labels = datamodule.splits["test"]
    with torch.no_grad():
        codes, _ = model.net.encode(prepare_images(images, fresh_draw=False))
    expected = code_metrics(names, codes, labels[:, None], seed=EVAL_SEED)
    for key, value in expected.items():
        assert result[f"test/{key}"] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_the_training_callback_logs_its_figures_and_refuses_factor_metrics_without_factors(
    checkpoint, tmp_path, idx_root
):
    default_run = checkpoint.parent.parent
    assert "val/tc" not in scalars(default_run)  # off by default
    base = ["debug=fast", "~callbacks.progress_bar", "~callbacks.images"]
    on = [
        *base,
        "callbacks.disentanglement.metrics=[tc]",
        "callbacks.disentanglement.num_images=50",
    ]
    run = train_run(tmp_path / "on", idx_root, on)
    (value,) = scalars(run.dir)["val/tc"]
    assert value >= 0
    with pytest.raises(ConfigError, match="asks for mig, which need the ground-truth factors"):
        train_run(tmp_path / "bad", idx_root, [*base, "callbacks.disentanglement.metrics=[mig]"])


@pytest.mark.slow  # a vae-eval process: 15-35 s on the shared 2-core machine
def test_the_cli_exits_2_with_one_paragraph_on_data_without_factors(checkpoint, tmp_path):
    args = [f"ckpt_path={checkpoint}", "eval.metrics=[factorvae]", f"hydra.run.dir={tmp_path}"]
    result = run_module("vae_lightning.evaluate", args, cwd=tmp_path)
    assert result.returncode == 2, output(result)
    assert "vae-eval: error: eval.metrics asks for factorvae" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a training run and an evaluation: 20-35 s on the shared 2-core machine
def test_dsprites_run_evaluated_with_every_metric(tmp_path, capsys):
    """A real (tiny) dSprites run, then vae-eval with every figure: each key in eval.json and
    in the printed table, the factor-based ones between 0 and 1."""
    run_dir = tmp_path / "run"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose_as_launched(
            "train",
            [
                "data=dsprites",
                "data.subset=1000",
                "data.val_size=100",
                "data.test_size=400",
                *output_overrides(run_dir),
                "debug=fast",
                "trainer.limit_train_batches=2",
                "trainer.limit_val_batches=1",
                "model.latent_dim=4",
                "callbacks.disentanglement.metrics=[mig,factorvae]",
                "callbacks.disentanglement.num_images=100",
                *(
                    f"~callbacks.{name}"
                    for name in (
                        "progress_bar",
                        "images",
                        "traversals",
                        "interpolations",
                        "manifold",
                        "latent_space",
                        "posterior_collapse",
                    )
                ),
            ],
        )
        train(cfg)
        logged = scalars(run_dir)
        assert 0 <= logged["val/mig"][-1] <= 1 and 0 <= logged["val/factorvae_score"][-1] <= 1
        base = [f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}"]
        result = evaluate(
            compose_as_launched(
                "eval",
                [
                    *base,
                    f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                    "eval.progress_bar=false",
                    "eval.metrics=[mig,dci,sap,factorvae,tc]",
                ],
            )
        )
    GlobalHydra.instance().clear()
    written = json.loads((tmp_path / "eval.json").read_text())
    table = capsys.readouterr().out
    figures = ["mig", "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap"]
    for key in [*figures, "factorvae_score"]:
        assert 0 <= written[f"test/{key}"] <= 1, key
        assert f"test/{key}" in table, key
    assert written["test/tc"] == result["test/tc"] and "test/tc" in table
    assert written["num_images"] == 400 and written["metrics"][0] == "mig"
