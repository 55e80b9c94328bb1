"""``edgehybrid compare``'s reports: JSON (the document), Markdown (a pull-request comment) and a self-contained
HTML page with the accuracy-latency scatter per target and where each model's time goes."""

from __future__ import annotations

import html
from pathlib import Path

from edgehybrid.fsutil import check_output_file
from edgehybrid.profiling.report import _figure, _img, html_page

_SUFFIXES = (".json", ".md", ".html")
KIND_COLOURS = {"convolution": "#1b9e77", "hybrid": "#7570b3", "attention": "#d95f02", None: "#777777"}
SHARE_COLOURS = {"front_end": "#e7298a", "attention": "#d95f02", "convolution": "#1b9e77", "normalization": "#e6ab02", "other": "#999999"}


def _pct(v, digits: int = 1) -> str:
    return "—" if v is None else f"{100 * v:.{digits}f}%"


def _num(v, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def accuracy_title(doc: dict) -> str:
    return {"top1": "top-1", "agreement": "agreement with FP32"}.get(doc.get("accuracy_metric"), "accuracy")


def cells(row: dict) -> dict:
    """A row as text, one entry per column: the terminal, Markdown and HTML tables all show these."""
    acc, lat, mem = row["accuracy"], row["latency_ms"] or {}, row["memory_mb"] or {}
    share = row["mac_share"] or {}
    tshare = row["time_share"] or {}
    if acc.get("value") is None:
        accuracy = "—"
    else:  # * : not executed on the runtime (Core ML off macOS: simulated), said in the notes
        accuracy = f"{acc['value']:.2f}%" + ("*" if acc.get("executed") is False else "")
    drop = acc.get("drop_pts")
    change = "—" if drop is None else ("±0.00" if drop == 0 else f"{-drop:+.2f}")
    return {
        "candidate": f"{row['model']} {row['precision']}", "target": row["target"],
        "front": "★" if row["on_front"] else "", "kind": row["kind"] or "—", "accuracy": accuracy,
        "change": change, "p50": _num(lat.get("p50"), ".2f"), "p90": _num(lat.get("p90"), ".2f"),
        "peak": _num(mem.get("peak"), ".0f"), "model_mb": _num(mem.get("model"), ".1f"),
        "size": _num(row["size_mb"], ".2f"), "params": _num(row["params"] / 1e6 if row["params"] else None, ".2f"),
        "macs": _num(row["macs"] / 1e6 if row["macs"] else None, ".1f"),
        "time_attn_conv": (f"{_pct(tshare.get('attention'), 0)} / {_pct(tshare.get('convolution'), 0)}"
                           if tshare else "—"),
        "mac_attn_conv": (f"{_pct(share.get('attention'), 0)} / {_pct(share.get('convolution'), 0)}"
                          if share else "—"),
        "int8_macs": _pct(row["int8_mac_share"], 0),
        "p50_p90": f"{_num(lat.get('p50'), '.2f')} / {_num(lat.get('p90'), '.2f')}" if lat else "—",
        "memory": f"{_num(mem.get('peak'), '.0f')} (+{_num(mem.get('model'), '.1f')})" if mem else "—",
        "attn_time_macs": f"{_pct(tshare.get('attention'), 0) if tshare else '—'} / "
                          f"{_pct(share.get('attention'), 0) if share else '—'}",
        "budget": {True: "fits", False: "over", None: ""}[row["within_budget"]],
        "status": row["status"],
    }


#: the terminal's columns: the report's, with latency, memory and size folded into fewer cells
COMPACT = ("candidate", "target", "front", "kind", "accuracy", "change", "p50_p90", "memory", "size",
           "attn_time_macs", "int8_macs", "budget")


def columns(doc: dict, compact: bool = False) -> list[tuple[str, str]]:
    if compact:
        titles = {"p50_p90": "p50 / p90 ms", "memory": "peak (+model) MB", "attn_time_macs": "attention time / MACs",
                  "size": "file MB"}
        full = dict(columns(doc))
        return [(k, titles.get(k) or full[k]) for k in COMPACT if k in full or k in titles]
    cols = [("candidate", "candidate"), ("target", "target"), ("front", "front"), ("kind", "kind"),
            ("accuracy", accuracy_title(doc)), ("change", "vs FP32 pts"), ("p50", "p50 ms"), ("p90", "p90 ms"),
            ("peak", "peak MB"), ("model_mb", "+model MB"), ("size", "file MB"), ("params", "params M"),
            ("macs", "MMACs"), ("time_attn_conv", "time attn/conv"), ("mac_attn_conv", "MACs attn/conv"),
            ("int8_macs", "MACs int8")]
    if doc["choice"] is not None:
        cols.append(("budget", "budget"))
    return cols


def setup_lines(doc: dict) -> list[str]:
    lines = [f"runtime threads {doc['threads']}, {doc['runs']} timed runs each, on {doc['device']}",
             f"data: {doc['data'] or 'none (no accuracy figures)'}"]
    if doc.get("accuracy_metric") == "agreement":
        lines.append("the data is unlabelled: accuracy is each artifact's top-1 agreement with its own FP32 model")
    lines.append("★ = on the accuracy-latency Pareto front of its target; +model MB = peak RSS above the runtime's "
                 "own (what the model adds); time attn/conv from the runtime's per-op profile, MACs attn/conv "
                 "from the FP32 model; vs FP32 = top-1 change from the candidate's FP32 PyTorch model")
    return lines


def notes(doc: dict) -> list[str]:
    out = []
    for r in doc["rows"]:
        out += [f"{r['id']}: {n}" for n in r["notes"]]
    return out


def to_markdown(doc: dict) -> str:
    cols = columns(doc)
    lines = ["### edgehybrid compare", ""] + [f"- {line}" for line in setup_lines(doc)]
    if doc["choice"]:
        lines += ["", f"**{'Within budget' if doc['choice']['fits'] else 'Over budget'}:** {doc['choice']['line']}"]
    lines += ["", "| " + " | ".join(t for _, t in cols) + " |", "|" + " --- |" * len(cols)]
    for r in doc["rows"]:
        c = cells(r)
        lines.append("| " + " | ".join(c[k].replace("|", "\\|") for k, _ in cols) + " |")
    extra = notes(doc)
    if extra:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in extra]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- HTML


def _scatter(doc: dict, target: str) -> str:
    rows = [r for r in doc["rows"] if r["target"] == target and r["latency_ms"]
            and r["accuracy"].get("value") is not None]
    fig = _figure(9.5, 4.6)
    ax = fig.add_subplot()
    peak = max([r["memory_mb"]["model"] for r in rows] + [1.0])
    for kind, colour in KIND_COLOURS.items():
        mine = [r for r in rows if r["kind"] == kind]
        if not mine:
            continue
        ax.scatter([r["latency_ms"]["p50"] for r in mine], [r["accuracy"]["value"] for r in mine],
                   s=[60 + 600 * max(r["memory_mb"]["model"], 0) / peak for r in mine], c=colour, alpha=0.7,
                   edgecolors=["black" if r["on_front"] else "none" for r in mine], linewidths=1.5,
                   label=kind or "unknown kind")
    placed: list[tuple[float, float]] = []
    x_span = max([r["latency_ms"]["p50"] for r in rows] + [1e-9]) - min([r["latency_ms"]["p50"] for r in rows] + [0])
    y_span = max([r["accuracy"]["value"] for r in rows] + [1e-9]) - min([r["accuracy"]["value"] for r in rows] + [0])
    for r in sorted(rows, key=lambda r: (r["latency_ms"]["p50"], -r["accuracy"]["value"])):
        x, y = r["latency_ms"]["p50"], r["accuracy"]["value"]
        # a label near an earlier one goes below its point instead of above, so two close points stay readable
        near = any(abs(x - px) < 0.12 * (x_span or 1) and abs(y - py) < 0.08 * (y_span or 1) for px, py in placed)
        placed.append((x, y))
        ax.annotate(f"{r['model']} {r['precision']}", (x, y), textcoords="offset points",
                    xytext=(7, -13) if near else (7, 6), fontsize=8)
    front = sorted((r for r in rows if r["on_front"]), key=lambda r: r["latency_ms"]["p50"])
    if len(front) > 1:
        ax.step([r["latency_ms"]["p50"] for r in front], [r["accuracy"]["value"] for r in front], where="post",
                color="black", alpha=0.35, linestyle="--", label="Pareto front")
    ax.set_xlabel(f"latency p50 (ms), {target}, {doc['threads']} threads")
    ax.set_ylabel(f"{accuracy_title(doc)} (%)")
    ax.margins(0.18)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="kind (size: +model MB)",
              title_fontsize=8, markerscale=0.5, frameon=False)
    return _img(f"plot-front-{target}", f"Accuracy against latency on {target}", fig)


def _share_bars(doc: dict, key: str, plot_id: str, what: str) -> str:
    rows = [r for r in doc["rows"] if r[key]]
    if key == "mac_share":  # the FP32 model's: one bar per model, whatever the target or precision
        rows = list({r["model"]: r for r in reversed(rows)}.values())[::-1]
    fig = _figure(8, 1.2 + 0.42 * len(rows))
    ax = fig.add_subplot()
    left = [0.0] * len(rows)
    for cat, colour in SHARE_COLOURS.items():
        shares = [r[key].get(cat, 0.0) for r in rows]
        if not any(shares):
            continue
        bars = ax.barh(range(len(rows)), shares, left=left, color=colour, label=cat)
        ax.bar_label(bars, labels=[f"{s:.0%}" if s >= 0.07 else "" for s in shares], label_type="center",
                     color="white", fontsize=8)
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.set_yticks(range(len(rows)), [r["model"] if key == "mac_share" else f"{r['model']} {r['precision']} "
                                     f"({r['target']})" for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(lambda x, _pos: f"{x:.0%}")
    ax.legend(ncols=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=8)
    return _img(plot_id, what, fig)


def to_html(doc: dict) -> str:
    e = html.escape
    cols = columns(doc)
    table = ["<table id='compare'><tr>" + "".join(f"<th>{e(t)}</th>" for _, t in cols) + "</tr>"]
    for r in doc["rows"]:
        c = cells(r)
        cls = "front" if r["on_front"] else ("error" if r["status"] != "measured" else "")
        table.append(f"<tr class='{cls}'>" + "".join(
            f"<td{'' if k in ('candidate', 'target', 'kind', 'budget') else ' class=num'}>{e(c[k])}</td>"
            for k, _ in cols) + "</tr>")
    table.append("</table>")
    parts = [f"<h1>edgehybrid compare</h1><p class='meta'>{e(doc['created'])} · edgehybrid "
             f"{e(str(doc['edgehybrid_version']))} · {len(doc['rows'])} candidates in {doc['seconds']:.0f} s</p>",
             "<h2>Setup</h2>" + "".join(f"<p class='meta'>{e(line)}</p>" for line in setup_lines(doc))]
    if doc["choice"]:
        verdict = "Within budget" if doc["choice"]["fits"] else "Over budget"
        parts.append(f"<p id='choice'><b>{verdict}:</b> {e(doc['choice']['line'])}</p>")
    parts.append("<h2>Candidates</h2><div class='wide'>" + "".join(table) + "</div>")
    extra = notes(doc)
    if extra:
        parts.append("<ul>" + "".join(f"<li class='note'>{e(n)}</li>" for n in extra) + "</ul>")
    for target in doc["targets"]:
        if any(r["target"] == target and r["latency_ms"] and r["accuracy"].get("value") is not None
               for r in doc["rows"]):
            parts.append(f"<h2>Accuracy against latency: {e(target)}</h2>" + _scatter(doc, target))
    if any(r["time_share"] for r in doc["rows"]):
        parts.append("<h2>Where the time goes (per-op profile)</h2>"
                     + _share_bars(doc, "time_share", "plot-time-share",
                                   "Share of runtime time in attention, convolution, normalization, other"))
    if any(r["mac_share"] for r in doc["rows"]):
        parts.append("<h2>Where the MACs go (FP32 model)</h2>"
                     + _share_bars(doc, "mac_share", "plot-mac-share", "Share of MACs in attention, convolution, other"))
    return html_page("edgehybrid compare", parts,
                     "body{max-width:1400px}.wide{overflow-x:auto}#compare td,#compare th{white-space:nowrap}"
                     "tr.front td{background:#f3f8ee}#choice{font-size:1.05em}\n")


def check_report_path(path: Path) -> str:
    return check_output_file(path, _SUFFIXES, "--report")


def write_report(doc: dict, path: Path) -> Path:
    """``doc`` as JSON, Markdown or HTML by the file's suffix, written atomically."""
    from edgehybrid.profiling.report import write_report as write

    return write(doc, path, markdown=to_markdown, page=to_html, option="--report")
