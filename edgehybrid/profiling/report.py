"""Profile results rendered for people: a comparison table, JSON, Markdown and a self-contained HTML page.

The input is a list of per-artifact profile dicts in the ``edgehybrid.profile/1`` schema (what
``probe.py`` prints). A profile that could not run is a dict with ``"error"`` (one line) next to whatever
identifies it (``artifact``/``artifact_name``, ``runtime``, ``device``); it gets a row with empty figures and
a note instead of being dropped, so a report never silently loses an artifact.

The HTML page has no external references at all (no scripts, fonts or stylesheets from elsewhere): plots
are PNGs drawn with matplotlib's Agg canvas and embedded as base64, so the file can be attached to a CI run
or mailed and still open offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path

from edgehybrid import __version__
from edgehybrid.errors import EdgeHybridError
from edgehybrid.fsutil import check_output_file, write_report_file

SCHEMA = "edgehybrid.profile-report/1"
CATEGORIES = ("front_end", "attention", "convolution", "normalization", "other")  # front_end: speech models only


def categories_of(profiles: list[dict]) -> list[str]:
    """The categories to show: every one but ``front_end`` where no profile has a front end."""
    present = {c for p in profiles for c in (p["per_op"].get("by_category") or {})}
    return [c for c in CATEGORIES if c != "front_end" or c in present]
_COLOURS = {"front_end": "#e7298a", "attention": "#d95f02", "convolution": "#1b9e77", "normalization": "#7570b3",
            "other": "#999999"}
_SUFFIXES = (".json", ".md", ".html")
_TOP_OPS = 12  # op types shown per artifact; the rest are summed into the table's total, not plotted

# (key in a comparison row, column title, format) in display order; shared by Markdown and HTML
_COLUMNS = [
    ("artifact_name", "artifact", "{}"), ("runtime", "runtime", "{}"), ("size_mb", "size MB", "{:.2f}"),
    ("load_ms", "load ms", "{:.1f}"), ("p50_ms", "p50 ms", "{:.2f}"), ("p90_ms", "p90 ms", "{:.2f}"),
    ("p99_ms", "p99 ms", "{:.2f}"), ("mean_ms", "mean ms", "{:.2f}"), ("std_ms", "std ms", "{:.2f}"),
    ("min_ms", "min ms", "{:.2f}"), ("max_ms", "max ms", "{:.2f}"), ("throughput_ips", "img/s", "{:.1f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.1f}"),
    ("peak_above_baseline_mb", "+model MB", "{:.1f}"), ("p50_ratio", "p50 vs first", "{:.2f}x"),
    ("memory_ratio", "memory vs first", "{:.2f}x"),
]
_RATIOS = ("p50_ratio", "memory_ratio")
#: runtimes whose Python API exposes per-op time (the probe's --per-op); the others say why not in the probe
PER_OP_RUNTIMES = ("onnxruntime",)


def _columns(rows: list[dict]) -> list[tuple[str, str, str]]:
    """The comparison's columns: the "vs first" ratios only when there is something to compare."""
    return [c for c in _COLUMNS if len(rows) > 1 or c[0] not in _RATIOS]


def _ok(profile: dict) -> bool:
    return not profile.get("error") and isinstance(profile.get("latency_ms"), dict)


def _name(profile: dict) -> str:
    return profile.get("artifact_name") or Path(str(profile.get("artifact", "?"))).name


def _ratio(value, base):
    # a zero or missing baseline (e.g. a model that adds no measurable memory) has no meaningful ratio
    if value is None or not base:
        return None
    return value / base


def comparison(profiles: list[dict]) -> list[dict]:
    """One row per artifact; ratios are against the first artifact that ran (the baseline, 1.00x)."""
    rows = []
    base = next((p for p in profiles if _ok(p)), None)
    for p in profiles:
        row = {"artifact_name": _name(p), "runtime": p.get("runtime"), "device": p.get("device", "local"),
               "baseline": p is base, "error": p.get("error")}
        if not _ok(p):
            rows.append(row | {k: None for k, _, _ in _COLUMNS if k not in row})
            continue
        lat, mem = p["latency_ms"], p.get("memory") or {}
        row |= {
            "size_mb": p.get("size_bytes", 0) / 1e6, "load_ms": p.get("load_ms"),
            "p50_ms": lat.get("p50"), "p90_ms": lat.get("p90"), "p99_ms": lat.get("p99"),
            "mean_ms": lat.get("mean"), "std_ms": lat.get("std"), "min_ms": lat.get("min"), "max_ms": lat.get("max"),
            "throughput_ips": p.get("throughput_ips"), "peak_rss_mb": mem.get("peak_rss_mb"),
            "peak_above_baseline_mb": mem.get("peak_above_baseline_mb"),
            "p50_ratio": _ratio(lat.get("p50"), base["latency_ms"].get("p50")),
            # the model's own memory (above the runtime's import baseline) is what differs between two
            # artifacts; total RSS would mostly compare the runtimes' libraries
            "memory_ratio": _ratio(mem.get("peak_above_baseline_mb"),
                                   (base.get("memory") or {}).get("peak_above_baseline_mb")),
        }
        rows.append(row)
    return rows


def to_json(profiles: list[dict]) -> dict:
    """The report document: the profiles as given plus their comparison."""
    return {"schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "edgehybrid_version": __version__, "profiles": list(profiles), "comparison": comparison(profiles)}


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "—"
    return fmt.format(value)


def _setup_lines(profiles: list[dict]) -> list[str]:
    """'machine · threads · warm-up · runs' lines; one line when every artifact ran the same way."""
    lines = {}
    for p in profiles:
        if not _ok(p):
            continue
        m = p.get("machine") or {}
        timed = f"min {p['min_time_s']} s ({p.get('runs')} runs)" if p.get("min_time_s") else f"{p.get('runs')} runs"
        line = (f"{m.get('cpu_model', '?')} ({m.get('cores', '?')} cores, {m.get('platform', '?')}, "
                f"Python {m.get('python', '?')}) on {p.get('device', 'local')} · threads {p.get('threads')} · "
                f"warm-up {p.get('warmup')} · {timed}")
        lines.setdefault(line, []).append(_name(p))
    if len(lines) == 1:
        return list(lines)
    return [f"{', '.join(names)}: {line}" for line, names in lines.items()]


def _notes(profiles: list[dict]) -> list[str]:
    notes = []
    for p in profiles:
        if not _ok(p):
            notes.append(f"{_name(p)} ({p.get('runtime') or 'runtime ?'}) could not run: {p.get('error')}")
        elif not p.get("per_op") and p.get("runtime") in PER_OP_RUNTIMES:
            notes.append(f"{_name(p)}: no per-op timing (profile with --per-op to get it)")
        elif not p.get("per_op"):
            notes.append(f"{_name(p)}: no per-op timing: {p.get('runtime')}'s Python API exposes none")
        elif p["per_op"].get("missing"):
            notes.append(f"{_name(p)}: per-op timing unavailable: {p['per_op']['missing']}")
    return notes


def _has_ops(p: dict) -> bool:
    return _ok(p) and bool(p.get("per_op")) and bool(p["per_op"].get("by_op_type"))


def _md(text) -> str:
    # a '|' inside a cell would end it; newlines would end the table
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: dict) -> str:
    """A pull-request comment: summary table, category shares, setup line, notes."""
    profiles, rows = doc["profiles"], doc["comparison"]
    out = ["### edgehybrid profile", "",
           "| " + " | ".join(title for _, title, _ in _columns(rows)) + " |",
           "|" + "|".join(" --- " if k in ("artifact_name", "runtime") else " ---: " for k, _, _ in _columns(rows)) + "|"]
    for row in rows:
        out.append("| " + " | ".join(_md(_cell(row, k, f)) for k, _, f in _columns(rows)) + " |")
    with_ops = [p for p in profiles if _has_ops(p)]
    if with_ops:
        shown = categories_of(with_ops)
        out += ["", "**Where the time goes** (share of per-op time)", "",
                "| artifact | " + " | ".join(shown) + " | top op types |",
                "| --- |" + " ---: |" * len(shown) + " --- |"]
        for p in with_ops:
            cats = p["per_op"].get("by_category") or {}
            top = ", ".join(f"{o['op_type']} {o['share']:.0%}" for o in p["per_op"]["by_op_type"][:3])
            out.append(f"| {_md(_name(p))} | " + " | ".join(f"{cats.get(c, 0):.0%}" for c in shown)
                       + f" | {_md(top)} |")
    out.append("")
    out += [f"Setup: {_md(line)}  " for line in _setup_lines(profiles)]
    notes = _notes(profiles)
    if notes:
        out += ["", *[f"- {_md(n)}" for n in notes]]
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------- HTML


def _figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas, without pyplot (no global state, no GUI backend chosen)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise EdgeHybridError("the HTML report needs matplotlib, which is not installed; "
                              "install it with: pip install matplotlib") from exc
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(plot_id: str, alt: str, fig) -> str:
    return (f'<img id="{plot_id}" class="plot" alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{_png(fig)}">')


def _latency_plot(profiles: list[dict]) -> str:
    """Box plot of every timed run per artifact, with the runs themselves as jittered points."""
    import numpy as np

    ran = [p for p in profiles if _ok(p) and p.get("samples_ms")]
    fig = _figure(9, 1.0 + 0.55 * len(ran))
    ax = fig.add_subplot()
    data = [np.asarray(p["samples_ms"], dtype=float) for p in ran]
    # matplotlib 3.10 renamed vert=False to orientation="horizontal" (and deprecates vert); we accept >= 3.7
    import matplotlib

    major_minor = tuple(int(x) for x in matplotlib.__version__.split(".")[:2])
    horizontal = {"orientation": "horizontal"} if major_minor >= (3, 10) else {"vert": False}
    ax.boxplot(data, showfliers=False, widths=0.5, medianprops={"color": "#d95f02", "linewidth": 2}, **horizontal)
    rng = np.random.default_rng(0)  # fixed jitter: the same profiles give the same picture
    for i, d in enumerate(data, start=1):
        ax.scatter(d, i + rng.uniform(-0.18, 0.18, d.size), s=8, alpha=0.45, color="#1f78b4", zorder=3)
    ax.set_yticks(range(1, len(ran) + 1), [_name(p) for p in ran])
    ax.invert_yaxis()  # first artifact on top, as in the table
    ax.set_xlabel("latency per inference (ms)")
    ax.grid(axis="x", alpha=0.3)
    return _img("plot-latency", "Latency distribution of every timed run per artifact", fig)


def _per_op_plot(index: int, p: dict) -> str:
    ops = p["per_op"]["by_op_type"][:_TOP_OPS]
    fig = _figure(9, 0.8 + 0.3 * len(ops))
    ax = fig.add_subplot()
    ms = [o["ms"] for o in ops]
    bars = ax.barh(range(len(ops)), ms, color="#1b9e77")
    ax.bar_label(bars, labels=[f"{o['ms']:.2f} ms · {o['share']:.0%}" for o in ops], padding=3, fontsize=8)
    ax.set_yticks(range(len(ops)), [f"{o['op_type']} ×{o.get('count', '?')}" for o in ops])
    ax.invert_yaxis()
    ax.set_xlim(0, max(ms or [1]) * 1.3)  # room for the labels
    ax.set_xlabel(f"ms per inference ({p['per_op'].get('source', '')})")
    ax.grid(axis="x", alpha=0.3)
    return _img(f"plot-per-op-{index}", f"Time per op type for {_name(p)}", fig)


def _category_plot(profiles: list[dict]) -> str:
    """One horizontal stacked bar per artifact: attention / convolution / normalization / other."""
    with_ops = [p for p in profiles if _has_ops(p)]
    fig = _figure(9, 1.3 + 0.45 * len(with_ops))
    ax = fig.add_subplot()
    left = [0.0] * len(with_ops)
    for cat in categories_of(with_ops):
        shares = [(p["per_op"].get("by_category") or {}).get(cat, 0.0) for p in with_ops]
        bars = ax.barh(range(len(with_ops)), shares, left=left, color=_COLOURS[cat], label=cat)
        ax.bar_label(bars, labels=[f"{s:.0%}" if s >= 0.06 else "" for s in shares], label_type="center",
                     color="white", fontsize=8)
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.set_yticks(range(len(with_ops)), [_name(p) for p in with_ops])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(lambda x, _pos: f"{x:.0%}")
    ax.legend(ncols=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return _img("plot-categories", "Share of per-op time: attention, convolution, normalization, other", fig)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;max-width:1150px;
 margin:2em auto;padding:0 1em;line-height:1.45}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.9em}table{border-collapse:collapse;font-size:.88em;margin:.6em 0}
th,td{padding:.3em .6em;border-bottom:1px solid #e4e4e4}th{background:#f4f4f4;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr.error td{color:#a33}
tr.baseline td:first-child::after{content:" (baseline)";color:#888;font-size:.85em}
.plot{max-width:100%;height:auto;display:block;margin:.5em 0}.note{color:#7a4b00}code{font-size:.95em}
"""


def _details_table(profiles: list[dict]) -> str:
    rows = []
    for p in profiles:
        if not _ok(p):
            continue
        inp, mem = p.get("input") or {}, p.get("memory") or {}
        arena = f"{mem['arena_mb']:.1f} MB" if mem.get("arena_mb") is not None else (mem.get("arena_note") or "—")
        cells = [_name(p), p.get("backend") or p.get("runtime"),
                 f"{inp.get('name')} {inp.get('shape')} {inp.get('dtype')}",
                 _cell(p, "first_inference_ms", "{:.1f}"), _cell(mem, "baseline_rss_mb", "{:.1f}"), arena,
                 (p.get("sha256") or "")[:12]]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    head = ["artifact", "backend", "input", "first run ms", "baseline RSS MB", "runtime arena", "sha256"]
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"
            if rows else "")


def to_html(doc: dict) -> str:
    """A self-contained page: comparison, latency distribution, per-op and category plots, setup."""
    profiles, rows = doc["profiles"], doc["comparison"]
    e = html.escape
    table = ["<table id='comparison'><tr>" + "".join(f"<th>{e(t)}</th>" for _, t, _ in _columns(rows)) + "</tr>"]
    for row in rows:
        cls = "error" if row.get("error") else ("baseline" if row.get("baseline") and len(rows) > 1 else "")
        cells = "".join(f"<td{'' if k in ('artifact_name', 'runtime') else ' class=num'}>{e(_cell(row, k, f))}</td>"
                        for k, _, f in _columns(rows))
        table.append(f"<tr class='{cls}'>{cells}</tr>")
    table.append("</table>")
    parts = [(f"<h1>edgehybrid profile</h1><p class='meta'>{e(doc.get('created', ''))} · edgehybrid "
              f"{e(str(doc.get('edgehybrid_version', '')))}</p>"),
             "<h2>Setup</h2>" + "".join(f"<p class='meta'>{e(line)}</p>" for line in _setup_lines(profiles)),
             "<h2>Comparison</h2>" + "".join(table)
             + "<p class='meta'>Latency is the runtime's run call alone"
             + ("; ratios are against the first artifact (the baseline)" if len(rows) > 1 else "")
             + ". Memory is the peak RSS of a fresh process; +model is that minus its RSS after importing the "
               "runtime (the model's own share).</p>"]
    notes = _notes(profiles)
    if notes:
        parts.append("<ul>" + "".join(f"<li class='note'>{e(n)}</li>" for n in notes) + "</ul>")
    if any(_ok(p) and p.get("samples_ms") for p in profiles):
        parts.append("<h2>Latency distribution</h2>" + _latency_plot(profiles))
    if any(_has_ops(p) for p in profiles):
        parts.append("<h2>Where the time goes: attention, convolution, normalization, other</h2>"
                     + _category_plot(profiles))
        for i, p in enumerate(profiles):
            if _has_ops(p):
                parts.append(f"<h2>Per-op time: {e(_name(p))}</h2>" + _per_op_plot(i, p))
    details = _details_table(profiles)
    if details:
        parts.append("<h2>Details</h2>" + details)
    return html_page("edgehybrid profile", parts)


def html_page(title: str, parts: list[str], extra_css: str = "") -> str:
    """A self-contained page (styles inline, plots as data URIs) of the given body parts."""
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}{extra_css}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def check_report_path(path: Path) -> str:
    """The report format (its suffix) for ``path``, or a one-line InputError; cheap, so callers check first."""
    return check_output_file(path, _SUFFIXES, "report file")


def write_report(doc: dict, path: Path, markdown=to_markdown, page=to_html, option: str = "report file") -> Path:
    """Write ``doc`` as JSON, Markdown (``markdown(doc)``) or HTML (``page(doc)``), chosen by the file's
    suffix, atomically."""
    path = Path(path)
    suffix = check_output_file(path, _SUFFIXES, option)
    text = {".json": lambda: json.dumps(doc, indent=2) + "\n", ".md": lambda: markdown(doc),
            ".html": lambda: page(doc)}[suffix]()
    write_report_file(path, text, option)
    return path
