"""Per-layer sensitivity and the drift-budget search, measured on held-out calibration samples.

Both run on one copy of the calibrated graph whose observers are swapped for switchable fake-quantizers
using the calibrated ranges, so trying a plan costs one forward pass over the held-out samples, not a new
calibration. Which edges a plan quantizes follows the same rule as :func:`calibration.quantize.finalize`.

* sensitivity: each layer alone in int8 (everything else float); its output SQNR against FP32 (higher is
  better; the lowest are the layers INT8 hurts most);
* the kind guard (every plan with held-out samples): an op kind the target runs in int8 whose int8 alone, beside
  the weighted ops, multiplies their drift (CvT's residual adds, LayerNorms and attention matmuls: 0.044 ->
  0.14 each, 0.19 together) is kept float in the layers that hold it, and the manifest says so with the figures;
* the drift budget: start from the full plan; while the drift (relative RMS error of the logits against
  FP32 = 10^(-SQNR/20)) exceeds the budget, move to float the layer with the most error per unit of int8
  speed it would give up (its share of the model's MACs, plus a floor for the quantize/dequantize pair a
  float island adds), and measure again.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from calibration.ops import TRAITS, UNWEIGHTED, QuantPolicy
from calibration.quantize import Calibrated, float_output_nodes, int8_nodes, keep_edge, observer_edge, plan_nodes
from edgehybrid.drift import compare

#: a float island still pays for a quantize/dequantize pair: cost floor, as a share of the model's MACs
_ISLAND_COST = 0.01


class _Switch(nn.Module):
    """Fake-quantizes with a calibrated observer's parameters when ``enabled``; identity otherwise."""

    def __init__(self, observer: nn.Module):
        super().__init__()
        scale, zero_point = observer.calculate_qparams()
        self.register_buffer("scale", scale.float().reshape(-1))
        self.register_buffer("zero_point", zero_point.int().reshape(-1))
        self.per_channel = observer.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
        self.axis = getattr(observer, "ch_axis", 0)
        self.qmin, self.qmax = observer.quant_min, observer.quant_max
        self.enabled = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.per_channel:
            return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, self.axis,
                                                          self.qmin, self.qmax)
        return torch.fake_quantize_per_tensor_affine(x, float(self.scale[0]), int(self.zero_point[0]),
                                                     self.qmin, self.qmax)


@dataclass
class Simulator:
    """The calibrated graph with switchable fake-quantizers: :meth:`drift` of any plan in one pass."""

    cal: Calibrated
    held_out: torch.Tensor
    policy: QuantPolicy = QuantPolicy()

    def __post_init__(self):
        self.graph = copy.deepcopy(self.cal.prepared)
        self.float_out = float_output_nodes(self.cal.layers, self.policy.float_output_kinds)
        self.edges: dict[str, tuple[set[str], set[str]]] = {}
        for node in self.graph.graph.nodes:
            edge = observer_edge(node)
            if edge is not None:
                self.edges[node.target] = edge
        for name in self.edges:
            setattr(self.graph, name, _Switch(getattr(self.graph, name)))
        self.reference = self._run(set(), set())

    def _run(self, int8: set[str], skipped: set[str], float_out: set[str] | None = None) -> torch.Tensor:
        float_out = self.float_out if float_out is None else float_out
        for name, (producers, consumers) in self.edges.items():
            getattr(self.graph, name).enabled = keep_edge(producers, consumers, int8, skipped, float_out)
        with torch.no_grad():
            return torch.cat([self.graph(self.held_out[i:i + self.batch]) for i in
                              range(0, len(self.held_out) - self.batch + 1, self.batch)])

    @property
    def batch(self) -> int:
        return self.cal.batch_size

    def sqnr(self, int8: set[str]) -> float:
        """Output SQNR (dB) of the plan running ``int8`` nodes in int8, against FP32."""
        skipped = int8_nodes(self.cal.layers) - int8
        out = self._run(int8, skipped)
        return compare(self.reference.numpy(), out.numpy()).sqnr_db

    def plan_sqnr(self) -> float:
        return self.sqnr(int8_nodes(self.cal.layers, self.policy.float_kinds))

    def candidate_sqnr(self, policy: QuantPolicy, float_layers: frozenset[str] = frozenset()) -> float:
        """Output SQNR (dB) of the plan on a target with another ``policy``, with ``float_layers`` float too."""
        int8 = plan_nodes(self.cal.layers, policy, float_layers)
        out = self._run(int8, int8_nodes(self.cal.layers) - int8,
                        float_output_nodes(self.cal.layers, policy.float_output_kinds))
        return compare(self.reference.numpy(), out.numpy()).sqnr_db

    def layer_sensitivity(self) -> dict[str, float]:
        """Each layer alone in int8 (the target's float kinds stay float): output SQNR in dB."""
        out = {}
        for name, layer in self.cal.layers.items():
            nodes = {n for n, k in zip(layer.nodes, layer.kinds) if k not in self.policy.float_kinds}
            out[name] = self.sqnr(nodes) if nodes else math.inf
        return out


def drift_of(sqnr_db: float) -> float:
    """Relative RMS error of the logits for an SQNR in dB."""
    return 0.0 if math.isinf(sqnr_db) else 10 ** (-sqnr_db / 20)


#: the kind guard: a kind is kept float when, alone in int8 beside the weighted ops, it multiplies their drift by
#: more than GUARD_RATIO and adds more than GUARD_MIN (on MobileViT-S, EfficientFormer-L1 and BoTNet no kind
#: moves it by more than 1.1x; on CvT-13 three kinds move it 3.1-3.3x)
GUARD_RATIO = 2.0
GUARD_MIN = 0.01


def guard_kinds(sim: Simulator, policy: QuantPolicy, plan_sqnr: float) -> dict:
    """Keep float the op kinds that multiply the plan's error (see the module's docstring); ``plan_sqnr``: the
    plan's own, :meth:`Simulator.plan_sqnr`. Returns the figures the manifest records:
    ``{"weighted_only_drift", "plan_drift", "kinds": [{"kind", "drift"}]}``. One extra forward pass when the
    plan is within ``GUARD_RATIO`` of the weighted ops' drift; one per kind the target runs in int8 otherwise.
    A layer that holds a guarded kind and no weighted op goes float."""
    base = drift_of(sim.candidate_sqnr(replace(policy, float_kinds=UNWEIGHTED | policy.float_kinds)))
    plan = drift_of(plan_sqnr)
    out = {"weighted_only_drift": round(base, 5), "plan_drift": round(plan, 5), "kinds": []}
    if plan <= GUARD_RATIO * base or plan - base <= GUARD_MIN:
        return out
    for kind in sorted(UNWEIGHTED - policy.float_kinds, key=str):
        alone = drift_of(sim.candidate_sqnr(replace(policy, float_kinds=(UNWEIGHTED - {kind}) | policy.float_kinds)))
        if alone > GUARD_RATIO * base and alone - base > GUARD_MIN:
            out["kinds"].append({"kind": kind.value, "drift": round(alone, 5)})
    guarded = {entry["kind"] for entry in out["kinds"]}
    for layer in sim.cal.layers.values():
        held = sorted({k.value for k in layer.kinds} & guarded)
        if layer.precision == "int8" and held and not any(TRAITS[k].weighted for k in layer.kinds):
            figures = ", ".join(f"{e['kind']} {e['drift']:.4f}" for e in out["kinds"] if e["kind"] in held)
            layer.precision = "float"
            layer.reason = (f"kept in float: {'/'.join(held)} in int8 beside the weighted ops raises the held-out "
                            f"drift from {base:.4f} to {figures} (more than {GUARD_RATIO:g}x)")
    return out


def measure_sensitivity(sim: Simulator) -> list[tuple[str, float]]:
    """Rank layers, most harmful first, and record the figure on each plan entry."""
    sens = sim.layer_sensitivity()
    for name, value in sens.items():
        sim.cal.layers[name].sensitivity_sqnr_db = None if math.isinf(value) else round(value, 2)
    return sorted(sens.items(), key=lambda kv: kv[1])


def meet_budget(sim: Simulator, max_drift: float, max_steps: int = 64) -> list[dict]:
    """Move layers to float until the plan's drift is within ``max_drift``; returns the steps taken."""
    layers = sim.cal.layers
    if any(layer.sensitivity_sqnr_db is None and layer.precision == "int8" for layer in layers.values()):
        measure_sensitivity(sim)
    total_macs = sum(layer.macs for layer in layers.values()) or 1
    steps = []
    for _ in range(max_steps):
        current = drift_of(sim.plan_sqnr())
        if current <= max_drift:
            break
        candidates = [layer for layer in layers.values()
                      if layer.precision == "int8" and layer.sensitivity_sqnr_db is not None]
        if not candidates:
            break

        def priority(layer):
            noise = 10 ** (-layer.sensitivity_sqnr_db / 10)
            return noise / (layer.macs / total_macs + _ISLAND_COST)

        worst = max(candidates, key=priority)
        worst.precision = "float"
        worst.reason = (f"kept in float to meet --max-drift {max_drift:g}: alone in int8 its output SQNR is "
                        f"{worst.sensitivity_sqnr_db:.1f} dB; plan drift was {current:.4f} before")
        steps.append({"layer": worst.name, "drift_before": round(current, 5),
                      "sensitivity_sqnr_db": worst.sensitivity_sqnr_db,
                      "macs_share": round(worst.macs / total_macs, 4)})
    return steps
