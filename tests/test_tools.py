"""vae-sample, vae-embed and vae-export end to end on a tiny trained run (the session's
``manifold_run``: a 2-D MLP VAE on generated IDX data), and their bad-input paragraphs."""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torch import Tensor, nn

from helpers.paths import CONF_DIR, PROJECT_ROOT
from helpers.runs import output, run_module, train_run
from vae_lightning import export as export_module
from vae_lightning.configs import compose_as_launched
from vae_lightning.data.datamodule import prepare_images
from vae_lightning.embed import embed, posterior_means
from vae_lightning.errors import EXIT_USER_ERROR, report_user_errors
from vae_lightning.export import export, export_model
from vae_lightning.inference import ToolError, load_module
from vae_lightning.lit_module import VAELitModule
from vae_lightning.models.vae import VAE
from vae_lightning.sample import sample, sample_images

TEST_IMAGES = 200  # in the generated test split (helpers.data.write_dataset)
HAS_ONNX = all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime"))


@pytest.fixture(scope="module")
def ckpt(manifold_run) -> Path:
    return manifold_run.dir / "checkpoints" / "last.ckpt"


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def grid_pixels(count: int, size: int = 28, padding: int = 2) -> int:
    """Pixels along one side of a torchvision grid of ``count`` images."""
    return count * (size + padding) + padding


# ------------------------------------------------------------------ the console scripts
@pytest.mark.parametrize("script", ["vae-sample", "vae-embed", "vae-export"])
def test_each_tool_is_a_console_script(script):
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts[script].split(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_vae_sample_writes_the_grid_and_the_decoded_prior_codes(ckpt, tmp_path):
    out = tmp_path / "samples"
    result = run_module(
        "vae_lightning.sample",
        [f"ckpt_path={ckpt}", "num_samples=10", "temperature=0.5", "seed=3", f"out_dir={out}"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, output(result)
    # 10 samples: 4 columns (as square as possible), 3 rows.
    assert png_size(out / "samples.png") == (grid_pixels(4), grid_pixels(3))
    arrays = np.load(out / "samples.npz")
    assert set(arrays.files) == {"codes", "images"}
    # Codes: the N(0, I) draws of seed 3, scaled by the temperature.
    expected = 0.5 * torch.randn(10, 2, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(arrays["codes"], expected.numpy(), rtol=0, atol=1e-7)
    with torch.no_grad():
        images = load_module(ckpt).decode_mean(torch.from_numpy(arrays["codes"]))
    assert arrays["images"].shape == (10, 1, 28, 28)
    np.testing.assert_allclose(arrays["images"], images.numpy(), rtol=0, atol=1e-6)


def test_vae_embed_writes_posterior_means_labels_and_a_projector_run(
    ckpt, manifold_run, idx_root, tmp_path
):
    out = tmp_path / "embed"
    result = run_module(
        "vae_lightning.embed", [f"ckpt_path={ckpt}", "split=test", f"out_dir={out}"], cwd=tmp_path
    )
    assert result.returncode == 0, output(result)
    arrays = np.load(out / "embeddings.npz")
    assert arrays["codes"].shape == arrays["logvars"].shape == (TEST_IMAGES, 2)
    # The labels, read from the IDX file itself (8-byte header).
    with gzip.open(idx_root / "t10k-labels-idx1-ubyte.gz") as file:
        labels = np.frombuffer(file.read()[8:], np.uint8)
    np.testing.assert_array_equal(arrays["labels"], labels)
    assert list(arrays["class_names"]) == [str(digit) for digit in range(10)]
    # The codes: encode_code of the test images as evaluation sees them (fixed binarization).
    data = OmegaConf.load(out / "data.yaml")
    assert data.dataset == "mnist" and Path(data.root) == idx_root
    datamodule = instantiate(data)
    datamodule.setup("test")
    images, _ = datamodule.splits["test"]
    with torch.no_grad():
        mu, logvar = load_module(ckpt).net.encode_code(prepare_images(images, fresh_draw=False))
    np.testing.assert_allclose(arrays["codes"], mu.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(arrays["logvars"], logvar.numpy(), rtol=0, atol=1e-6)
    # The Projector's files: config, metadata with a header row, vectors and the sprite.
    projector = out / "projector"
    assert (projector / "projector_config.pbtxt").is_file()
    (embedding,) = (projector / "00000").iterdir()
    rows = (embedding / "metadata.tsv").read_text().splitlines()
    assert rows[0] == "label\tclass" and len(rows) == TEST_IMAGES + 1
    assert rows[1] == f"{labels[0]}\t{labels[0]}"
    assert len((embedding / "tensors.tsv").read_text().splitlines()) == TEST_IMAGES
    assert png_size(embedding / "sprite.png") == (15 * 28, 15 * 28)  # ceil(sqrt(200)) a side


def test_vae_export_files_load_back_and_match_the_model(ckpt, tmp_path):
    out = tmp_path / "export"
    formats = "[torchscript,onnx]" if HAS_ONNX else "[torchscript]"
    result = run_module(
        "vae_lightning.export",
        [f"ckpt_path={ckpt}", f"formats={formats}", f"out_dir={out}"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, output(result)
    assert "encoder.pt: max abs difference" in result.stdout
    report = json.loads((out / "export_check.json").read_text())
    names = {"encoder.pt", "decoder.pt"} | (
        {"encoder.onnx", "decoder.onnx"} if HAS_ONNX else set()
    )
    assert set(report["files"]) == names
    for check in report["files"].values():
        assert check["passed"] and check["max_abs_difference"] <= 1e-5
    # Loaded back here, on a batch size neither the trace nor the tool's check used.
    model = load_module(ckpt)
    images = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    codes = torch.randn(7, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mu, logvar = model.net.encode_code(images)
        means = model.decode_mean(codes)
        encoder, decoder = torch.jit.load(out / "encoder.pt"), torch.jit.load(out / "decoder.pt")
        got_mu, got_logvar = encoder(images)
        torch.testing.assert_close(got_mu, mu, rtol=0, atol=1e-5)
        torch.testing.assert_close(got_logvar, logvar, rtol=0, atol=1e-5)
        torch.testing.assert_close(decoder(codes), means, rtol=0, atol=1e-5)
    if HAS_ONNX:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out / "decoder.onnx"))
        (got,) = session.run(["mean_image"], {"codes": codes.numpy()})
        np.testing.assert_allclose(got, means.numpy(), rtol=0, atol=1e-5)


def test_a_corrupt_checkpoint_is_one_paragraph_and_exit_status_2(tmp_path):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"not a checkpoint")
    result = run_module("vae_lightning.export", [f"ckpt_path={bad}"], cwd=tmp_path)
    assert result.returncode == EXIT_USER_ERROR, output(result)
    assert result.stderr.startswith(f"vae-export: error: Checkpoint {bad} cannot be read")
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------ bad input, in-process
@pytest.fixture
def run_tool(tmp_path, capsys):
    """Compose a tool's config as launched and run it as its console script does; return
    the exit status and stderr."""

    def _run(name: str, overrides: list[str]) -> tuple[int, str]:
        tool = {"sample": sample, "embed": embed, "export": export}[name]
        cfg = compose_as_launched(
            name, [f"paths.output_dir={tmp_path / 'out'}", f"paths.log_dir={tmp_path}", *overrides]
        )
        with pytest.raises(SystemExit) as exit_info:
            report_user_errors(f"vae-{name}")(tool)(cfg)
        return exit_info.value.code, capsys.readouterr().err

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield _run
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("tool", ["sample", "embed", "export"])
def test_each_tool_says_what_is_wrong_with_its_checkpoint(tool, run_tool, tmp_path):
    status, err = run_tool(tool, [])
    assert status == EXIT_USER_ERROR
    assert err.startswith(f"vae-{tool}: error: vae-{tool} needs a checkpoint: vae-{tool} ckpt")
    status, err = run_tool(tool, [f"ckpt_path={tmp_path / 'none.ckpt'}"])
    assert status == EXIT_USER_ERROR and "none.ckpt does not exist" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("tool", "overrides", "message"),
    [
        ("sample", ["num_samples=0"], "num_samples=0 is invalid: it should be greater than 0"),
        (
            "sample",
            ["temperature=-1"],
            "temperature=-1 is invalid: it should be greater than or equal to 0",
        ),
        ("embed", ["split=training"], "split='training' is invalid: it should be 'train'"),
        ("export", ["formats=[pdf]"], "formats=['pdf'] is invalid"),
    ],
)
def test_bad_settings_are_reported_before_anything_is_written(
    tool, overrides, message, run_tool, ckpt, tmp_path
):
    status, err = run_tool(tool, [f"ckpt_path={ckpt}", *overrides])
    assert status == EXIT_USER_ERROR and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tool", ["sample", "embed", "export"])
def test_an_unwritable_output_directory_is_reported(tool, run_tool, ckpt, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a folder cannot be made under a file (whoever runs the test)
    # TorchScript only: the check of the ONNX packages (missing here?) comes first.
    formats = ["formats=[torchscript]"] if tool == "export" else []
    status, err = run_tool(tool, [f"ckpt_path={ckpt}", f"out_dir={blocker / 'sub'}", *formats])
    assert status == EXIT_USER_ERROR
    assert f"out_dir={blocker / 'sub'} cannot be written" in err and "Traceback" not in err


def test_missing_onnx_packages_are_named_with_the_install_command(run_tool, ckpt, monkeypatch):
    monkeypatch.setattr(export_module, "ONNX_PACKAGES", ("onnx", "no_such_onnx_package"))
    status, err = run_tool("export", [f"ckpt_path={ckpt}"])
    assert status == EXIT_USER_ERROR
    assert "needs the " in err and "no_such_onnx_package" in err
    assert "pip install -e '.[export]'" in err and "formats=[torchscript]" in err


# ------------------------------------------------------------------ other priors, conditional
def tiny_module(latent_dim: int = 3, prior: dict | None = None) -> VAELitModule:
    return VAELitModule(
        net={"_target_": "vae_lightning.models.vae.mlp_vae", "image_shape": [1, 28, 28]},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True},
        latent_dim=latent_dim,
        prior=prior,
    ).eval()


def test_temperature_is_refused_for_a_prior_other_than_the_standard_normal():
    mixture = {"_target_": "vae_lightning.models.priors.MixtureOfGaussians"}
    pl_module = tiny_module(prior=mixture)
    assert sample_images(pl_module, 4, temperature=1.0)["codes"].shape == (4, 3)
    with pytest.raises(ToolError, match="temperature=0.5 is defined for the standard-normal"):
        sample_images(pl_module, 4, temperature=0.5)


class LabelShiftVAE(VAE):
    """A hand-made conditional VAE: each class shifts the code by a learned vector."""

    conditional = True

    def __init__(self, base: VAE, num_classes: int) -> None:
        super().__init__(base.encoder, base.decoder, base.latent_dim)
        self.num_classes = num_classes
        self.shift = nn.Embedding(num_classes, base.latent_dim)

    def encode(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu, logvar = super().encode(x)
        return mu - self.shift(labels), logvar

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return super().decode(z + self.shift(labels))


@pytest.fixture
def conditional_module() -> VAELitModule:
    torch.manual_seed(0)
    pl_module = tiny_module()
    pl_module.net = LabelShiftVAE(pl_module.net, num_classes=3).eval()
    return pl_module


def test_a_conditional_model_decodes_each_code_once_per_class(conditional_module):
    arrays = sample_images(conditional_module, num_samples=4, seed=1)
    assert arrays["images"].shape == (12, 1, 28, 28)
    assert arrays["labels"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    codes = arrays["codes"]
    torch.testing.assert_close(codes[:4], codes[4:8], rtol=0, atol=0)  # a column: one code
    with torch.no_grad():
        expected = conditional_module.decode_mean(codes, arrays["labels"])
    torch.testing.assert_close(arrays["images"], expected, rtol=0, atol=1e-6)
    assert not torch.allclose(arrays["images"][:4], arrays["images"][4:8])  # labels matter


def test_a_conditional_model_is_embedded_with_each_images_label(conditional_module):
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1])
    mu, _ = posterior_means(conditional_module, images, labels, batch_size=2)
    with torch.no_grad():
        expected, _ = conditional_module.net.encode_code(images.float() / 255, labels)
    torch.testing.assert_close(mu, expected, rtol=0, atol=1e-6)


def test_a_conditional_model_exports_with_labels_as_second_input(conditional_module, tmp_path):
    formats = ["torchscript", "onnx"] if HAS_ONNX else ["torchscript"]
    checks = export_model(conditional_module, tmp_path, formats)
    for check in checks.values():
        assert check["inputs"][1] == "labels" and check["passed"], check
    decoder = torch.jit.load(tmp_path / "decoder.pt")
    codes, labels = torch.randn(3, 3), torch.tensor([2, 0, 1])
    with torch.no_grad():
        expected = conditional_module.decode_mean(codes, labels)
        torch.testing.assert_close(decoder(codes, labels), expected, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def cvae_ckpt(tmp_path_factory, idx_root) -> Path:
    """One short epoch of model=cvae (conditioned on the 10 digit labels)."""
    overrides = ["model=cvae", "model.latent_dim=3", "debug=fast", "test=false"]
    overrides += ["~callbacks.progress_bar", "~callbacks.latent_space", "~callbacks.traversals"]
    run = train_run(tmp_path_factory.mktemp("cvae_run"), idx_root, overrides)
    return run.dir / "checkpoints" / "last.ckpt"


def test_vae_sample_of_a_cvae_has_one_row_per_class(cvae_ckpt, tmp_path):
    out = tmp_path / "samples"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        overrides = [f"ckpt_path={cvae_ckpt}", "num_samples=4", f"out_dir={out}"]
        sample(compose_as_launched("sample", [f"paths.log_dir={tmp_path}", *overrides]))
    GlobalHydra.instance().clear()
    assert png_size(out / "samples.png") == (grid_pixels(4), grid_pixels(10))
    arrays = {
        name: torch.from_numpy(value) for name, value in np.load(out / "samples.npz").items()
    }
    assert arrays["labels"].tolist() == [digit for digit in range(10) for _ in range(4)]
    with torch.no_grad():
        expected = load_module(cvae_ckpt).decode_mean(arrays["codes"], arrays["labels"])
    torch.testing.assert_close(arrays["images"], expected, rtol=0, atol=1e-6)


def test_a_cvae_exports_with_labels(cvae_ckpt, tmp_path):
    formats = ["torchscript", "onnx"] if HAS_ONNX else ["torchscript"]
    checks = export_model(load_module(cvae_ckpt), tmp_path, formats)
    assert all(check["passed"] and check["inputs"][1] == "labels" for check in checks.values())
