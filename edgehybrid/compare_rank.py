"""Rows, the Pareto front and the budget's choice of ``edgehybrid compare``: pure functions of the measured
documents (check, profile, MACs, manifest), so what they decide can be tested on any figures.

Accuracy is the artifact's top-1 on labelled ``--data``; on unlabelled data it is the top-1 agreement with the
candidate's own FP32 model (how faithful the export is, not how good the model is). The front is drawn per
target: a candidate is on it when no other candidate on that target is at least as accurate and at least as
fast, and better in one of the two.
"""

from __future__ import annotations

from edgehybrid.macs import int8_share

KINDS = ("convolution", "hybrid", "attention")


def row_of(done) -> dict:
    """One table row from what the stages produced for a candidate (:class:`edgehybrid.comparison.Done`)."""
    c, m = done.candidate, done.manifest or {}
    row = {"id": c.id, "model": c.model, "target": c.target, "precision": str(c.precision),
           "status": "measured" if done.manifest is not None else done.export, "export": done.export,
           "notes": list(done.notes), "artifact": str(done.artifact) if done.artifact else None,
           "kind": None, "size_mb": None, "params": None, "macs": None, "mac_share": None, "int8_mac_share": None,
           "accuracy": _accuracy(done.check), "latency_ms": None, "memory_mb": None, "runtime": None,
           "time_share": None, "time_share_note": None, "on_front": False, "within_budget": None,
           # the check / profile / MACs documents the figures come from (check's and profile's --json documents)
           "measurements": {k: str(v) for k, v in done.files.items() if v is not None}}
    if done.manifest is None:
        return row
    row["size_bytes"], row["size_mb"] = m["size_bytes"], round(m["size_bytes"] / 2**20, 3)
    row["int8_mac_share"] = int8_share(m)
    macs = done.macs or {}
    if "skipped" in macs:
        row["notes"].append(macs["skipped"])
    else:
        row.update(params=macs.get("params"), macs=macs.get("macs"), mac_share=macs.get("share"))
    row["kind"] = kind_of(m.get("kind"), row["mac_share"])
    prof = done.profile or {}
    if "skipped" in prof:
        row["notes"].append(prof["skipped"])
    elif prof:
        lat, mem = prof["latency_ms"], prof["memory"]
        row["latency_ms"] = {"p50": round(lat["p50"], 4), "p90": round(lat["p90"], 4)}
        row["memory_mb"] = {"peak": round(mem["peak_rss_mb"], 1), "model": round(mem["peak_above_baseline_mb"], 1)}
        row["runtime"] = prof.get("backend") or prof.get("runtime")
        per_op = prof.get("per_op") or {}
        modules = {m["module"] for m in per_op.get("by_module") or []}
        if per_op.get("by_category") and modules - {"(root)", "(unmapped)"}:
            row["time_share"] = {k: round(v, 4) for k, v in per_op["by_category"].items()}
        elif per_op.get("by_category"):  # kernels not joined to modules: attention time cannot be told apart
            row["time_share_note"] = ("time per category unknown: the runtime's kernels could not be joined to the "
                                      "model's modules (its graph carries no module names)")
            row["notes"].append(row["time_share_note"])
        else:
            row["time_share_note"] = per_op.get("missing") or "no per-op profile"
    if row["accuracy"].get("executed") is False:
        row["notes"].append(f"accuracy figures are {row['accuracy']['method']}, not measured on the runtime")
    if row["accuracy"].get("reason"):
        row["notes"].append(f"accuracy not measured: {row['accuracy']['reason']}")
    return row


def kind_of(declared: str | None, mac_share: dict | None) -> str | None:
    """The model's kind: as its spec declares it, else read from where its MACs go."""
    if declared in KINDS:
        return declared
    if not mac_share:
        return None
    if mac_share.get("attention", 0) == 0:
        return "convolution"
    return "attention" if mac_share.get("convolution", 0) < 0.01 else "hybrid"


def _accuracy(check: dict | None) -> dict:
    if check is None:
        return {"metric": None, "value": None, "reason": "not checked"}
    if "skipped" in check:
        return {"metric": None, "value": None, "reason": check["skipped"]}
    met = check["metrics"]
    out = {"images": met["images"], "agreement_pct": met["top1_agreement_pct"], "cosine": met["cosine"],
           "executed": check["runtime"]["executed"], "method": check["runtime"]["method"]}
    if check["data"]["labelled"]:
        out.update(metric="top1", value=met["artifact_top1_pct"], fp32_top1_pct=met["reference_top1_pct"],
                   drop_pts=met["top1_drop_pts"])
    else:
        out.update(metric="agreement", value=met["top1_agreement_pct"], fp32_top1_pct=None, drop_pts=None)
    return out


def _dominates(a: dict, b: dict) -> bool:
    av, bv = a["accuracy"]["value"], b["accuracy"]["value"]
    al, bl = a["latency_ms"]["p50"], b["latency_ms"]["p50"]
    return av >= bv and al <= bl and (av > bv or al < bl)


def pareto(rows: list[dict]) -> list[dict]:
    """The rows no other row dominates (accuracy up, median latency down), among rows that have both."""
    scored = [r for r in rows if r["accuracy"].get("value") is not None and r["latency_ms"]]
    return [r for r in scored if not any(_dominates(o, r) for o in scored if o is not r)]


def _fits(row: dict, budget) -> bool | None:
    if not budget.given:
        return None
    if not row["latency_ms"]:
        return False
    return ((budget.ms is None or row["latency_ms"]["p50"] <= budget.ms)
            and (budget.mb is None or row["memory_mb"]["model"] <= budget.mb))


def _overshoot(row: dict, budget) -> float:
    over = []
    if budget.ms is not None:
        over.append(row["latency_ms"]["p50"] / budget.ms)
    if budget.mb is not None:
        over.append(max(row["memory_mb"]["model"], 1e-9) / budget.mb)
    return max(over)


def _figures(row: dict) -> str:
    acc = row["accuracy"]
    text = f"p50 {row['latency_ms']['p50']:.2f} ms, +{row['memory_mb']['model']:.1f} MB"
    if acc.get("value") is not None:
        text = f"{'top-1' if acc['metric'] == 'top1' else 'agreement'} {acc['value']:.2f}%, " + text
    return text


def choose(rows: list[dict], budget) -> dict | None:
    """The most accurate row within the budget (ties: the faster), or none with the one that comes closest."""
    if not budget.given:
        return None
    limits = " and ".join(t for t in (f"p50 <= {budget.ms:g} ms" if budget.ms is not None else "",
                                      f"+model <= {budget.mb:g} MB" if budget.mb is not None else "") if t)
    timed = [r for r in rows if r["latency_ms"]]
    fits = [r for r in timed if r["within_budget"]]
    if fits:
        by_accuracy = all(r["accuracy"].get("value") is not None for r in fits)
        best = min(fits, key=lambda r: ((-r["accuracy"]["value"]) if by_accuracy else 0, r["latency_ms"]["p50"]))
        how = "the most accurate" if by_accuracy else "the fastest (accuracy not measured)"
        return {"fits": True, "id": best["id"], "candidates_within": len(fits),
                "line": f"{best['id']} is {how} of {len(fits)} candidate(s) within {limits}: {_figures(best)}"}
    if not timed:
        return {"fits": False, "id": None, "closest": None,
                "line": f"no candidate was timed here, so none can be shown to fit {limits}"}
    near = min(timed, key=lambda r: _overshoot(r, budget))
    return {"fits": False, "id": None, "closest": near["id"],
            "line": f"no candidate fits {limits}; the closest is {near['id']} ({_figures(near)}, "
                    f"{_overshoot(near, budget) - 1:.0%} over)"}


def rank(rows: list[dict], budget) -> dict:
    """Mark the front per target and the budget's verdict on each row; the document's ranking part."""
    fronts = {}
    for target in dict.fromkeys(r["target"] for r in rows):
        front = pareto([r for r in rows if r["target"] == target])
        for r in front:
            r["on_front"] = True
        fronts[target] = [r["id"] for r in front]
    for r in rows:
        r["within_budget"] = _fits(r, budget) if r["status"] == "measured" else None
    metrics = {r["accuracy"]["metric"] for r in rows if r["accuracy"].get("metric")}
    metric = metrics.pop() if len(metrics) == 1 else None
    return {"rows": rows, "accuracy_metric": metric, "fronts": fronts, "choice": choose(rows, budget)}
