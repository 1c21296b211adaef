"""RPM repositories in a spec: a `baseurl` mapping, a `.repo` file, and the OSG's names.

A spec's `repositories:` entry is an apt source line, or an RPM repository: a mapping
(`{baseurl: URL, gpgcheck: BOOL, gpgkey: URL, priority: N}`; dnf fills in `$releasever` and
`$basearch` in the guest) or the path of a `.repo` file (its sections as written). Both become
an `RpmRepo`: the sections of a `.repo` file the agent writes into the guest.

The OSG's parameter files name repositories of a release series ("24; osg > osg-testing"):
`osg_repos.toml` beside this module maps those names to RPM repositories, and a spec's
`osg_repositories: FILE` adds to it or replaces entries (the same form). Everything here raises
SpecError naming the file, line and field.
"""

from __future__ import annotations

import configparser
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from vmharness.errors import SpecError

from .models import RpmRepo

OSG_TABLE = Path(__file__).with_name("osg_repos.toml")
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]*$")
OPTION_RE = re.compile(r"^[a-z][a-z0-9_]*$")
URL_RE = re.compile(r"^(https?|ftp|file)://\S+$")
# A mapping's keys; anything else belongs in a .repo file.
MAPPING_KEYS = ("baseurl", "gpgcheck", "gpgkey", "priority")
MIN_PRIORITY, MAX_PRIORITY = 1, 99


def from_mapping(
    repo_id: str, values: dict[str, Any], *, file: str | Path, line: int | None, field: str
) -> RpmRepo:
    """One repository from `{baseurl, gpgcheck, gpgkey, priority}` (values already read)."""

    def bad(key: str, message: str, hint: str | None = None) -> SpecError:
        return SpecError(message, file=file, line=line, field=f"{field}.{key}", hint=hint)

    unknown = [k for k in values if k not in MAPPING_KEYS]
    if unknown:
        raise bad(
            unknown[0],
            f"unknown key '{unknown[0]}' of an RPM repository",
            hint=f"known: {', '.join(MAPPING_KEYS)}; other dnf options go in a .repo file",
        )
    baseurl = values.get("baseurl")
    if not isinstance(baseurl, str) or not URL_RE.match(baseurl.strip()):
        raise bad(
            "baseurl",
            f"expected one URL, got {baseurl!r}",
            hint='e.g. "https://repo.example.org/el$releasever/$basearch/" (dnf fills in '
            "$releasever and $basearch)",
        )
    gpgcheck = values.get("gpgcheck", True)
    if not isinstance(gpgcheck, bool):
        raise bad(
            "gpgcheck",
            f"expected true or false, got {gpgcheck!r}",
            hint="false only for a repository of unsigned packages you trust (a test's own)",
        )
    options: list[tuple[str, str]] = [
        ("id", repo_id),
        ("name", repo_id),
        ("baseurl", baseurl.strip()),
        ("enabled", "1"),
        ("gpgcheck", "1" if gpgcheck else "0"),
    ]
    if "gpgkey" in values:
        gpgkey = values["gpgkey"]
        if not isinstance(gpgkey, str) or not URL_RE.match(gpgkey.strip()):
            raise bad(
                "gpgkey",
                f"expected the URL of a key, got {gpgkey!r}",
                hint="e.g. https://repo.example.org/RPM-GPG-KEY-example or "
                "file:///etc/pki/rpm-gpg/RPM-GPG-KEY-example",
            )
        options.append(("gpgkey", gpgkey.strip()))
    if "priority" in values:
        priority = values["priority"]
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or not MIN_PRIORITY <= priority <= MAX_PRIORITY
        ):
            raise bad(
                "priority",
                f"expected a number from {MIN_PRIORITY} to {MAX_PRIORITY}, got {priority!r}",
                hint="dnf's priority: the lower wins; leave it out for dnf's default (99)",
            )
        options.append(("priority", str(priority)))
    return RpmRepo(sections=(tuple(options),))


def from_repo_file(path: Path, *, spec_file: str | Path, line: int | None, field: str) -> RpmRepo:
    """The sections of a .repo file: each an id, with baseurl, mirrorlist or metalink."""
    if not os.path.isfile(path):
        raise SpecError(
            f"no such .repo file: {path}",
            file=spec_file,
            line=line,
            field=field,
            hint="the path is relative to the spec file",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read it: {exc}", file=path, field=field) from None
    parser = configparser.ConfigParser(interpolation=None, strict=True, default_section="\0")
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        found = re.search(r"line\D{0,4}(\d+)", str(exc))
        raise SpecError(
            f"not a .repo file: {exc.message if hasattr(exc, 'message') else exc}".splitlines()[0],
            file=path,
            line=int(found.group(1)) if found else None,
            field=field,
            hint="a .repo file has [id] sections of key=value lines, as in /etc/yum.repos.d",
        ) from None
    lines = text.splitlines()

    def line_of(needle: str) -> int | None:
        return next((i + 1 for i, ln in enumerate(lines) if ln.strip().startswith(needle)), None)

    sections: list[tuple[tuple[str, str], ...]] = []
    for repo_id in parser.sections():
        where = line_of(f"[{repo_id}]")
        if not REPO_ID_RE.match(repo_id):
            raise SpecError(f"bad repository id [{repo_id}]", file=path, line=where, field=field)
        options: list[tuple[str, str]] = [("id", repo_id)]
        for key, value in parser.items(repo_id):
            if not OPTION_RE.match(key):
                raise SpecError(
                    f"bad option name {key!r} in [{repo_id}]",
                    file=path,
                    line=line_of(key),
                    field=field,
                )
            options.append((key, " ".join(value.split())))
        keys = {k for k, _ in options}
        if not keys & {"baseurl", "mirrorlist", "metalink"}:
            raise SpecError(
                f"[{repo_id}] has no baseurl, mirrorlist or metalink",
                file=path,
                line=where,
                field=field,
                hint="dnf needs one of them to find the repository",
            )
        sections.append(tuple(options))
    if not sections:
        raise SpecError(
            "the .repo file defines no repository",
            file=path,
            line=1,
            field=field,
            hint="add a section: [myrepo] with a baseurl=... line",
        )
    return RpmRepo(sections=tuple(sections), file=str(path))


def load_osg_table(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The OSG name table: the built-in one, or a user's file of the same form (checked)."""
    path = path or OSG_TABLE
    field = "osg_repositories"
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as exc:
        raise SpecError(
            f"cannot read the OSG repository table: {exc.strerror or exc}",
            file=path,
            field=field,
            hint="the path is relative to the spec file",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        raise SpecError(
            f"not TOML: {exc}",
            file=path,
            line=int(found.group(1)) if found else None,
            field=field,
            hint='each entry is a [NAME] or ["SERIES/NAME"] table with baseurl = "..."',
        ) from None
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    for key, entry in table.items():
        where = next((i + 1 for i, ln in enumerate(lines) if key in ln and "[" in ln), None)
        name = key.split("/", 1)[-1]
        if not isinstance(entry, dict) or not REPO_ID_RE.match(name) or key.count("/") > 1:
            raise SpecError(
                f'bad entry {key!r}: expected a table [NAME] or ["SERIES/NAME"]',
                file=path,
                line=where,
                field=f"{field}.{key}",
            )
        # Checked now, with a stand-in series, so that a bad entry is found before any run.
        from_mapping(name, _with_series(entry, "0"), file=path, line=where, field=f"{field}.{key}")
    return table


def _with_series(entry: dict[str, Any], series: str) -> dict[str, Any]:
    return {k: v.replace("{series}", series) if isinstance(v, str) else v for k, v in entry.items()}


def osg_repo(table: dict[str, dict[str, Any]], series: str, name: str) -> RpmRepo | None:
    """The RPM repository of an OSG name in a series, or None if the table has no such name
    (a repository the image itself defines)."""
    entry = table.get(f"{series}/{name}", table.get(name))
    if entry is None:
        return None
    where = OSG_TABLE
    return from_mapping(name, _with_series(entry, series), file=where, line=None, field=name)
