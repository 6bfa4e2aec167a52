"""A whole training step between fixed buffers, replayed as one CUDA graph.

One step is: zero the gradients, forward pass and loss (under the caller's autocast), backward,
optional gradient clipping, optimizer step. :class:`StaticTrainingStep` runs it from input
buffers to output tensors whose storage never moves, so that on a CUDA device it can be
captured once in a ``torch.cuda.CUDAGraph`` and then replayed: one launch for the hundreds of
kernels of a step, with no Python between them. On any device it can also run eagerly, op by
op (``capture=False``): the same code path, used by the CPU tests and to debug a graphed run.

Why a hand-made CUDA graph and not ``torch.compile(mode="reduce-overhead")``: compiling the
step would trace the optimizer and autograd with Dynamo/AOTAutograd and regenerate their
kernels (fused, re-ordered), so its weights are not those of the eager step, and a graph break
anywhere (a likelihood or flow Dynamo cannot trace) silently falls back to eager pieces. A
captured graph replays exactly the kernels the eager step launches, in the same order with
the same inputs: the same numbers as the eager step with the same optimizer settings, and a
failure shows at capture, once, with a clear message. It has three requirements, met here:

- **No host syncs or data-dependent Python in the step.** Adam/AdamW need
  ``capturable=True`` (their step counter and bias corrections stay on the device):
  :func:`make_capturable`. The KL weight and the learning rate are constants baked into the
  graph, hence the refusals of :func:`static_step_problem`.
- **Warm-up before capture.** Lazy initialisations (cuBLAS handles, cuDNN's algorithm search,
  the optimizer's state) must not happen inside the capture. The first ``warmup_steps``
  steps of each input shape run eagerly on a side stream, as real training steps, so no work
  is wasted and nothing has to be rolled back; the next one is captured and replayed.
- **Randomness.** The reparameterisation noise comes from torch's default CUDA generator,
  which PyTorch registers with every capture: each replay draws fresh numbers and advances the
  generator's offset by what the step consumed, exactly as the eager step does, so
  ``torch.cuda.get_rng_state`` (saved in checkpoints for exact resume, callbacks/resume.py) is
  the same after a replayed step as after an eager one.

A last partial batch has another shape: it gets its own warm-up and its own graph.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vae_lightning.errors import ConfigError

# forward(images, labels) -> (loss, values to report): the loss is back-propagated, the values
# (detached) are what the step returns.
ForwardFn = Callable[[Tensor, Tensor | None], tuple[Tensor, Mapping[str, Tensor]]]

# The optimizers whose step can be captured (capturable=True) and that the tests cover.
CAPTURABLE_OPTIMIZERS = ("torch.optim.Adam", "torch.optim.AdamW")
# Trainer precisions the step reproduces: autocast is read from the caller's context.
SUPPORTED_PRECISIONS = ("32-true", "32", "bf16-mixed")
MODES = ("automatic", "static_eager", "cuda_graph")


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    images: Tensor
    labels: Tensor | None
    values: Mapping[str, Tensor]


class StaticTrainingStep:
    """Runs ``forward``'s loss through backward, ``clip`` and ``optimizer.step()``.

    Args:
        forward: the loss and the values to report, from images and labels (None for an
            unconditional model).
        optimizer: the torch optimizer of the parameters ``forward`` uses.
        clip: gradient clipping between backward and the optimizer step, or None.
        capture: capture the step in a CUDA graph once an input shape has run
            ``warmup_steps`` times, and replay it from then on (CUDA only).
        warmup_steps: eager steps per input shape before its capture (PyTorch's recipe uses
            3 for a single device).
    """

    def __init__(
        self,
        forward: ForwardFn,
        optimizer: torch.optim.Optimizer,
        clip: Callable[[], None] | None = None,
        capture: bool = False,
        warmup_steps: int = 3,
    ) -> None:
        self.forward, self.optimizer, self.clip = forward, optimizer, clip
        self.capture, self.warmup_steps = capture, warmup_steps
        self._graphs: dict[tuple, _Captured] = {}
        self._eager_runs: Counter[tuple] = Counter()
        self._side_stream: torch.cuda.Stream | None = None

    @property
    def captured_shapes(self) -> list[tuple]:
        """The input shapes replayed from a graph (for tests and the benchmark)."""
        return list(self._graphs)

    def __call__(self, images: Tensor, labels: Tensor | None = None) -> Mapping[str, Tensor]:
        """One optimizer step on this batch; returns the step's reported values.

        Graphed, these are the graph's output tensors, overwritten by the next replay: copy
        them (``clone``) to keep them past the next step.
        """
        key = (tuple(images.shape), None if labels is None else tuple(labels.shape))
        captured = self._graphs.get(key)
        if captured is not None:
            captured.images.copy_(images)
            if labels is not None:
                captured.labels.copy_(labels)
            captured.graph.replay()
            return captured.values
        if not self.capture:
            return self._step(images, labels)
        if self._eager_runs[key] < self.warmup_steps:
            self._eager_runs[key] += 1
            with self._on_side_stream():
                return self._step(images, labels)
        return self._capture(key, images, labels).values

    def _step(self, images: Tensor, labels: Tensor | None) -> Mapping[str, Tensor]:
        """The step itself, as Lightning's automatic optimization runs it: forward under
        the caller's autocast, backward and optimizer outside it."""
        device_type = images.device.type
        # set_to_none: backward then assigns fresh gradients, as after Lightning's zero_grad;
        # during capture they are allocated in the graph's memory pool, which replays reuse.
        self.optimizer.zero_grad(set_to_none=True)
        with _caller_autocast(device_type):
            loss, values = self.forward(images, labels)
        with torch.autocast(device_type, enabled=False):
            loss.backward()
            if self.clip is not None:
                self.clip()
            self.optimizer.step()
        return {name: value.detach() for name, value in values.items()}

    @contextlib.contextmanager
    def _on_side_stream(self) -> Iterator[None]:
        """PyTorch's warm-up recipe: eager steps before a capture run on a side stream."""
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream()
        main = torch.cuda.current_stream()
        self._side_stream.wait_stream(main)
        with torch.cuda.stream(self._side_stream):
            yield
        main.wait_stream(self._side_stream)

    def _capture(self, key: tuple, images: Tensor, labels: Tensor | None) -> _Captured:
        static_images = images.clone()
        static_labels = None if labels is None else labels.clone()
        graph = torch.cuda.CUDAGraph()
        # Capture records the kernels without running them; the replay below is this step.
        try:
            with torch.cuda.graph(graph):
                values = self._step(static_images, static_labels)
        except RuntimeError as err:
            raise StepCaptureError(_capture_advice(err)) from err
        captured = _Captured(graph, static_images, static_labels, values)
        self._graphs[key] = captured
        graph.replay()
        return captured


class StepCaptureError(ConfigError):
    """The step could not be captured in a CUDA graph (some op syncs with the host): a
    setting this mode cannot train, reported like the others (one paragraph, exit 2)."""


def _capture_advice(err: RuntimeError) -> str:
    return (
        f"The training step could not be captured in a CUDA graph ({str(err).splitlines()[0]}). "
        "Some part of this model, likelihood or objective synchronises with the host or "
        "allocates outside the graph. Train it with model.train_step=automatic (the default), "
        "or run model.train_step=static_eager to find the op in an eager traceback."
    )


@contextlib.contextmanager
def _caller_autocast(device_type: str) -> Iterator[None]:
    """The caller's autocast (Lightning's bf16-mixed), without its weight-cast cache.

    The cache would keep bf16 copies of the weights from the warm-up steps, so the capture
    would record no cast and every replay would use stale weights; without it each step casts
    the current weights (the same numbers: the cache only saves repeated casts in one step).
    """
    if not torch.is_autocast_enabled(device_type):
        yield
        return
    dtype = torch.get_autocast_dtype(device_type)
    with torch.autocast(device_type, dtype=dtype, cache_enabled=False):
        yield


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Switch Adam/AdamW to ``capturable=True``, moving their step counters to the device.

    Also after a checkpoint was loaded (Lightning restores the optimizer before the first
    step), whatever the checkpoint's own setting. Capturable Adam computes its bias
    corrections on the device in float32 (the other path in float64 on the host), which
    changes the weights in the last bits: compare a graphed run with an automatic one that
    sets ``optimizer.capturable=true`` too.
    """
    for group in optimizer.param_groups:
        group["capturable"] = True
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            step = state.get("step")
            if isinstance(step, Tensor) and step.device != param.device:
                state["step"] = step.to(param.device, torch.float32)


def optimizer_path(optimizer_config: Mapping[str, object]) -> str:
    """The ``_target_`` of an optimizer config, as written (torch.optim.Adam)."""
    return str(optimizer_config.get("_target_", ""))


def static_step_problem(
    mode: str,
    *,
    device_type: str,
    world_size: int,
    precision: str,
    accumulate_grad_batches: int,
    optimizer_target: str,
    lr_scheduled: bool,
    objective_supported: bool,
    kl_schedule_active: bool,
    compiled: bool,
    optimizer_step_hooks: Sequence[str] = (),
) -> str | None:
    """Why ``model.train_step=<mode>`` cannot train this setting, or None when it can.

    One paragraph saying what to change. Every rule comes from what the step bakes in or
    skips: the graph is one device's, its constants (learning rate, KL weight) are fixed at
    capture, and the optimizer step is inside it, so no hook runs before it
    (``optimizer_step_hooks`` names the callbacks that have such a hook).
    """
    if mode == "automatic":
        return None
    prefix = f"model.train_step={mode} runs the whole training step"
    prefix += " as one CUDA graph" if mode == "cuda_graph" else " from fixed buffers"
    fix = "Use model.train_step=automatic (the default) for this setting"
    if mode == "cuda_graph" and device_type != "cuda":
        return (
            f"{prefix}, which needs a CUDA GPU, but this run trains on {device_type}. Train "
            "on one GPU (trainer=gpu), or use model.train_step=automatic."
        )
    reasons = []
    if world_size > 1:
        reasons.append(
            f"{world_size} processes (DDP: its gradient all-reduce is not captured; use "
            "trainer.devices=1)"
        )
    if precision not in SUPPORTED_PRECISIONS:
        reasons.append(
            f"trainer.precision={precision} (supported: {', '.join(SUPPORTED_PRECISIONS)}; "
            "16-mixed's gradient scaler reads its overflow check on the host)"
        )
    if accumulate_grad_batches != 1:
        reasons.append(f"trainer.accumulate_grad_batches={accumulate_grad_batches} (use 1)")
    if optimizer_target not in CAPTURABLE_OPTIMIZERS:
        reasons.append(f"optimizer {optimizer_target} (use optimizer=adam or optimizer=adamw)")
    if lr_scheduled:
        reasons.append("a learning-rate schedule (model.lr_stage_growth=0)")
    if not objective_supported:
        reasons.append("this objective (supported: objective=elbo, objective=iwae)")
    if kl_schedule_active:
        reasons.append(
            "a KL warm-up or cyclical schedule (objective.kl_warmup_steps=0 "
            "objective.cycle_steps=0): the KL weight is a constant of the step"
        )
    if compiled and mode == "cuda_graph":
        reasons.append("model.compile=true (the graph already removes the launch overhead)")
    if optimizer_step_hooks:
        names = ", ".join(optimizer_step_hooks)
        drop = (
            " (the NaN guard: drop it with ~callbacks.nan_guard)"
            if ("NonFiniteLossGuard" in optimizer_step_hooks)
            else ""
        )
        reasons.append(
            f"callbacks that act between backward and the optimizer step, which runs inside "
            f"the step: {names}{drop}"
        )
    if not reasons:
        return None
    return f"{prefix}, which does not support {'; '.join(reasons)}. {fix}, or change these."
