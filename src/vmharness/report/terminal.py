"""The terminal summary: counts per status by platform, source and package set, then the runs
that did not pass (with reason and log dir), then the comparison with a previous run if given.

Guest and spec strings (titles, labels, reasons, test names) are printed as plain Text, never
as rich markup (a test named `test_open[/a]` is text), after removing control characters, so a
message can neither restyle nor take over the terminal, nor stop the report.
"""

from __future__ import annotations

from collections import defaultdict

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from vmharness.report import (
    PENDING,
    STATUS_ORDER,
    ReportInput,
    fmt_duration,
    is_failing,
    one_line,
    run_label,
    status_of,
    summarize,
)
from vmharness.report.compare import Change, Comparison

STATUS_STYLES: dict[str, str] = {
    "pass": "green",
    "fail": "bold red",
    "install": "bold magenta",
    "update": "dark_orange",
    "cleanup": "yellow",
    "ignore": "green3",
    "timeout": "bold blue",
    "died": "bold white on grey23",
    PENDING: "grey58",
}


def _status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def summary_table(inp: ReportInput) -> Table:
    """Counts per status, grouped by platform, source and package set (rows) with a total."""
    groups: dict[str, dict[str, dict[str, int]]] = {
        "platform": defaultdict(lambda: defaultdict(int)),
        "source": defaultdict(lambda: defaultdict(int)),
        "package set": defaultdict(lambda: defaultdict(int)),
    }
    for run, result in inp.entries:
        status = status_of(result)
        platform, source, package_set = run.key
        for group, name in (
            ("platform", platform),
            ("source", source),
            ("package set", package_set),
        ):
            groups[group][name][status] += 1
    summary = summarize(inp.entries)
    # Statuses no run has are left out, except pass and fail (so the table keeps its shape).
    shown = [s for s in STATUS_ORDER if s in ("pass", "fail") or summary.counts.get(s)]
    extra = sorted(s for s in summary.counts if s not in STATUS_ORDER and summary.counts[s])
    shown += extra

    table = Table(
        title=Text(f"{one_line(inp.title, 200)}: {summary.total} runs"),
        title_justify="left",
        show_footer=True,
        pad_edge=False,
        box=None,
        header_style="bold",
    )
    table.add_column(
        "", footer=Text("total", style="bold"), no_wrap=True, overflow="ellipsis", max_width=60
    )
    table.add_column("runs", justify="right", footer=str(summary.total))
    for s in shown:
        table.add_column(
            Text(s, style=STATUS_STYLES.get(s, "")),
            justify="right",
            footer=_count(summary.counts.get(s, 0), s),
        )
    for i, (group, rows) in enumerate(groups.items()):
        table.add_row(Text(group, style="bold underline"), *([""] * (len(shown) + 1)))
        names = list(rows)
        for j, name in enumerate(names):
            counts = rows[name]
            table.add_row(
                Text(one_line(name, 200)),
                str(sum(counts.values())),
                *(_count(counts.get(s, 0), s) for s in shown),
                end_section=i < len(groups) - 1 and j == len(names) - 1,
            )
    return table


def _count(n: int, status: str) -> Text:
    if not n:
        return Text("·", style="dim")
    return Text(str(n), style=STATUS_STYLES.get(status, ""))


def failures_table(inp: ReportInput, limit: int) -> Table | None:
    bad = [
        (run, result)
        for run, result in inp.entries
        if result is not None and is_failing(status_of(result))
    ]
    if not bad:
        return None
    table = Table(
        title=f"Runs that did not pass: {len(bad)}",
        title_justify="left",
        box=None,
        pad_edge=False,
        header_style="bold",
    )
    table.add_column("id", no_wrap=True)
    table.add_column("run", overflow="fold", ratio=3)
    table.add_column("status", no_wrap=True)
    table.add_column("reason", overflow="fold", ratio=3)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("logs", overflow="fold", ratio=2)
    for run, result in bad[:limit]:
        assert result is not None
        table.add_row(
            Text(run.id),
            Text(one_line(run_label(run), 200)),
            _status_text(result.status),
            Text(one_line(result.reason, 160)),
            fmt_duration(result.duration_s),
            Text(one_line(result.log_dir, 200)),
        )
    if len(bad) > limit:
        table.caption = f"… and {len(bad) - limit} more (all are in report.html)"
        table.caption_justify = "left"
    return table


def comparison_renderable(cmp: Comparison, limit: int) -> Group:
    counts = cmp.counts()
    head = Text("Compared with ", style="bold")
    head.append(one_line(cmp.previous_title or "the previous run", 80))
    if cmp.previous_started:
        head.append(f" ({one_line(cmp.previous_started, 40)})")
    head.append(": ")
    parts = [
        ("new failures", counts["new_failures"], "bold red"),
        ("fixed", counts["fixed"], "green"),
        ("still failing", counts["still_failing"], "red"),
        ("new runs", counts["new_runs"], ""),
        ("gone", counts["gone_runs"], ""),
    ]
    if counts["not_compared"]:
        parts.append(("not finished on one side", counts["not_compared"], "dim"))
    for i, (name, n, style) in enumerate(parts):
        if i:
            head.append(", ")
        head.append(f"{n} {name}", style=style if n else "dim")
    items: list = [head]
    for title, changes in (("New failures", cmp.new_failures), ("Fixed", cmp.fixed)):
        if not changes:
            continue
        table = Table(
            title=title, title_justify="left", box=None, pad_edge=False, show_header=False
        )
        table.add_column("id", no_wrap=True)
        table.add_column("run", overflow="fold", ratio=3)
        table.add_column("was -> now", no_wrap=True)
        table.add_column("reason", overflow="fold", ratio=3)
        for c in changes[:limit]:
            table.add_row(
                Text(c.run_id or ""),
                Text(one_line(c.label, 200)),
                _was_now(c),
                Text(one_line(c.reason, 160)),
            )
        if len(changes) > limit:
            table.caption = f"… and {len(changes) - limit} more"
            table.caption_justify = "left"
        items.append(table)
    return Group(*items)


def _was_now(c: Change) -> Text:
    t = _status_text(c.previous_status or "-")
    t.append(" -> ")
    t.append_text(_status_text(c.status or "-"))
    return t


def hosts_table(inp: ReportInput, limit: int) -> Table | None:
    """Infrastructure failures by execute host (the list the OSG mails every night)."""
    if not inp.infra_by_host:
        return None
    table = Table(title="Infrastructure failures by execute host", title_justify="left")
    table.add_column("host")
    table.add_column("died", justify="right")
    table.add_column("ok", justify="right")
    table.add_column("runs (attempt): last reason")
    table.add_column("deny-list")
    for h in inp.infra_by_host[:limit]:
        runs = ", ".join(f"{r} ({n})" for r, n, _ in h.failures[:8])
        if len(h.failures) > 8:
            runs += f", ... {len(h.failures) - 8} more"
        table.add_row(
            Text(h.host),
            str(len(h.failures)),
            str(h.runs_ok),
            Text(f"{runs}: {one_line(h.failures[-1][2], 120)}"),
            Text(one_line(h.denied, 80) if h.denied else "-"),
        )
    return table


def render_terminal(
    inp: ReportInput,
    console: Console | None = None,
    *,
    comparison: Comparison | None = None,
    limit: int = 40,
) -> None:
    """Print the summary table, the runs that did not pass (at most `limit`), and the comparison."""
    console = console or Console()
    console.print(summary_table(inp))
    bad = failures_table(inp, limit)
    if bad is not None:
        console.print()
        console.print(bad)
    hosts = hosts_table(inp, limit)
    if hosts is not None:
        console.print()
        console.print(hosts)
    if comparison is not None:
        console.print()
        console.print(comparison_renderable(comparison, limit))
    summary = summarize(inp.entries)
    line = Text(f"{summary.passed}/{summary.total} passed", style="bold")
    if summary.counts.get(PENDING):
        line.append(f", {summary.counts[PENDING]} not finished", style="grey58")
    console.print()
    console.print(line)
