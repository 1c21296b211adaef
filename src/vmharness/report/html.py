"""report.html: one self-contained page (inline CSS and JS, nothing fetched) with the matrix.

Platforms are columns, source x package set are rows; a cell holds the run(s) of that
combination, coloured by status, showing "ok / skipped / failed" test counts. Hovering shows a
summary (title attribute), clicking opens a details panel built by the page's script from an
embedded JSON block; without JavaScript a cell is a link to the run's logs.

Safety: the template autoescapes everything; the JSON block is HTML-safe (jinja's tojson escapes
< > & '); the script only sets textContent; hrefs are relative, percent-quoted paths or file://
URIs. Guest strings are cut to sane lengths so a runaway traceback cannot bloat the page.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from pathlib import Path

import jinja2
from markupsafe import Markup, escape

from vmharness.report import (
    PENDING,
    STATUS_COLOURS,
    STATUS_DESCRIPTIONS,
    STATUS_ORDER,
    ReportInput,
    clean,
    colours,
    fmt_duration,
    is_failing,
    log_href,
    one_line,
    status_of,
    summarize,
)
from vmharness.report.compare import Change, Comparison
from vmharness.results.model import RunResult
from vmharness.spec import Run
from vmharness.wire.files import write_atomic

TEMPLATE = "matrix.html.j2"
MAX_MESSAGE = 1000  # characters of one failure message in the page (the logs have it all)
MAX_RUN_MESSAGES = 6000  # characters of messages per run; later problems are listed without
MAX_PROBLEMS = 40  # problems listed per run in the page
MAX_REASON = 500
MAX_FIELD = 200  # host, accelerator, version strings, ...
MAX_VERSIONS = 60
MAX_LISTED = 500  # rows per list (runs that did not pass, each comparison bucket)
# Statuses ordered by how bad they are, for a cell holding several runs.
SEVERITY = ("died", "timeout", "install", "update", "fail", "cleanup", PENDING, "ignore", "pass")

_CSS_NAME = re.compile(r"[^a-z0-9-]+")


def css_class(status: str) -> str:
    return "s-" + (_CSS_NAME.sub("", status.lower()) if status in STATUS_COLOURS else "unknown")


def _wbr(text: str) -> Markup:
    """Escape, and let long names (platform column headers) wrap: preferably after a dot (each
    dot-separated part is an inline block), inside a part after _ / - only when it must."""
    parts = re.split(r"(?<=\.)", text)
    return Markup(
        "".join(
            '<span class="w">' + re.sub(r"([_/-])", r"\1<wbr>", str(escape(part))) + "</span>"
            for part in parts
            if part
        )
    )


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["wbr"] = _wbr
    env.policies["json.dumps_kwargs"] = {
        "sort_keys": False,
        "ensure_ascii": False,
        "separators": (",", ":"),
    }
    return env


def _cell_text(result: RunResult | None) -> str:
    if result is None:
        return "pending"
    c = result.counts
    if c.ok or c.skip or c.fail or c.error:
        return f"{c.ok} / {c.skip} / {c.fail + c.error}"
    return clean(result.status, 20)


def _tooltip(run: Run, result: RunResult | None, status: str) -> str:
    lines = [" · ".join(run.key), f"run {run.id}: {status}"]
    if result is not None:
        if result.reason:
            lines[-1] += " — " + one_line(result.reason, 160)
        c = result.counts
        lines.append(f"{c.ok} ok, {c.skip} skipped, {c.fail} failed, {c.error} errors")
        extra = [
            fmt_duration(result.duration_s),
            one_line(result.accelerator, 40),
            one_line(result.host, 60),
            f"attempt {result.attempt}",
        ]
        lines.append(" · ".join(x for x in extra if x))
        if result.problems:
            lines.append(
                f"{len(result.problems) + result.problems_more} problem(s), e.g. "
                + one_line(f"{result.problems[0].module}.{result.problems[0].test}", 120)
            )
    return "\n".join(lines)


def _run_data(run: Run, result: RunResult | None, href: str) -> dict:
    """What the details panel shows, with short keys (this is repeated 1,564 times)."""
    status = status_of(result)
    d: dict = {
        "id": run.id,
        "p": run.platform.name,
        "s": run.source.label,
        "k": run.package_set.label,
        "st": status,
        "sc": css_class(status),
    }
    if href:
        d["log"] = href
    if result is None:
        return d
    c = result.counts
    d.update(
        r=clean(result.reason, MAX_REASON),
        c=[c.ok, c.skip, c.fail, c.error],
        d=fmt_duration(result.duration_s),
        acc=clean(result.accelerator, MAX_FIELD),
        host=clean(result.host, MAX_FIELD),
        att=result.attempt,
    )
    if result.exit_code is not None:
        d["ex"] = result.exit_code
    if result.boot:
        d["boot"] = clean(result.boot, MAX_FIELD)
    if result.hold_reason:
        d["hold"] = clean(result.hold_reason, MAX_REASON)
    if result.phases:
        d["ph"] = {clean(k, 40): fmt_duration(v) for k, v in list(result.phases.items())[:20]}
    if result.versions:
        d["v"] = {
            clean(k, 80): clean(v, MAX_FIELD)
            for k, v in list(result.versions.items())[:MAX_VERSIONS]
        }
        if len(result.versions) > MAX_VERSIONS:
            d["vn"] = len(result.versions)
    if result.problems:
        budget = MAX_RUN_MESSAGES
        listed = []
        for p in result.problems[:MAX_PROBLEMS]:
            message = clean(p.message, min(MAX_MESSAGE, budget)) if budget > 0 else ""
            budget -= len(message)
            listed.append(
                [
                    clean(p.kind, 20),
                    clean(".".join(x for x in (p.module, p.cls, p.test) if x), 300),
                    "" if p.reason in ("", "-") else clean(p.reason, MAX_FIELD),
                    message,
                ]
            )
        d["pr"] = listed
        d["prn"] = len(result.problems) + result.problems_more
    return d


def _ordered(values) -> list[str]:
    return list(dict.fromkeys(values))


def build_view(inp: ReportInput, comparison: Comparison | None = None) -> dict:
    """The template's context: the matrix rows, totals, lists, and the panel's JSON data."""
    entries = inp.entries
    platforms = _ordered(run.platform.name for run, _ in entries)
    sources = _ordered(run.source.label for run, _ in entries)
    psets = _ordered(run.package_set.label for run, _ in entries)
    new_ids = comparison.new_failure_ids() if comparison is not None else set()
    col = {p: i for i, p in enumerate(platforms)}

    grid: dict[tuple[str, str], list[list[dict]]] = {}
    runs_data: dict[str, dict] = {}
    sets: dict[str, list[str]] = {}
    srcs: dict[str, dict] = {}
    col_pass = [0] * len(platforms)
    col_total = [0] * len(platforms)
    failing: list[dict] = []
    for run, result in entries:
        status = status_of(result)
        href = log_href(inp.run_dir, run, result)
        row = grid.setdefault((run.source.label, run.package_set.label), [[] for _ in platforms])
        i = col[run.platform.name]
        row[i].append(
            {
                "id": run.id,
                "status": status,
                "cls": css_class(status) + (" new" if run.id in new_ids else ""),
                "text": _cell_text(result),
                "title": _tooltip(run, result, status),
                "href": href or f"#run-{run.id}",
            }
        )
        col_total[i] += 1
        col_pass[i] += status in ("pass", "ignore")
        runs_data[run.id] = _run_data(run, result, href)
        sets.setdefault(run.package_set.label, list(run.package_set.packages))
        srcs.setdefault(
            run.source.label, {"repos": list(run.source.repos), "up": list(run.source.upgrade_to)}
        )
        if result is not None and is_failing(status):
            failing.append(
                {
                    "id": run.id,
                    "label": " / ".join(run.key),
                    "status": status,
                    "cls": css_class(status),
                    "reason": one_line(result.reason, 200),
                    "duration": fmt_duration(result.duration_s),
                    "href": href,
                }
            )

    rank = {s: i for i, s in enumerate(SEVERITY)}
    rows = []
    for source in sources:
        present = [p for p in psets if (source, p) in grid]
        for j, pset in enumerate(present):
            cells = grid[(source, pset)]
            for cell in cells:
                cell.sort(key=lambda r: rank.get(r["status"], -1))
            rows.append(
                {
                    "source": source,
                    "pset": pset,
                    "first": j == 0,
                    "span": len(present),
                    "cells": cells,
                    "allpass": all(r["status"] in ("pass", "ignore") for c in cells for r in c),
                    "filter": f"{source} {pset}".lower(),
                }
            )
    failing.sort(key=lambda f: (rank.get(f["status"], -1), f["id"]))

    summary = summarize(entries)
    statuses = [s for s in STATUS_ORDER] + sorted(
        s for s in summary.counts if s not in STATUS_ORDER and summary.counts[s]
    )
    legend = [
        {
            "status": s,
            "cls": css_class(s),
            "count": summary.counts.get(s, 0),
            "desc": STATUS_DESCRIPTIONS.get(s, ""),
        }
        for s in statuses
    ]
    return {
        "title": inp.title,
        "started": inp.started,
        "generated": inp.generated,
        "backend": inp.backend,
        "run_dir": str(inp.run_dir),
        "summary": summary,
        "pct": (100.0 * summary.passed / summary.total) if summary.total else 0.0,
        "legend": legend,
        "colours": [(css_class(s), *colours(s)) for s in (*STATUS_COLOURS, "unknown")],
        "platforms": platforms,
        "col_stats": list(zip(col_pass, col_total, strict=True)),
        "rows": rows,
        "failing": failing[:MAX_LISTED],
        "failing_more": max(0, len(failing) - MAX_LISTED),
        "failing_total": len(failing),
        "comparison": _comparison_view(comparison) if comparison is not None else None,
        "hosts": [
            {
                "host": h.host,
                "died": len(h.failures),
                "ok": h.runs_ok,
                "denied": h.denied,
                "failures": [
                    {"id": r, "attempt": n, "reason": one_line(why, 300)}
                    for r, n, why in h.failures[:MAX_LISTED]
                ],
            }
            for h in inp.infra_by_host
        ],
        "data": {"runs": runs_data, "sets": sets, "sources": srcs},
    }


def _change_view(c: Change) -> dict:
    prev, now = c.previous_status or "", c.status or ""
    return {
        "id": c.run_id or "",
        "label": c.label,
        "prev": prev,
        "prev_cls": css_class(prev) if prev else "",
        "now": now,
        "now_cls": css_class(now) if now else "",
        "reason": one_line(c.reason, 200),
        "new_problems": [one_line(p, 200) for p in c.new_problems[:5]],
        "new_more": max(0, len(c.new_problems) - 5),
        "fixed_problems": len(c.fixed_problems),
    }


def _comparison_view(cmp: Comparison) -> dict:
    titles = {
        "new_failures": "New failures",
        "fixed": "Fixed",
        "still_failing": "Still failing",
        "new_runs": "New runs",
        "gone_runs": "Gone runs",
        "not_compared": "Not finished on one side",
    }
    buckets = []
    for name, title in titles.items():
        changes = getattr(cmp, name)
        buckets.append(
            {
                "name": name,
                "title": title,
                "count": len(changes),
                "open": name == "new_failures",
                "items": [_change_view(c) for c in changes[:MAX_LISTED]],
                "more": max(0, len(changes) - MAX_LISTED),
            }
        )
    return {
        "previous_title": cmp.previous_title,
        "previous_started": cmp.previous_started,
        "buckets": buckets,
        "unchanged_passing": cmp.unchanged_passing,
    }


_OWN_STYLE = re.compile(r'<style id="vmh-css">(.*?)</style>', re.S)
_OWN_SCRIPT = re.compile(r'<script id="vmh-js">(.*?)</script>', re.S)


def _csp_hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


def render_html(inp: ReportInput, *, comparison: Comparison | None = None) -> str:
    page = _env().get_template(TEMPLATE).render(**build_view(inp, comparison))
    # The page's Content-Security-Policy allows only its own style and script, by hash: even a
    # string that slipped past escaping could not run code or fetch anything. Both blocks sit in
    # <head>, before any data, so the first match is ours.
    style, script = _OWN_STYLE.search(page), _OWN_SCRIPT.search(page)
    assert style is not None and script is not None
    return page.replace("__VMH_STYLE_HASH__", _csp_hash(style.group(1)), 1).replace(
        "__VMH_SCRIPT_HASH__", _csp_hash(script.group(1)), 1
    )


def write_html(inp: ReportInput, path: Path, *, comparison: Comparison | None = None) -> Path:
    return write_atomic(Path(path), render_html(inp, comparison=comparison))
