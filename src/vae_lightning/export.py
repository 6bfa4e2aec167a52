"""Entry point: ``vae-export ckpt_path=<run dir>/checkpoints/<name>.ckpt [formats=[...]]``.

Exports what a deployment needs, each with a dynamic batch size:

- the encoder, images (B, C, H, W) in [0, 1] -> (mu, logvar), each (B, D): the Gaussian of
  :meth:`VAE.encode_code`;
- the decoder, codes (B, D) -> E[x|z] (B, C, H, W): :meth:`VAELitModule.decode_mean`, the
  likelihood's mean applied (pixel probabilities for Bernoulli).

A conditional model's encoder and decoder take the class labels (B,) (int64) as a second
input. Each file is loaded back (``torch.jit.load``; onnxruntime when installed) and run on a
batch of another size than the one it was traced with; its largest absolute difference from
the model is printed and written to ``export_check.json``, and must be below 1e-5.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from vae_lightning.config_checks import config_error
from vae_lightning.configs import CONFIG_PATH
from vae_lightning.errors import report_user_errors
from vae_lightning.inference import ToolError, checked_checkpoint, load_module, output_dir
from vae_lightning.lit_module import VAELitModule
from vae_lightning.signatures import argument_problems
from vae_lightning.startup import freeze_imported_objects

Format = Literal["torchscript", "onnx"]
CHECK_FILE = "export_check.json"
ATOL = 1e-5
TRACE_BATCH = 2  # traced with this many rows ...
CHECK_BATCH = 5  # ... and checked with another number, which a fixed batch size would fail
ONNX_PACKAGES = ("onnx", "onnxscript")  # torch.onnx.export's exporter needs both


class ExportedEncoder(nn.Module):
    """images (, labels) -> (mu, logvar) of the code the decoder takes."""

    def __init__(self, pl_module: VAELitModule) -> None:
        super().__init__()
        self.net = pl_module.net

    def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.net.encode_code(x, labels)


class ExportedDecoder(nn.Module):
    """codes (, labels) -> the mean image E[x|z] under the model's likelihood: what
    :meth:`VAELitModule.decode_mean` computes, from its parts, because tracing the Lightning
    module itself reads its ``trainer`` property, which raises outside a Trainer."""

    def __init__(self, pl_module: VAELitModule) -> None:
        super().__init__()
        self.net = pl_module.net
        self.likelihood = pl_module.likelihood

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.likelihood.mean(self.net.decode_code(z, labels))


def example_inputs(pl_module: VAELitModule, batch: int, seed: int) -> dict[str, tuple]:
    """Seeded inputs of each part: images in [0, 1] for the encoder, prior codes for the
    decoder, and class labels for a conditional model."""
    generator = torch.Generator().manual_seed(seed)
    image_shape = tuple(pl_module.hparams.net["image_shape"])
    images = torch.rand(batch, *image_shape, generator=generator)
    codes = pl_module.net.sample_prior(batch, generator).float()
    if not pl_module.net.conditional:
        return {"encoder": (images,), "decoder": (codes,)}
    labels = torch.randint(pl_module.net.num_classes, (batch,), generator=generator)
    return {"encoder": (images, labels), "decoder": (codes, labels)}


def input_names(part: str, conditional: bool) -> list[str]:
    first = "images" if part == "encoder" else "codes"
    return [first, "labels"] if conditional else [first]


def output_names(part: str) -> list[str]:
    return ["mu", "logvar"] if part == "encoder" else ["mean_image"]


def as_tuple(outputs: Any) -> tuple[Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, list | tuple) else (outputs,)


def max_abs_difference(got: tuple, expected: tuple[Tensor, ...]) -> float:
    return max(
        float((torch.as_tensor(a).float() - b.float()).abs().max())
        for a, b in zip(got, expected, strict=True)
    )


def export_torchscript(module: nn.Module, inputs: tuple, path: Path) -> Callable[..., tuple]:
    """Trace ``module`` to ``path``; return the loaded file as a function of the inputs."""
    # torch 2.14 deprecates TorchScript in favour of torch.export, but a TorchScript file is
    # still what libtorch (C++) and older runtimes load; the warnings would only worry users.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*torch\.jit.* is deprecated", FutureWarning)
        traced = torch.jit.trace(module, inputs, check_trace=False)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path))
    return lambda *args: as_tuple(loaded(*args))


def export_onnx(
    module: nn.Module, inputs: tuple, path: Path, names: list[str], outputs: list[str]
) -> Callable[..., tuple] | None:
    """Export ``module`` to ``path`` with a dynamic batch; return an onnxruntime function of
    the inputs, or None when onnxruntime is not installed (the file is then not checked)."""
    batch = torch.export.Dim("batch")
    # Hydra sets the root logger to INFO; the exporter's optimisation passes log every step.
    for name in ("onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # Encoder and decoder inputs share the batch axis; the exporter says it keeps one name.
        warnings.filterwarnings("ignore", r"# The axis name: batch will not be used", UserWarning)
        torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=names,
            output_names=outputs,
            dynamic_shapes=tuple({0: batch} for _ in inputs),
            dynamo=True,
            external_data=False,  # one self-contained file
            verbose=False,
        )
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda *args: tuple(
        session.run(outputs, {name: arg.numpy() for name, arg in zip(names, args, strict=True)})
    )


def missing_onnx_packages() -> list[str]:
    return [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]


def check_export_settings(formats: list[Format], seed: int = 0) -> None:
    """The signature ``formats`` and ``seed`` are checked against (see :func:`export`)."""


@torch.no_grad()
def export_model(
    pl_module: VAELitModule, folder: Path, formats: list[Format], seed: int = 0
) -> dict[str, Any]:
    """Write each part in each format into ``folder``; the check of each file, by file name."""
    conditional = pl_module.net.conditional
    parts = {"encoder": ExportedEncoder(pl_module), "decoder": ExportedDecoder(pl_module)}
    traced_with = example_inputs(pl_module, TRACE_BATCH, seed)
    checked_on = example_inputs(pl_module, CHECK_BATCH, seed + 1)
    checks: dict[str, Any] = {}
    for part, module in parts.items():
        module.eval()
        expected = as_tuple(module(*checked_on[part]))
        for fmt in formats:
            if fmt == "torchscript":
                path = folder / f"{part}.pt"
                run = export_torchscript(module, traced_with[part], path)
            else:
                path = folder / f"{part}.onnx"
                run = export_onnx(
                    module,
                    traced_with[part],
                    path,
                    input_names(part, conditional),
                    output_names(part),
                )
            check: dict[str, Any] = {
                "format": fmt,
                "inputs": input_names(part, conditional),
                "outputs": output_names(part),
                "batch": CHECK_BATCH,
            }
            if run is None:
                check["checked"] = "no: onnxruntime is not installed"
            else:
                difference = max_abs_difference(run(*checked_on[part]), expected)
                check.update(max_abs_difference=difference, atol=ATOL, passed=difference <= ATOL)
            checks[path.name] = check
    return checks


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path`` as configured; write and return the checks."""
    ckpt_path = checked_checkpoint(cfg.get("ckpt_path"), "vae-export")
    settings = {"formats": OmegaConf.to_container(cfg.formats), "seed": cfg.seed}
    if problems := argument_problems(check_export_settings, settings):
        raise config_error(
            [f"{p.parameter}={p.value!r} is invalid: {p.reason}." for p in problems],
            "Fix the override(s), e.g. vae-export ckpt_path=... formats=[torchscript,onnx].",
        )
    formats = list(dict.fromkeys(settings["formats"]))
    if "onnx" in formats and (missing := missing_onnx_packages()):
        raise ToolError(
            f"ONNX export needs the {' and '.join(missing)} package(s), which are not "
            "installed: pip install -e '.[export]' in the project (onnx, onnxscript and "
            "onnxruntime), "
            "or export TorchScript only with formats=[torchscript]."
        )
    folder = output_dir(cfg)
    pl_module = load_module(ckpt_path)
    checks = export_model(pl_module, folder, formats, cfg.seed)
    report = {"ckpt_path": str(ckpt_path.resolve()), "files": checks}
    (folder / CHECK_FILE).write_text(json.dumps(report, indent=2) + "\n")
    for name, check in checks.items():
        if "max_abs_difference" in check:
            verdict = "ok" if check["passed"] else f"FAILED (atol {ATOL:g})"
            print(
                f"{folder / name}: max abs difference {check['max_abs_difference']:.3g} {verdict}"
            )
        else:
            print(f"{folder / name}: {check['checked']}")
    failed = [name for name, check in checks.items() if check.get("passed") is False]
    if failed:
        raise RuntimeError(
            f"{', '.join(failed)} differ from the model by more than {ATOL:g}: "
            f"see {folder / CHECK_FILE}"
        )
    return report


@freeze_imported_objects  # the imports' objects: not scanned by the GC, not freed at exit
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="export")
@report_user_errors("vae-export")  # bad input: its paragraph on stderr, exit status 2
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
