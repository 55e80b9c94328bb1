"""Where a model's multiply-accumulates go: attention, convolution, other.

Counted by running the FP32 PyTorch model once under ``torch.utils.flop_counter.FlopCounterMode`` (PyTorch's
own per-module operation count; a multiply-accumulate is two of its flops). A module is attention by the same
rule ``edgehybrid profile --per-op`` uses for runtime time (:func:`edgehybrid.profiling.probe.in_attention`:
its path or class says attention), so the MAC share and the time share of one model are read the same way.
Every MAC inside an attention module is attention (its q/k/v projections included); convolutions outside one
are convolution; a speech model's in-graph front end (``frontend``: the DFT convolution and mel matmul) is
front_end; the rest (feed-forward and classifier linears, ...) is other.

The int8 share is read from an INT8 manifest's plan: the MACs of the layers that run in int8 on that target,
over the plan's MACs.
"""

from __future__ import annotations

CATEGORIES = ("attention", "convolution", "other")
_CONV = ("aten.convolution", "aten.conv1d", "aten.conv2d", "aten._convolution")


def mac_breakdown(model, example) -> dict:
    """``{"macs": total, "params": n, "by_category": {attention, convolution, other: MACs}, "share": {...}}``
    of one forward pass of ``model`` on ``example`` (one input, batch included)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from edgehybrid.profiling.probe import in_attention

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(example)
    counts = {path: {str(op): n for op, n in ops.items()} for path, ops in counter.get_flop_counts().items()}
    total_ops = counts.get("Global", {})
    total = sum(total_ops.values())
    modules = dict(model.named_modules())
    root = type(model).__name__

    def attention(path: str) -> bool:
        sub = modules.get(path)
        return sub is not None and in_attention(path, [type(sub).__name__])

    attn_paths = []
    for path in counts:
        if path == "Global" or not path.startswith(root + "."):
            continue
        rel = path[len(root) + 1:]
        if attention(rel) and not any(rel.startswith(p + ".") for p in attn_paths):
            attn_paths = [p for p in attn_paths if not p.startswith(rel + ".")] + [rel]
    attn = sum(sum(counts[f"{root}.{p}"].values()) for p in attn_paths)
    conv_all = sum(n for op, n in total_ops.items() if op.startswith(_CONV))
    conv_attn = sum(n for p in attn_paths for op, n in counts[f"{root}.{p}"].items() if op.startswith(_CONV))
    front = counts.get(f"{root}.frontend", {})  # a speech model's in-graph log-mel: its own category
    conv_front = sum(n for op, n in front.items() if op.startswith(_CONV))
    macs = {"attention": attn // 2, "convolution": (conv_all - conv_attn - conv_front) // 2}
    if front:
        macs = {"front_end": sum(front.values()) // 2, **macs}
    macs["other"] = total // 2 - sum(macs.values())
    denom = max(1, total // 2)
    return {"macs": total // 2, "params": sum(p.numel() for p in model.parameters()),
            "by_category": macs, "share": {k: round(v / denom, 4) for k, v in macs.items()},
            "attention_modules": len(attn_paths), "counted_by": "torch.utils.flop_counter (FP32 PyTorch model)"}


def int8_share(manifest: dict) -> float | None:
    """Share of the plan's MACs that run in int8 on the manifest's target: 0.0 for a float artifact, None when
    an int8 manifest carries no plan (an artifact from before plans were recorded)."""
    if manifest.get("precision") != "int8":
        return 0.0
    quant = manifest.get("quantization") or {}
    layers = quant.get("layers")
    if not layers:
        return None
    float_kinds = set(quant.get("target_float_kinds") or [])
    total = sum(int(layer.get("macs") or 0) for layer in layers) or 1
    mac_kinds = {"conv", "linear", "matmul"}
    int8 = sum(int(layer.get("macs") or 0) for layer in layers
               if layer.get("precision") == "int8" and not (set(layer.get("ops") or ()) & mac_kinds & float_kinds))
    return round(int8 / total, 4)
