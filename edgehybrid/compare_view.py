"""``edgehybrid compare`` in the terminal: the candidates' table, the front and the budget's verdict."""

from __future__ import annotations

from edgehybrid.compare_report import cells, columns, notes, setup_lines


def render(doc: dict, con) -> None:
    from rich.table import Table

    cols = columns(doc, compact=True)
    table = Table(title="edgehybrid compare", title_justify="left", pad_edge=False)
    for key, title in cols:
        table.add_column(title, justify="left" if key in ("candidate", "target", "kind", "budget") else "right",
                         no_wrap=key == "candidate")
    for r in doc["rows"]:
        c = cells(r)
        table.add_row(*[c[k] for k, _ in cols], style="bold" if r["on_front"] else None)
    con.print(table)
    for line in setup_lines(doc):
        con.print(line, markup=False, style="dim")
    for n in notes(doc):
        con.print(f"note: {n}", markup=False)
    if doc["choice"]:
        label = "within budget" if doc["choice"]["fits"] else "over budget"
        con.print(f"{label}: {doc['choice']['line']}", markup=False,
                  style="green" if doc["choice"]["fits"] else "red")
