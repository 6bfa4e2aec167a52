"""Reading back what a run wrote to TensorBoard, through TensorBoard's own readers."""

from __future__ import annotations

from pathlib import Path

from tensorboard import context as tb_context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups


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
