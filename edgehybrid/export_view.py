"""What ``edgehybrid export`` shows a person when it is done (``--json`` prints the manifest instead)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from edgehybrid.drift import top1_text


def render_summary(m: dict, out: Console) -> None:
    table = Table(show_header=False, title=f"{m['model']} -> {m['target']} ({m['precision']})", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    inp, outp = m["inputs"][0], m["outputs"][0]
    table.add_row("artifact", f"{m['artifact']} ({m['size_bytes'] / 1e6:.2f} MB)")
    table.add_row("input", _tensor(inp))
    table.add_row("output", _tensor(outp))
    table.add_row("preprocessing", preprocessing_text(m["preprocessing"]))
    q = m.get("quantization") or {}
    if q.get("layers_on_target"):
        from edgehybrid.int8 import plan_line

        table.add_row("int8 plan", plan_line(q["layers_on_target"], m["target"]).split(": ", 1)[1])
    if m.get("requires"):
        table.add_row("runs on", ", ".join(f"{k} {v}" for k, v in m["requires"].items()))
    v = m["validation"]
    metrics = v.get("metrics")
    if metrics:
        c = next(iter(metrics.values()))
        verdict = "passed" if v["passed"] else "FAILED"
        how = v["method"] if v["executed"] else f"{v['method']} (not executed: {v['reason']})"
        noun = "clips" if m["preprocessing"].get("kind") == "audio" else "images"
        table.add_row("validation", f"{verdict} on {c['samples']} {noun} via {how}: max-abs {c['max_abs']:.2e}, "
                      f"cosine {c['cosine']:.6f}, {top1_text(c)}")
    else:
        table.add_row("validation", f"not executed: {v.get('reason')}")
    d = (m.get("details") or {}).get("delegation")
    if d:  # ExecuTorch: what runs in the accelerated backend and what falls back to slow portable kernels
        portable = ", ".join(f"{op} x{n}" for op, n in d["portable_ops"].items()) or "none"
        int8 = d.get("int8_weighted_ops", {}).get("delegated")
        table.add_row("delegation", f"{d['delegated_nodes']} nodes in {d['delegated_subgraphs']} XNNPACK subgraphs"
                      + (f" ({int8} int8 convolutions / linears)" if int8 else "")
                      + f"; portable kernels: {portable}")
    table.add_row("time", ", ".join(f"{k} {t:.2f}s" for k, t in m["timings_s"].items() if "." not in k))
    table.add_row("manifest", m["artifact"] + ".manifest.json")
    out.print(table)
    steps = next_steps(m)
    if steps:
        out.print("next:\n" + "\n".join(f"  {cmd}" for cmd in steps), markup=False, highlight=False)


def _tensor(t: dict) -> str:
    text = f"{t['name']} {t['shape']} {t['dtype']} {t.get('layout') or ''}".strip()
    if t.get("scale") is not None:  # an int8 input or output: the device quantizes with exactly these
        text += f", scale {t['scale']:.6g}, zero point {t.get('zero_point') or 0}"
    return text


def preprocessing_text(pre: dict) -> str:
    """The preprocessing as steps a reader can follow, and who does them."""
    if pre.get("kind") == "audio":
        from calibration.audio import describe
        from models_zoo.registry import preprocessing_from_dict

        return describe(preprocessing_from_dict(pre))
    steps = (f"resize the shorter side to {pre['resize']}, centre-crop {pre['crop'][0]}x{pre['crop'][1]}, "
             f"divide by {pre['value_scale']:g}, subtract mean {pre['mean']}, divide by std {pre['std']}, "
             f"{pre['channel_order']} channel order")
    if pre.get("in_graph"):
        return f"inside the model: feed raw 0..255 {pre['channel_order']} pixels after the resize and crop"
    return f"{steps}; the caller does this before feeding the model"


def next_steps(m: dict) -> list[str]:
    """The natural next commands for this artifact, with its real path (quoted for a shell)."""
    import shlex

    from calibration.sources import BUNDLED, DATA_DIR
    from models_zoo.zoo import parse_ref

    artifact = shlex.quote(m["artifact"])
    data = "DIR_OF_LABELLED_CLIPS" if m["preprocessing"].get("kind") == "audio" else "DIR_OF_LABELLED_IMAGES"
    try:
        ckpt = parse_ref(m["model"])[1]
        folder = (ckpt.calibration or "").rsplit("/", 1)[0] if ckpt is not None else ""
        if folder and (DATA_DIR / folder / "eval").is_dir():
            data = f"{BUNDLED}{folder}/eval"
    except Exception:  # noqa: BLE001 - a model the zoo does not know: the placeholder stays
        pass
    return [f"edgehybrid check {artifact} --data {data}", f"edgehybrid profile {artifact}"]
