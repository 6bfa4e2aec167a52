"""Reading back what a run wrote to TensorBoard, through TensorBoard's own readers.

Two views. What a run *logged*, as vae-report reads it (``report.read_events``): every scalar
series merged over the run's event folders, one value per step, and the last image of each
tag. And what was *written*, event by event, in one folder (TensorBoard's EventAccumulator):
for tests whose point is how often something was written (each step once, an image every
epoch, one writer under DDP) or that need what the report does not read (histograms).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from PIL import Image
from tensorboard import context as tb_context
from tensorboard.backend.event_processing import (
    data_provider,
    event_accumulator,
    plugin_event_multiplexer,
)
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups
from tensorboard.plugins.projector.projector_config_pb2 import EmbeddingInfo, ProjectorConfig

from vae_lightning.report import read_events
from vae_lightning.run_layout import EVENT_GLOB


# ------------------------------------------------------------ what a run logged (merged)
def scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every scalar tag of the run under ``run_dir`` -> its values, in step order."""
    return {tag: values for tag, (_, values) in read_events(run_dir).scalars.items()}


def scalar_series(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of one scalar tag, in step order; [] if it was never logged."""
    steps, values = read_events(run_dir).scalars.get(tag, ([], []))
    return list(zip(steps, values, strict=True))


def image_tags(run_dir: Path) -> set[str]:
    return set(read_events(run_dir).images)


def last_image(run_dir: Path, tag: str) -> np.ndarray:
    """The last image logged under ``tag`` as an (H, W) uint8 array: the first channel (the
    grids are grey, so one channel holds them)."""
    _, png = read_events(run_dir).images[tag]
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[..., 0]


def last_rgb_image(run_dir: Path, tag: str) -> np.ndarray:
    """The last image logged under ``tag`` as an (H, W, 3) uint8 array, as stored (colour
    grids keep their three channels; grey ones are stored with three equal channels)."""
    _, png = read_events(run_dir).images[tag]
    image = Image.open(io.BytesIO(png))
    assert image.mode == "RGB", f"{tag} is stored as {image.mode}, not RGB"
    return np.asarray(image)


# ------------------------------------------------- what was written, event by event
def event_folder(log_dir: Path) -> Path:
    """The folder that holds the event files: ``log_dir`` itself, or its one TensorBoard run
    (``tensorboard/<the run's overrides>/``)."""
    if any(log_dir.glob(EVENT_GLOB)):
        return log_dir
    (folder,) = {path.parent for path in log_dir.glob(f"*/{EVENT_GLOB}")}
    return folder


def _written(log_dir: Path) -> event_accumulator.EventAccumulator:
    """Every event in the event files of ``log_dir``'s run (one folder), none sampled away."""
    guidance = {kind: 0 for kind in ("scalars", "images", "histograms")}
    folder = str(event_folder(log_dir))
    accumulator = event_accumulator.EventAccumulator(folder, size_guidance=guidance)
    accumulator.Reload()
    return accumulator


def written_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of each write of ``tag``, in write order: a repeated step shows."""
    return [(event.step, event.value) for event in _written(log_dir).Scalars(tag)]


def all_written_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of ``log_dir``'s run -> ``(step, value)`` of each write, in order."""
    written = _written(log_dir)
    return {
        tag: [(event.step, event.value) for event in written.Scalars(tag)]
        for tag in written.Tags()["scalars"]
    }


def written_images(log_dir: Path, tag: str) -> list[event_accumulator.ImageEvent]:
    """Each image written under ``tag`` (``.step``, ``.height``, ``.width``, the PNG)."""
    return _written(log_dir).Images(tag)


def written_histograms(log_dir: Path, tag: str) -> list[event_accumulator.HistogramEvent]:
    """Each histogram written under ``tag`` (``.step``, ``.histogram_value``)."""
    return _written(log_dir).Histograms(tag)


def projector_embeddings(log_dir: Path) -> list[EmbeddingInfo]:
    """The Projector tab's embeddings in ``log_dir``, one per ``add_embedding`` call, with
    their file paths (tensor, metadata, sprite) relative to ``log_dir``."""
    config_file = log_dir / "projector_config.pbtxt"
    return list(text_format.Parse(config_file.read_text(), ProjectorConfig()).embeddings)


# ------------------------------------------------------------------------ HParams tab


def hparams_session_groups(log_dir: Path) -> list[api_pb2.SessionGroup]:
    """What TensorBoard's HParams tab lists, asked of its own backend."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(log_dir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(log_dir))
    context = base_plugin.TBContext(
        logdir=str(log_dir), multiplexer=multiplexer, data_provider=provider
    )
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0,
        slice_size=100,
        allowed_statuses=[api_pb2.STATUS_SUCCESS, api_pb2.STATUS_UNKNOWN],
    )
    handler = list_session_groups.Handler(
        tb_context.RequestContext(), backend_context.Context(context), "", request
    )
    return list(handler.run().session_groups)
