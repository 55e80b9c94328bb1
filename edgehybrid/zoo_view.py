"""What ``edgehybrid models`` and ``edgehybrid info`` show: zoo specs as rows, tables and documents."""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from edgehybrid.errors import UnknownNameError
from models_zoo import ModelSpec, load_model, parse_ref, registered


def count_params(spec: ModelSpec) -> int:
    """Parameters of our implementation, counted on the meta device (no memory, no init time)."""
    with torch.device("meta"):
        model = spec.builder(num_classes=spec.num_classes, input_size=spec.input_size)
    return sum(p.numel() for p in model.parameters())


def model_row(spec: ModelSpec) -> dict:
    pub = spec.published
    return {
        "name": spec.name,
        "family": spec.family,
        "kind": spec.kind,
        "params": count_params(spec),
        "published_params_m": pub.params_m,
        "gmacs": pub.gmacs,
        "input_size": [3, *spec.input_size],
        "num_classes": spec.num_classes,
        "top1": pub.top1,
        "latency_ms": pub.latency_ms,
        "latency_device": pub.latency_device,
        "default_checkpoint": f"{spec.name}.{spec.default_tag}" if spec.default_tag else None,
        "source": pub.source,
    }


def model_rows(family: str | None = None) -> list[dict]:
    specs = list(registered().values())
    if family is not None:
        families = sorted({s.family for s in specs})
        if family not in families:
            raise UnknownNameError.for_choice("family", family, families)
        specs = [s for s in specs if s.family == family]
    return [model_row(s) for s in specs]


def _fmt(value, fmt: str, missing: str = "-") -> str:
    return missing if value is None else format(value, fmt)


def render_table(rows: list[dict], out: Console) -> None:
    table = Table(title="edgehybrid model zoo", title_justify="left")
    for col, justify in [
        ("model", "left"), ("family", "left"), ("kind", "left"), ("params", "right"), ("GMACs", "right"),
        ("input", "right"), ("top-1 %", "right"), ("latency ms", "right"), ("latency device", "left"),
    ]:
        table.add_column(col, justify=justify, no_wrap=col == "model")
    kind_style = {"hybrid": "cyan", "attention": "magenta", "convolution": "green"}
    for r in rows:
        table.add_row(
            r["name"],
            r["family"],
            f"[{kind_style.get(r['kind'], 'white')}]{r['kind']}[/]",
            f"{r['params'] / 1e6:.2f}M",
            _fmt(r["gmacs"], ".2f"),
            "x".join(str(v) for v in r["input_size"][1:]),
            _fmt(r["top1"], ".1f"),
            _fmt(r["latency_ms"], ".1f"),
            r["latency_device"] or "-",
        )
    out.print(table)
    out.print("params are counted on our implementation; GMACs, top-1 and latency are the published figures "
              "('edgehybrid info MODEL' gives their sources).", markup=False)


def model_info(ref: str, weights: str | None = None, num_classes: int | None = None,
               input_size: tuple[int, int] | None = None) -> dict:
    spec, ckpt = parse_ref(ref)
    if weights is not None or num_classes is not None or input_size is not None:
        # building and loading is the check: a checkpoint that does not fit raises with the offending keys
        loaded = load_model(ref, weights, num_classes=num_classes, input_size=input_size)
        spec = loaded.spec
        loaded_doc = {**loaded.weights.to_dict(), "fits": True}
    else:
        loaded_doc = None
    doc = model_row(spec)
    doc.update(
        {
            "input_divisor": spec.input_divisor,
            "preprocessing": spec.preprocessing.to_dict(),
            "checkpoints": [
                {"name": f"{spec.name}.{c.tag}", "hf_hub_id": c.hf_hub_id, "bundled": c.bundled_file is not None}
                for c in spec.checkpoints
            ],
        }
    )
    if ckpt is not None:
        doc["checkpoint"] = f"{spec.name}.{ckpt.tag}"
    if loaded_doc is not None:
        doc["weights"] = loaded_doc
    return doc


def render_info(doc: dict, out: Console) -> None:
    table = Table(show_header=False, title=doc["name"], title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    for key in ("family", "kind", "params", "published_params_m", "gmacs", "input_size", "input_divisor",
                "num_classes", "top1", "latency_ms", "latency_device", "default_checkpoint", "source"):
        table.add_row(key, str(doc[key]))
    pre = doc["preprocessing"]
    table.add_row("preprocessing", ", ".join(f"{k}={v}" for k, v in pre.items()))
    table.add_row("checkpoints", "\n".join(
        c["name"] + (" (bundled)" if c["bundled"] else f" (hf-hub:{c['hf_hub_id']})") for c in doc["checkpoints"]
    ) or "-")
    if "weights" in doc:
        w = doc["weights"]
        table.add_row("weights", f"{w['source']} ({w['kind']}) fits; sha256 {w['sha256'] or '-'}")
    out.print(table)
