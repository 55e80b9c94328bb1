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
        "kind_note": spec.kind_note or None,
        "params": count_params(spec),
        "published_params_m": pub.params_m,
        "gmacs": pub.gmacs,
        "input_size": list(spec.input_shape),
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
        ("input", "right"), ("top-1 %", "right"), ("published latency (its own device and runtime)", "left"),
    ]:
        table.add_column(col, justify=justify, no_wrap=col == "model")
    kind_style = {"hybrid": "cyan", "attention": "magenta", "convolution": "green"}
    for r in rows:
        kind = f"[{kind_style.get(r['kind'], 'white')}]{r['kind']}[/]" + (f" {r['kind_note']}" if r.get("kind_note") else "")
        latency = f"{r['latency_ms']:.1f} ms on {r['latency_device']}" if r["latency_ms"] is not None else "-"
        table.add_row(
            r["name"],
            r["family"],
            kind,
            f"{r['params'] / 1e6:.2f}M",
            _fmt(r["gmacs"], ".2f"),
            input_text(r["input_size"]),
            _fmt(r["top1"], ".1f"),
            latency,
        )
    out.print(table)
    out.print("params are counted on our implementation; GMACs, top-1 and latency are the published figures "
              "('edgehybrid info MODEL' gives their sources). Each latency was measured on its own device and "
              "runtime: compare rows only where those match, or measure yours with 'edgehybrid profile'.",
              markup=False)
    bundled = [c for c in checkpoint_rows() if c["bundled"]]
    if bundled:
        out.print("Bundled trained weights (they work offline; 'edgehybrid models --tags' lists every tag):",
                  markup=False)
        for c in bundled:
            out.print(f"  {c['name']}: {c['trained_on']}", markup=False)


def checkpoint_rows() -> list[dict]:
    """Every checkpoint tag of the zoo: where its weights come from and what they were trained on."""
    rows = []
    for spec in registered().values():
        for c in spec.checkpoints:
            card = fixture_card(spec, c)
            size = c.input_size or spec.input_size
            rows.append({
                "name": f"{spec.name}.{c.tag}", "model": spec.name, "bundled": c.bundled_file is not None,
                "weights": "bundled with edgehybrid (offline)" if c.bundled_file else f"hf-hub:{c.hf_hub_id} (online)",
                "num_classes": c.num_classes or spec.num_classes,
                "input_size": list((c.preprocessing or spec.preprocessing).sample_shape(size)),
                "top1": round(card["val_top1"] * 100, 2) if card else spec.published.top1,
                "trained_on": _trained_on(card) if card else "ImageNet-1k (published checkpoint)",
                "model_card": card.get("_card") if card else None,
            })
    return rows


def fixture_card(spec: ModelSpec, ckpt) -> dict | None:
    """The bundled fixture's card (``models_zoo/fixtures/<name>.json``: trained here, measured here)."""
    import json

    from models_zoo.zoo import FIXTURES_DIR

    if ckpt is None or not ckpt.bundled_file:
        return None
    path = FIXTURES_DIR / f"{spec.name}.{ckpt.tag}.json"
    if not path.is_file():
        return None
    card = json.loads(path.read_text(encoding="utf-8"))
    card["_card"] = str(path.with_suffix(".md").relative_to(FIXTURES_DIR.parents[1]))
    return card


def input_text(shape: list[int]) -> str:
    """An input shape as a reader says it: 64x64 for an image, 16000 samples for a clip."""
    return "x".join(map(str, shape[1:])) if len(shape) == 3 else " x ".join(map(str, shape)) + (
        " samples" if len(shape) == 1 else "")


def _trained_on(card: dict) -> str:
    if "val_clips" in card:  # a speech fixture
        return (f"{card['tag']} ({card['num_classes']} words, {card['input_size'][0]} samples), trained here: val "
                f"top-1 {card['val_top1'] * 100:.1f}% on {card['val_clips']} clips of unheard voices; model card "
                f"{card['_card']}")
    h, w = card["input_size"]
    return (f"{card['tag'].upper() if card['tag'] == 'cifar10' else card['tag']} ({card['num_classes']} classes, "
            f"{h}x{w}), trained here: val top-1 {card['val_top1'] * 100:.1f}% on {card['val_images']} images; "
            f"model card {card['_card']}").replace("CIFAR10", "CIFAR-10")


def render_tags(rows: list[dict], out: Console) -> None:
    table = Table(title="edgehybrid checkpoints", title_justify="left")
    for col in ("tag", "weights", "classes", "input", "top-1 %", "trained on"):
        table.add_column(col, no_wrap=col == "tag")
    for r in rows:
        table.add_row(r["name"], r["weights"], str(r["num_classes"]), input_text(r["input_size"]),
                      _fmt(r["top1"], ".1f"), r["trained_on"])
    out.print(table)


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
        card = fixture_card(spec, ckpt)
        if ckpt.num_classes is not None:  # a tag with its own head, input and preprocessing: show those
            doc["num_classes"] = ckpt.num_classes
            with torch.device("meta"):
                head = spec.builder(num_classes=ckpt.num_classes, input_size=ckpt.input_size or spec.input_size)
            doc["params"] = sum(p.numel() for p in head.parameters())
        if ckpt.input_size is not None:
            doc["input_size"] = list((ckpt.preprocessing or spec.preprocessing).sample_shape(ckpt.input_size))
        if ckpt.preprocessing is not None:
            doc["preprocessing"] = ckpt.preprocessing.to_dict()
        if card:
            doc.update(top1=round(card["val_top1"] * 100, 2), trained_on=_trained_on(card),
                       model_card=card["_card"], latency_ms=None, latency_device=None, gmacs=None,
                       source=f"trained and measured by edgehybrid ({card['_card']}); the architecture's "
                              f"published figures: 'edgehybrid info {spec.name}'")
    if loaded_doc is not None:
        doc["weights"] = loaded_doc
    return doc


def render_info(doc: dict, out: Console) -> None:
    table = Table(show_header=False, title=doc["name"], title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    for key in ("checkpoint", "trained_on", "model_card", "family", "kind", "kind_note", "params",
                "published_params_m", "gmacs", "input_size", "input_divisor", "num_classes", "top1", "latency_ms",
                "latency_device", "default_checkpoint", "source"):
        if key in doc and doc[key] is not None:
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
