"""Every bad input fails before training with a message naming the key or file and the fix,
and leaves a previous good run in the same run dir exactly as it was."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra import initialize_config_dir

from helpers.data import write_dataset, write_idx
from helpers.paths import CONF_DIR
from helpers.runs import compose_config, run_module, vae_train
from vae_lightning.checkpoints import CheckpointError
from vae_lightning.config_rules import available_devices
from vae_lightning.data import DataFileError
from vae_lightning.errors import ConfigError
from vae_lightning.train import train


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file under ``folder``."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory, idx_root: Path) -> Path:
    """A finished run: .hydra/, checkpoints (epoch_000, last), TensorBoard events."""
    run_dir = tmp_path_factory.mktemp("good_run")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose_config(run_dir, idx_root, ["debug=fast", "~callbacks.progress_bar"])
        train(cfg)
    assert {".hydra/config.yaml", "checkpoints/last.ckpt"} <= set(snapshot(run_dir))
    return run_dir


@pytest.fixture
def reused_run_dir(good_run: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the good run in tmp_path (where compose_train writes) and its snapshot."""
    shutil.copytree(good_run, tmp_path, dirs_exist_ok=True)
    return tmp_path, snapshot(tmp_path)


def more_devices_than_here() -> int:
    kind_and_count = available_devices("auto")
    assert kind_and_count is not None
    return kind_and_count[1] + 1


CONFIG_FAULTS = {
    "latent_dim=0": (
        ["model.latent_dim=0"],
        "model.latent_dim=0 is invalid: it should be greater than 0",
    ),
    "latent_dim=abc": (
        ["model.latent_dim=abc"],
        "model.latent_dim='abc' is invalid: it should be a valid integer",
    ),
    "beta=-1": (["model.beta=-1"], "model.beta=-1 is invalid: it should be greater than or equal"),
    "lr=0": (["optimizer.lr=0"], "optimizer.lr=0 is invalid: it should be greater than 0"),
    "batch_size=0": (["data.batch_size=0"], "data.batch_size=0 is invalid: it should be greater"),
    "nan_policy": (["nan_policy=maybe"], "nan_policy='maybe' is invalid"),
    "binarize": (["data.binarize=x"], "data.binarize='x' is invalid: it should be 'dynamic'"),
    "init": (
        ["model.net.init=he"],
        "model.net.init='he' is invalid: it should be 'xavier' or 'pytorch'",
    ),
    "cycle without warm-up": (
        ["objective.cycle_steps=10", "objective.kl_warmup_steps=0"],
        "objective: cycle_steps=10 restarts the KL warm-up every 10 steps, so it needs "
        "0 < kl_warmup_steps <= cycle_steps",
    ),
    "beta_tc on a hierarchy": (
        ["objective=beta_tc", "model=hvae"],
        "objective=beta_tc, model=hvae, prior=standard, posterior=gaussian do not combine: "
        "objective=beta_tc estimates the aggregate posterior",
    ),
    "two at once": (
        ["model.latent_dim=-3", "optimizer.lr=-1e-3"],
        "model.latent_dim=-3 is invalid",  # and the next line names optimizer.lr
    ),
    "conv on 6x6": (
        ["model=conv", "data.image_shape=[1,6,6]"],
        "model=conv cannot be built for data.image_shape=[1, 6, 6]: conv_vae with channels="
        "[16, 32, 64] halves the image 3 times, so it needs images of at least 8x8 pixels",
    ),
}


@pytest.mark.parametrize("fault", CONFIG_FAULTS)
def test_config_fault_is_named_and_run_dir_untouched(compose_train, reused_run_dir, fault):
    run_dir, before = reused_run_dir
    overrides, message = CONFIG_FAULTS[fault]
    with pytest.raises(ConfigError) as info:
        train(compose_train(overrides))
    assert message in str(info.value)
    assert "nothing was run and no file was written" in str(info.value)
    if fault == "two at once":
        assert "\n  - optimizer.lr=-0.001 is invalid" in str(info.value)
    assert snapshot(run_dir) == before


def test_more_devices_than_the_machine_has(compose_train, reused_run_dir):
    run_dir, before = reused_run_dir
    count = more_devices_than_here()
    with pytest.raises(
        ConfigError, match=f"trainer.devices={count} asks for {count} devices, but"
    ):
        train(compose_train([f"trainer.devices={count}"]))
    assert snapshot(run_dir) == before


def test_val_size_larger_than_train_set(compose_train, reused_run_dir):
    run_dir, before = reused_run_dir
    with pytest.raises(ValueError, match="data.val_size=600 must be between 1 and 599"):
        train(compose_train(["data.val_size=600"]))
    assert snapshot(run_dir) == before


def break_data(folder: Path, fault: str) -> None:
    """Damage a copy of the generated dataset as the named fault would."""
    images = folder / "train-images-idx3-ubyte.gz"
    if fault == "missing files":
        images.unlink()
    elif fault == "truncated gzip":
        images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])
    elif fault == "wrong magic number":
        with gzip.open(images, "wb") as handle:
            handle.write(b"\x00\x00\x0d\x03" + bytes(12))
    elif fault == "count mismatch":
        write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(599, np.uint8))
    elif fault == "wrong image size":
        write_idx(images, np.zeros((600, 32, 32), np.uint8))
    elif fault == "interrupted download":
        # What torchvision leaves when cut off: a partial .gz where it downloads to.
        raw = folder / "MNIST" / "raw"
        write_dataset(raw, gz=False)
        for name in ("t10k-images-idx3-ubyte", "train-images-idx3-ubyte"):
            (raw / name).unlink()
        partial = gzip.compress((raw / "t10k-labels-idx1-ubyte").read_bytes())
        (raw / "train-images-idx3-ubyte.gz").write_bytes(partial[:100])
        (raw / "t10k-images-idx3-ubyte.gz").write_bytes(partial)
        for path in folder.glob("*.gz"):
            path.unlink()


DATA_FAULTS = {
    "missing files": "mnist train files not found: looked for train-images-idx3-ubyte[.gz]",
    "truncated gzip": "train-images-idx3-ubyte.gz cannot be read",
    "wrong magic number": "train-images-idx3-ubyte.gz is not an unsigned-byte IDX file",
    "count mismatch": "holds 600 images but",
    "wrong image size": "holds images of shape (600, 32, 32), expected (N, 28, 28)",
    "interrupted download": "train-images-idx3-ubyte.gz is not the published MNIST file",
}


@pytest.mark.parametrize("fault", DATA_FAULTS)
def test_data_fault_is_named_before_training(
    compose_train, reused_run_dir, idx_root, tmp_path_factory, fault
):
    run_dir, before = reused_run_dir
    data = tmp_path_factory.mktemp("data")
    shutil.copytree(idx_root, data, dirs_exist_ok=True)
    break_data(data, fault)
    with pytest.raises(DataFileError) as info:
        train(compose_train(data_root=data))
    assert DATA_FAULTS[fault] in str(info.value)
    assert snapshot(run_dir) == before


def test_corrupt_checkpoint_to_start_from(compose_train, reused_run_dir, tmp_path_factory):
    run_dir, before = reused_run_dir
    corrupt = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    corrupt.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cannot be read .*truncated or corrupt"):
        train(compose_train([f"ckpt_path={corrupt}"]))
    assert snapshot(run_dir) == before


# ----------------------------------------------------------------- the real command line
def cli_snapshot(run_dir: Path) -> dict[str, str]:
    """As snapshot(), without train.log: Hydra appends each launch's log lines to it."""
    return {name: digest for name, digest in snapshot(run_dir).items() if name != "train.log"}


@pytest.mark.parametrize(
    ("args", "message", "status"),
    [
        # Hydra's own checks, also tested in-process in test_config.py: slow here only for the
        # ~10 s start-up of each process. Hydra reports them itself, with exit status 1.
        pytest.param(
            ["model.latnt_dim=8"],
            "Could not override 'model.latnt_dim'",
            1,
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ["model=transformer"], "Could not find 'model/transformer'", 1, marks=pytest.mark.slow
        ),
        (["model.latent_dim=0"], "model.latent_dim=0 is invalid: it should be greater than 0", 2),
    ],
    ids=["misspelt key", "unknown option", "bad value"],
)
def test_cli_rejects_bad_input_and_keeps_the_run_record(good_run, tmp_path, args, message, status):
    """Through Hydra itself: Hydra would write .hydra/ into the run dir before the task."""
    run_dir = tmp_path / "run"
    shutil.copytree(good_run, run_dir)
    before = cli_snapshot(run_dir)
    result = vae_train([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == status
    assert message in result.stderr
    if status == 2:  # our own check of the config, reported as every user error is
        assert result.stderr.startswith("vae-train: error: Invalid configuration")
    assert "Traceback" not in result.stderr  # the message alone, not buried under a stack
    if "transformer" in args[0]:
        assert "Available options" in result.stderr and "conv" in result.stderr
    assert cli_snapshot(run_dir) == before


@pytest.mark.parametrize(
    ("module", "args", "message"),
    [
        # resume= is expanded before Hydra starts (run_dir.accepts_resume).
        ("vae_lightning.train", ["resume={tmp}/nowhere"], "no such run dir or checkpoint file"),
        (
            "vae_lightning.evaluate",
            ["ckpt_path={tmp}/missing.ckpt", "hydra.run.dir={tmp}/eval"],
            "ckpt_path={tmp}/missing.ckpt: no such file.",
        ),
        (
            "vae_lightning.report",
            ["run_dir={tmp}/missing"],
            "run_dir={tmp}/missing is not a folder. Pass the folder of a finished run",
        ),
    ],
    ids=["vae-train", "vae-eval", "vae-report"],
)
def test_every_cli_reports_bad_input_the_same_way(tmp_path, module, args, message):
    """One paragraph on stderr, named by the program, exit status 2, no traceback."""
    prog = {"train": "vae-train", "evaluate": "vae-eval", "report": "vae-report"}
    prog = prog[module.rsplit(".", 1)[1]]
    result = run_module(module, [arg.format(tmp=tmp_path) for arg in args], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    paragraph = result.stderr.strip().split("\n\n")[-1]  # after any import-time warnings
    assert paragraph.startswith(f"{prog}: error: ") and "\n" not in paragraph
    assert message.format(tmp=tmp_path) in paragraph
