"""model.train_step: the whole training step from fixed buffers, graphed on a GPU.

On a CPU the step runs eagerly (train_step=static_eager), through the same code as the CUDA
graph; it must give the very numbers of Lightning's automatic optimization: weights bit for
bit, the same train/* values at the same steps, the same global_step, and exact resume.
The graphed runs need a CUDA GPU and skip without one.
"""

from __future__ import annotations

import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import initialize_config_dir

from helpers.events import written_scalars
from helpers.paths import CONF_DIR
from helpers.runs import compose_config
from vae_lightning.errors import ConfigError
from vae_lightning.lit_module import VAELitModule
from vae_lightning.static_step import StaticTrainingStep, make_capturable, static_step_problem
from vae_lightning.train import train

# 500 training images in batches of 48: 10 full batches and one of 20, 11 steps per epoch.
STEPS_PER_EPOCH = 11
RUN = [
    "data.batch_size=48",
    "model.latent_dim=4",
    "model.net.hidden_dims=[32]",
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=3",
    "~callbacks.progress_bar",
    "~callbacks.images",
    "~callbacks.traversals",
    "~callbacks.interpolations",
    "~callbacks.latent_space",
    "~callbacks.nan_guard",  # acts before the optimizer step: refused by the static step
    "test=false",
    "report=false",
    "hparams_tab=null",
]
SETTINGS = {
    # Clipping at a norm the gradients exceed, so that it acts on every step.
    "fp32, clip norm": ["trainer.gradient_clip_val=5"],
    "bf16-mixed, clip value": [
        "trainer.precision=bf16-mixed",
        "trainer.gradient_clip_val=0.01",
        "+trainer.gradient_clip_algorithm=value",
    ],
    "iwae, adamw": ["objective=iwae", "objective.k=3", "optimizer=adamw"],
}
TAGS = ("train/loss", "train/rec", "train/kl", "train/elbo")


def run(run_dir: Path, idx_root: Path, overrides: list[str], base: list[str] = RUN) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        train(compose_config(run_dir, idx_root, [*base, *overrides]))
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every write of the train/* tags, by step (a step written twice shows twice; the
    event files of a run and of its resumed part may be read in either order)."""
    return {tag: sorted(written_scalars(run_dir / "tensorboard", tag)) for tag in TAGS}


class CapturedShapes(L.Callback):
    """Records which batch shapes the graphed step replays from a graph (added with
    ``+callbacks.shapes._target_=test_static_step.CapturedShapes``)."""

    seen: list[list[tuple]] = []

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        CapturedShapes.seen.append(pl_module._static_step.captured_shapes)


def assert_same_training(run_dir: Path, checkpoint: dict, ref_dir: Path, ref: dict) -> None:
    assert checkpoint["global_step"] == ref["global_step"]
    assert checkpoint["loops"] == ref["loops"]  # progress counters, loader position
    weights, expected = checkpoint["state_dict"], ref["state_dict"]
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[name], expected[name]) for name in expected)
    moments, expected_moments = (c["optimizer_states"][0]["state"] for c in (checkpoint, ref))
    for index, state in expected_moments.items():
        assert all(torch.equal(moments[index][key], value) for key, value in state.items())
    assert curves(run_dir) == curves(ref_dir)


@pytest.fixture(scope="module")
def automatic_runs(tmp_path_factory, idx_root) -> dict[str, tuple[Path, dict]]:
    """The reference: Lightning's automatic optimization, each setting trained once."""
    runs = {}
    for name, overrides in SETTINGS.items():
        run_dir = tmp_path_factory.mktemp("automatic")
        runs[name] = run_dir, run(run_dir, idx_root, overrides)
    return runs


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_static_eager_step_equals_automatic_optimization(
    tmp_path, idx_root, automatic_runs, setting
):
    record = "+callbacks.shapes._target_=test_static_step.CapturedShapes"
    overrides = [*SETTINGS[setting], "model.train_step=static_eager", record]
    checkpoint = run(tmp_path, idx_root, overrides)
    assert CapturedShapes.seen[-1] == []  # eager: nothing captured
    ref_dir, ref = automatic_runs[setting]
    assert ref["global_step"] == 2 * STEPS_PER_EPOCH
    # Written every log_every_n_steps optimizer steps, at the same steps as automatic.
    assert [step for step, _ in curves(tmp_path)["train/loss"]] == [2, 5, 8, 11, 14, 17, 20]
    assert_same_training(tmp_path, checkpoint, ref_dir, ref)


def test_static_eager_resume_is_exact(tmp_path, idx_root, automatic_runs):
    """Interrupted mid-epoch (Ctrl-C after step 14), resumed from last.ckpt: the result of
    the uninterrupted automatic run, weights, optimizer state and curves."""
    overrides = [*SETTINGS["fp32, clip norm"], "model.train_step=static_eager"]
    interrupt = [
        "+callbacks.signal._target_=fault_injection.SignalAtStep",
        "+callbacks.signal.step=14",
        f"+callbacks.signal.signum={int(signal.SIGINT)}",
        "+callbacks.signal.during=train",
    ]
    with pytest.raises(SystemExit):
        run(tmp_path, idx_root, [*overrides, *interrupt])
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 14
    checkpoint = run(tmp_path, idx_root, [*overrides, f"ckpt_path={last}"])
    assert_same_training(tmp_path, checkpoint, *automatic_runs["fp32, clip norm"])


def test_a_static_step_checkpoint_resumes_in_automatic_mode(tmp_path, idx_root, automatic_runs):
    """The checkpoints are those of automatic optimization: either mode continues them."""
    overrides = SETTINGS["fp32, clip norm"]
    run(tmp_path, idx_root, [*overrides, "model.train_step=static_eager", "trainer.max_epochs=1"])
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = run(tmp_path, idx_root, [*overrides, f"ckpt_path={last}"])
    assert_same_training(tmp_path, checkpoint, *automatic_runs["fp32, clip norm"])


# ------------------------------------------------------------------------ refusals
def test_cuda_graph_step_on_a_cpu_is_refused_before_training(tmp_path, idx_root):
    with pytest.raises(ConfigError, match="needs a CUDA GPU") as info:
        run(tmp_path, idx_root, ["trainer=cpu", "model.train_step=cuda_graph"])
    assert "model.train_step=automatic" in str(info.value)
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_the_nan_guard_is_refused_with_the_override_that_drops_it(tmp_path, idx_root):
    with_guard = [override for override in RUN if override != "~callbacks.nan_guard"]
    with pytest.raises(ConfigError, match=r"NonFiniteLossGuard.*~callbacks\.nan_guard"):
        run(tmp_path, idx_root, ["model.train_step=static_eager"], base=with_guard)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("+model.lr_stage_growth=3", "model.lr_stage_growth=0"),
        ("optimizer=sgd", "optimizer=adam"),
        ("objective.kl_warmup_steps=10", "objective.kl_warmup_steps=0"),
        ("+trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches=2"),
    ],
)
def test_unsupported_settings_are_refused_before_the_first_step(
    tmp_path, idx_root, override, named
):
    with pytest.raises(ConfigError, match="model.train_step=automatic") as info:
        run(tmp_path, idx_root, ["model.train_step=static_eager", override])
    assert named in str(info.value)
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()


BASE = dict(
    device_type="cuda",
    world_size=1,
    precision="bf16-mixed",
    accumulate_grad_batches=1,
    optimizer_target="torch.optim.Adam",
    lr_scheduled=False,
    objective_supported=True,
    kl_schedule_active=False,
    compiled=False,
)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"world_size": 2}, "trainer.devices=1"),
        ({"precision": "16-mixed"}, "trainer.precision=16-mixed"),
        ({"accumulate_grad_batches": 4}, "trainer.accumulate_grad_batches=4"),
        ({"optimizer_target": "torch.optim.SGD"}, "optimizer=adam"),
        ({"lr_scheduled": True}, "model.lr_stage_growth=0"),
        ({"objective_supported": False}, "objective=elbo"),
        ({"kl_schedule_active": True}, "objective.kl_warmup_steps=0"),
        ({"compiled": True}, "model.compile=true"),
        ({"optimizer_step_hooks": ["NonFiniteLossGuard"]}, "~callbacks.nan_guard"),
    ],
)
def test_each_unsupported_setting_is_named_with_its_fix(change, named):
    assert static_step_problem("cuda_graph", **BASE) is None
    problem = static_step_problem("cuda_graph", **{**BASE, **change})
    assert named in problem and "model.train_step=automatic" in problem
    assert "\n" not in problem  # one paragraph


def test_automatic_mode_is_never_refused():
    assert (
        static_step_problem("automatic", **{**BASE, "device_type": "cpu", "world_size": 8}) is None
    )


# ------------------------------------------------------------------------ the step itself
def test_static_step_is_one_plain_optimizer_step():
    """Against a hand-written step: zero_grad, loss, backward, clip, Adam."""
    torch.manual_seed(0)
    net, reference = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    reference.load_state_dict(net.state_dict())
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    ref_optimizer = torch.optim.Adam(reference.parameters(), lr=0.1)

    def forward(images, labels):
        loss = net(images).square().sum(1).mean()
        return loss, {"train/loss": loss}

    def clip():
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)

    step = StaticTrainingStep(forward, optimizer, clip=clip)
    for _ in range(3):
        images = torch.randn(8, 4)
        values = step(images)
        ref_optimizer.zero_grad()
        loss = reference(images).square().sum(1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
        ref_optimizer.step()
        assert torch.equal(values["train/loss"], loss.detach())
        assert not values["train/loss"].requires_grad
    assert all(map(torch.equal, net.parameters(), reference.parameters()))
    assert step.captured_shapes == []  # eager: nothing captured


def test_a_graphed_runs_checkpoint_stores_adam_as_configured():
    """cuda_graph makes Adam capturable (step counters on the GPU); its checkpoints say
    capturable=False with the counters on the host, as an automatic run writes them, and the
    live optimizer state, which the graph reads, is left as it is."""
    module = VAELitModule(
        net={"_target_": "vae_lightning.models.mlp_vae", "image_shape": [1, 28, 28]},
        optimizer={"_target_": "torch.optim.Adam", "lr": 1e-3},
        latent_dim=2,
        train_step="cuda_graph",
    )
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    module.net(torch.rand(3, 1, 28, 28)).mu.sum().backward()
    optimizer.step()
    make_capturable(optimizer)  # as the graphed step does (on a GPU the counters move there)
    live_steps = [state["step"] for state in optimizer.state.values()]
    checkpoint = {"optimizer_states": [optimizer.state_dict()]}
    module.on_save_checkpoint(checkpoint)
    saved = checkpoint["optimizer_states"][0]
    assert all(group["capturable"] is False for group in saved["param_groups"])
    assert all(group["capturable"] is True for group in optimizer.param_groups)
    now = [state["step"] for state in optimizer.state.values()]
    assert all(a is b for a, b in zip(now, live_steps, strict=True))  # the graph's, untouched
    live_states = list(optimizer.state.values())  # new dicts in the checkpoint, not these
    assert not any(
        saved_state is live for saved_state in saved["state"].values() for live in live_states
    )
    assert all(state["step"].device.type == "cpu" for state in saved["state"].values())


# ------------------------------------------------------------------------ on a GPU
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the CUDA-graphed step needs a CUDA GPU"
)
# One GPU, fp32, no cuDNN autotuning: runs that must agree bit for bit. Capturable Adam in
# both modes: the graph needs it, and it rounds its bias corrections unlike the default.
GPU = [
    "trainer=gpu",
    "trainer.precision=32-true",
    "trainer.benchmark=false",
    "+optimizer.capturable=true",
    *SETTINGS["fp32, clip norm"],
]


@needs_cuda
def test_cuda_graph_step_equals_automatic_optimization_on_a_gpu(tmp_path, idx_root):
    # 4 epochs: the last partial batch runs 3 times eagerly, then from its own graph.
    more = [*GPU, "trainer.max_epochs=4"]
    ref = run(tmp_path / "automatic", idx_root, more)
    record = ["+callbacks.shapes._target_=test_static_step.CapturedShapes"]
    graphed = run(tmp_path / "graphed", idx_root, [*more, *record, "model.train_step=cuda_graph"])
    assert graphed["global_step"] == 4 * STEPS_PER_EPOCH
    full, last = ((48, 1, 28, 28), None), ((20, 1, 28, 28), None)
    assert CapturedShapes.seen[-1] == [full, last]  # replayed, not silently eager
    assert_same_training(tmp_path / "graphed", graphed, tmp_path / "automatic", ref)


@needs_cuda
def test_cuda_graph_step_resume_is_exact(tmp_path, idx_root):
    overrides = [*GPU, "model.train_step=cuda_graph"]
    ref = run(tmp_path / "whole", idx_root, overrides)
    halves = tmp_path / "halves"
    run(halves, idx_root, [*overrides, "trainer.max_epochs=1"])
    last = halves / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    # Written as an automatic run writes it: Adam's capturable flag as configured (true here).
    assert saved["optimizer_states"][0]["param_groups"][0]["capturable"] is True
    resumed = run(halves, idx_root, [*overrides, f"ckpt_path={last}"])
    assert_same_training(halves, resumed, tmp_path / "whole", ref)


@needs_cuda
def test_cuda_graph_checkpoint_resumes_without_capturable_adam(tmp_path, idx_root):
    """Without optimizer.capturable the graphed run still makes Adam capturable, but its
    checkpoints say capturable=False with host step counters, like an automatic run's."""
    overrides = ["trainer=gpu", "model.train_step=cuda_graph", "trainer.max_epochs=1"]
    run(tmp_path, idx_root, overrides)
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    state = saved["optimizer_states"][0]
    assert state["param_groups"][0]["capturable"] is False
    assert all(values["step"].device.type == "cpu" for values in state["state"].values())
    last = tmp_path / "checkpoints" / "last.ckpt"
    resumed = run(tmp_path, idx_root, ["trainer=gpu", "trainer.max_epochs=2", f"ckpt_path={last}"])
    assert resumed["global_step"] == 2 * STEPS_PER_EPOCH
