"""Validation of an artifact against the PyTorch graph it was exported from: one entry point for every caller.

:func:`validate` runs the artifact on its target's runtime (or, where the runtime cannot execute here, on
the exporter's labelled reference evaluation) over real inputs and compares its outputs with the PyTorch
graph's under the target's tolerance for the precision. It returns the figures the manifest records;
:func:`raise_for` turns a failed result into a :class:`ValidationError` that names the output and the figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from calibration.preprocess import batched
from edgehybrid.drift import compare
from edgehybrid.errors import CheckFailedError
from edgehybrid.runtimes import RuntimeUnavailable, open_session, to_layout
from edgehybrid.targets import Precision, get_target


class ValidationError(CheckFailedError):
    """The artifact did not match its PyTorch graph: names the target, the output and the failed figures."""

    def __init__(self, target: str, model: str, output: str, failures: list[str]):
        super().__init__(f"{target} artifact of {model} failed validation against PyTorch on output "
                         f"'{output}': {'; '.join(failures)} (nothing was written)")
        self.target, self.model, self.output, self.failures = target, model, output, failures


def validate(target: str, artifact, graph: nn.Module, feeds_nchw: np.ndarray, batch: int, threads: int,
             images: list[Path], fp32_graph: nn.Module | None = None) -> dict:
    """Run ``artifact`` (an :class:`exporters.base.Artifact`) on ``target``'s runtime over ``feeds_nchw`` and
    compare with ``graph`` (for INT8, the quantized graph: the conversion is what is validated); with
    ``fp32_graph``, also report the drift of the artifact against the FP32 model."""
    record = get_target(target)
    batches = batched(feeds_nchw, batch)
    with torch.no_grad():
        reference = np.concatenate([graph(torch.from_numpy(b)).numpy() for b in batches])
    result: dict = {"runtime": record.runtime, "samples": len(reference), "images": [p.name for p in images],
                    "threads": threads}
    try:
        opened = open_session(record, artifact.path, threads)
    except RuntimeUnavailable as exc:  # and no reference evaluation: the structure is all that was checked
        result.update({"executed": False, "reason": str(exc), "passed": True, "method": "structure only",
                       "failures": [], "metrics": None})
        return result
    result.update({"executed": opened.executed, "method": opened.method if opened.executed else
                   opened.session.label})
    if not opened.executed:
        result["reason"] = opened.reason
    in_info, out_info = artifact.inputs[0], artifact.outputs[0]
    outputs = [np.asarray(opened.session.run({in_info.name: to_layout(b, in_info.layout)})[out_info.name])
               for b in batches]
    actual = np.concatenate(outputs).reshape(reference.shape)
    # an int8 output cannot order logits closer than its quantization step: such ties are not disagreements
    comparison = compare(reference, actual, tie=out_info.scale or 0.0)
    tolerance = record.tolerance(artifact.precision)
    fp32 = None
    if fp32_graph is not None:
        with torch.no_grad():
            fp32 = np.concatenate([fp32_graph(torch.from_numpy(b)).numpy() for b in batches])
        plan = compare(fp32, reference)  # the quantized graph's own distance from FP32: its step size
        tolerance = tolerance.no_tighter_than(plan)
        result["plan_vs_fp32"] = {out_info.name: plan.to_dict()}
    failures = tolerance.failures(comparison, float(np.abs(reference).max()))
    result.update({
        "passed": not failures, "failures": failures, "tolerance": tolerance.to_dict(),
        "metrics": {out_info.name: comparison.to_dict()},
    })
    if fp32 is not None:
        result["reference"] = "the quantized PyTorch graph (the same int8 plan, simulated)"
        result["drift_vs_fp32"] = {out_info.name: compare(fp32, actual).to_dict()}
    elif Precision.parse(artifact.precision) is Precision.INT8_WEIGHTS:
        result["reference"] = "the FP32 PyTorch model (weight-only int8 has no quantized graph)"
    return result


def raise_for(result: dict, target: str, model: str, output: str) -> None:
    """Raise :class:`ValidationError` when ``result`` (from :func:`validate`) failed."""
    if not result["passed"]:
        raise ValidationError(target, model, output, result["failures"])
