"""How ``--optimize latency`` exports and times candidate plans for one export request (:class:`~int8.Trials`).

A candidate is exported with the request's own options (INT8) into its own folder; FP32 once, into a scratch
folder the whole export keeps (the search times it, ``--sensitivity`` profiles it). Each INT8 candidate is
opened on the target's runtime right after its export (on a device: when the probe loads them all), so a
program the runtime refuses is a skipped candidate, not a failed search. Timing is
:func:`~edgehybrid.profiling.probe.time_side_by_side`, here or on a device over SSH
(:func:`~edgehybrid.profiling.remote.time_side_by_side_remote`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from edgehybrid.errors import EdgeHybridError, MissingBackendError
from edgehybrid.int8 import Int8Request, Trials
from edgehybrid.latency_plan import feed_for
from edgehybrid.targets import Precision

#: sessions each artifact is opened in when the search times it (here or on a device), the fastest counting each
#: round, where a session keeps its own threads (ONNX Runtime, LiteRT): ONNX Runtime sessions of one file in one
#: process settle at levels up to 2x apart: one slow FP32 session (1.44 ms) made a plan read 1.83x FP32 that the
#: benchmark timed at 0.98x (`mobilevit_xxs.cifar10`, ONNX Runtime)
SESSIONS = 3


def trials_for(req, exporter, fp32_graph: nn.Module, example: torch.Tensor, spec, scratch: Path,
               wrap: Callable[[nn.Module], nn.Module]) -> Trials:
    """The search's export and timing for ``req`` (a :class:`~edgehybrid.pipeline.ExportRequest`), fed the
    export's own example in the artifact's layout. ``wrap``: what the export puts around a quantized graph (the
    in-graph normalization of ``--normalize-in-graph``); ``fp32_graph`` already has it."""
    from edgehybrid.profiling.probe import time_side_by_side
    from edgehybrid.profiling.remote import time_side_by_side_remote
    from edgehybrid.runtimes import get_runtime, open_session

    options = req.options
    quant = req.int8 or Int8Request()
    device = quant.ssh_device

    fp32 = []
    loaded = {}  # a candidate's session, opened once to check it loads, reused by the first timing at req.threads

    def export(graph: nn.Module, folder: Path, int8: bool):
        if not int8 and fp32:
            return fp32[0]
        folder = folder if int8 else scratch / "fp32"
        folder.mkdir(parents=True)
        opts = options if int8 else replace(options, precision=Precision.FP32)
        artifact = exporter.export(wrap(graph) if int8 else graph, example, spec, opts,
                                   folder / f"trial{exporter.suffix}")
        if not int8:
            fp32.append(artifact)
        elif device is None:  # a program its runtime refuses (XNNPACK: "Failed to create static slice node") is
            try:  # no candidate: the search records it beside the ones the converter refused
                loaded[artifact.path] = open_session(req.target, artifact.path, req.threads).session
            except EdgeHybridError as exc:
                if isinstance(exc, MissingBackendError):
                    raise
                raise EdgeHybridError(f"{exporter.target.runtime} cannot load it: {exc}") from exc
        return artifact

    vary = get_runtime(exporter.target.runtime).threads_per_session
    sessions = SESSIONS if vary else 1

    def time_here(artifacts: dict, threads: int) -> dict:
        runs = {}
        for name, artifact in artifacts.items():
            feeds = {artifact.inputs[0].name: feed_for(artifact.inputs[0], example.numpy())}
            first = loaded.pop(artifact.path, None) if threads == req.threads else None
            opened = [first or open_session(req.target, artifact.path, threads).session]
            opened += [open_session(req.target, artifact.path, threads).session for _ in range(sessions - 1)]
            runs[name] = [functools.partial(session.run, feeds) for session in opened]
        return time_side_by_side(runs)

    if device is None:
        return Trials(export, time_here, fp32_graph, exporter.target.runtime, req.threads, vary_threads=vary)

    def time_there(artifacts: dict, threads: int) -> dict:
        paths = {name: artifact.path for name, artifact in artifacts.items()}
        return time_side_by_side_remote(device, paths, exporter.target.runtime, threads,
                                        python=quant.device_python, identity=quant.identity,
                                        ssh_options=list(quant.ssh_options), sessions=sessions)

    return Trials(export, time_there, fp32_graph, exporter.target.runtime, req.threads, where=device.url,
                  vary_threads=vary)
