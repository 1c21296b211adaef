"""Known failures: test failures to ignore between two dates, in our form or the OSG's.

Read from a file of their own (`load_known_failures`) or from a spec's `known_failures:` list
(`known_failures_from_node`, the same rules). Classification (results/classify.py) applies them.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import yaml

from vmharness.errors import SpecError

from .fields import KNOWN_FAILURE_KEYS, required
from .models import KnownFailure
from .yamlread import Node, YamlDoc, is_empty, kind_of, shown

_REQUIRED = required("known_failure")


def load_known_failures(path: Path | str) -> list[KnownFailure]:
    """Read a known-failures list.

    Two formats, mixable in one file:
      - {test: test_04_trace, module: test_55_condorce, start: 2026-01-01, end: 2026-12-31,
         reason: "..."}                                      (vmharness)
      - [test_04_trace, test_55_condorce, 2026-01-01, 2026-12-31]   (the OSG's own list)
    Dates are inclusive. An empty file (or only comments) is an empty list.
    """
    path = Path(path)
    if not os.path.isfile(path):  # os.path: False, not an error, for too long a name
        raise SpecError("no such known-failures file", file=path, field="known_failures")
    doc = YamlDoc(path, default_field="known_failures")
    try:
        root = doc.root
        if root is None or is_empty(root):
            return []
        if isinstance(root, yaml.MappingNode):
            m = doc.mapping(root, None, ("known_failures",), required=("known_failures",))
            root = m["known_failures"][1]
        return known_failures_from_node(doc, root)
    finally:
        doc.close()


def known_failures_from_node(doc: YamlDoc, node: Node) -> list[KnownFailure]:
    """The entries of a YAML list of known failures (each a mapping or a 4-5 item list)."""
    out: list[KnownFailure] = []
    for i, item in enumerate(doc.seq(node, "known_failures")):
        fld = f"known_failures[{i}]"
        nodes: dict[str, Node]
        if isinstance(item, yaml.SequenceNode):
            values = item.value
            if len(values) not in (4, 5):
                raise doc.error(
                    item,
                    fld,
                    f"expected [test, module, start date, end date], got {len(values)} items",
                )
            nodes = dict(zip(KNOWN_FAILURE_KEYS, values, strict=False))
        elif isinstance(item, yaml.MappingNode):
            m = doc.mapping(item, fld, KNOWN_FAILURE_KEYS, required=_REQUIRED)
            nodes = {k: v for k, (_kn, v) in m.items()}
        else:
            raise doc.error(
                item,
                fld,
                f"expected a mapping {{test, module, start, end, reason}} or a list "
                f"[test, module, start, end], got {kind_of(item)}",
            )
        test = doc.text(nodes["test"], f"{fld}.test")
        module = doc.text(nodes["module"], f"{fld}.module")
        start = _date(doc, nodes["start"], f"{fld}.start")
        end = _date(doc, nodes["end"], f"{fld}.end")
        if end < start:
            raise doc.error(
                nodes["end"], f"{fld}.end", f"end date {end} is before start date {start}"
            )
        reason = ""
        if "reason" in nodes:
            reason = doc.string(nodes["reason"], f"{fld}.reason", allow_empty=True).strip()
        out.append(
            KnownFailure(
                test=test,
                module=module,
                start=start.isoformat(),
                end=end.isoformat(),
                reason=reason,
            )
        )
    return out


def _date(doc: YamlDoc, node: Node, fld: str) -> _dt.date:
    hint = "write the date as YYYY-MM-DD, e.g. 2026-12-31"
    if not isinstance(node, yaml.ScalarNode):
        raise doc.error(node, fld, f"expected a date, got {kind_of(node)}", hint=hint)
    try:
        value = doc.loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
        raise doc.error(node, fld, f"bad date {shown(node.value)}: {e}", hint=hint) from None
    if isinstance(value, _dt.datetime):
        raise doc.error(
            node, fld, f"expected a date without a time, got {shown(node.value)}", hint=hint
        )
    if isinstance(value, _dt.date):
        return value
    if isinstance(value, str):
        try:
            return _dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise doc.error(node, fld, f"bad date {shown(node.value)}", hint=hint)
