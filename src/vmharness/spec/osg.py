"""The OSG's parameter-file dialect: what differs from ours.

The OSG's nightly parameter files (parameters.d/*.yaml) have our top-level shape but write each
source as one string, `[account:branch;] series; repo, repo [> [upgrade_series/]repo, repo]`,
name platforms that no recipe here is called (map them with a platform map), need packages in
every package set, and read results as osg-test output. A file is in this dialect when its
sources are strings; the rest of the file is read as ours (ours.py).
"""

from __future__ import annotations

import re

import yaml

from vmharness.errors import SpecError

from .merge import Acc, SourceDraft
from .models import Source
from .yamlread import Node, YamlDoc

_OSG_REF_RE = re.compile(r"^[\w-]+:[./\w-]+$")
_OSG_WORD_RE = re.compile(r"^[\w.+-]+$")
SOURCE_SYNTAX = "[account:branch;] series; repo, repo [> [series/]repo, repo]"


def is_osg_file(doc: YamlDoc, top: dict[str, tuple[Node, Node]]) -> bool:
    """OSG parameter files write sources as strings; vmharness files as mappings."""
    if "sources" not in top:
        return False
    items = top["sources"][1]
    if not isinstance(items, yaml.SequenceNode) or not items.value:
        return False
    first = items.value[0]
    osg = isinstance(first, yaml.ScalarNode)
    for i, item in enumerate(items.value):
        if isinstance(item, yaml.ScalarNode) != osg:
            raise doc.error(
                item,
                f"sources[{i}]",
                "sources mix the OSG string form and the vmharness mapping form",
                hint="write every source of a file the same way",
            )
    return osg


def read_source(doc: YamlDoc, node: Node, fld: str) -> SourceDraft:
    """`[account:branch;] series; repo, repo [> [upgrade_series/]repo, repo]`."""
    text = doc.string(node, fld)
    hint = f"the OSG source syntax is '{SOURCE_SYNTAX}', e.g. '24; osg > osg-testing'"

    def bad(message: str) -> SpecError:
        return doc.error(node, fld, f"{message} in source {text!r}", hint=hint)

    parts = [p.strip() for p in text.split(";")]
    ref: str | None = None
    if len(parts) == 3:
        ref, series, repo_text = parts
        if not _OSG_REF_RE.match(ref):
            raise bad(f"bad 'account:branch' {ref!r}")
    elif len(parts) == 2:
        series, repo_text = parts
    else:
        raise bad("expected 2 or 3 parts separated by ';'")
    if not _OSG_WORD_RE.match(series):
        raise bad(f"bad series {series!r}")
    halves = repo_text.split(">")
    if len(halves) > 2:
        raise bad("more than one '>'")

    def repo_list(part: str) -> tuple[str, ...]:
        names = tuple(r.strip() for r in part.split(","))
        for r in names:
            if not r:
                raise bad("an empty repository name")
            if not _OSG_WORD_RE.match(r):
                raise bad(f"bad repository name {r!r}")
        return names

    repos = repo_list(halves[0])
    upgrade: tuple[str, ...] = ()
    upgrade_series: str | None = None
    if len(halves) == 2:
        up = halves[1].strip()
        if "/" in up:
            upgrade_series, up = (s.strip() for s in up.split("/", 1))
            if not _OSG_WORD_RE.match(upgrade_series):
                raise bad(f"bad upgrade series {upgrade_series!r}")
        upgrade = repo_list(up)
    label = f"{series}; {', '.join(repos)}"
    if upgrade:
        label += " > " + (f"{upgrade_series}/" if upgrade_series else "") + ", ".join(upgrade)
    source = Source(
        label=label,
        repos=repos,
        upgrade_to=upgrade,
        test_tool_ref=ref,
        series=series,
        upgrade_series=upgrade_series,
    )
    key = ("osg", ref, series, repos, upgrade_series, upgrade)
    return SourceDraft(key=key, source=source, loc=doc.loc(node), fld=fld, osg=True)


def settle_labels(acc: Acc) -> None:
    """Final OSG source labels, once every file is read.

    Labels stay readable ("24; osg > osg-testing"); the test tool's branch is added only where
    two sources differ in it alone: "24; osg (opensciencegrid:master)".
    """
    by_label: dict[str, list[SourceDraft]] = {}
    for draft in acc.sources.values():
        if draft.osg:
            by_label.setdefault(draft.source.label, []).append(draft)
    for label, drafts in by_label.items():
        if len(drafts) > 1:
            for d in drafts:
                ref = d.source.test_tool_ref or "packaged test tool"
                d.source = Source(
                    label=f"{label} ({ref})",
                    repos=d.source.repos,
                    upgrade_to=d.source.upgrade_to,
                    test_tool_ref=d.source.test_tool_ref,
                    series=d.source.series,
                    upgrade_series=d.source.upgrade_series,
                )
