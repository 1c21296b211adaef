"""The conditions file: the one human-readable text file on a run's input disk.

Format (TOML, `version = 1`, documented in the README) is read inside the guest by the agent
with Python's tomllib; this module writes it. Every field the agent needs is here and nothing
host-specific leaks in (no host paths).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .spec import MAIN_REPO, Run

CONDITIONS_VERSION = 1
FILE_NAME = "conditions.toml"


@dataclass(frozen=True)
class Conditions:
    run_id: str
    platform: str
    source: str
    package_set: str
    network: bool
    debug: bool = False
    install_repos: tuple[str, ...] = ()  # apt source lines for installing; () keeps the image's
    upgrade_repos: tuple[str, ...] = ()  # apt source lines to upgrade to; () means no upgrade
    packages: tuple[str, ...] = ()
    test_command: str | None = None
    test_timeout_s: int = 1200
    test_env: tuple[tuple[str, str], ...] = ()
    results_file: str | None = None
    has_suite: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def to_toml(self) -> str:
        q = json.dumps  # a JSON string is a valid TOML basic string for our purposes
        env = dict(self.test_env)
        env.setdefault("VMHARNESS_PACKAGES", " ".join(self.packages))
        lines = [
            "# vmharness run conditions: read by the guest agent (see README, 'Conditions file')",
            f"version = {CONDITIONS_VERSION}",
            f"run_id = {q(self.run_id)}",
            f"platform = {q(self.platform)}",
            f"source = {q(self.source)}",
            f"package_set = {q(self.package_set)}",
            f"network = {str(self.network).lower()}",
            f"debug = {str(self.debug).lower()}",
            "",
            "[repositories]",
            f"install = {_array(self.install_repos)}",
            f"upgrade = {_array(self.upgrade_repos)}",
            "",
            "[packages]",
            f"install = {_array(self.packages)}",
            "",
            "[test]",
        ]
        if self.test_command is not None:
            lines.append(f"command = {q(self.test_command)}")
        lines += [f"timeout = {int(self.test_timeout_s)}", f"suite = {str(self.has_suite).lower()}"]
        if self.results_file:
            lines.append(f"results = {q(self.results_file)}")
        lines += ["", "[test.env]"] + [f"{q(k)} = {q(v)}" for k, v in sorted(env.items())]
        return "\n".join(lines) + "\n"


def _array(items: tuple[str, ...]) -> str:
    if not items:
        return "[]"
    return "[\n" + "".join(f"  {json.dumps(i)},\n" for i in items) + "]"


def for_run(run: Run, *, main_source: str, suite: str) -> Conditions:
    """The conditions of one run. `main_source` is the image's own apt line, `suite` its suite."""

    def lines(names: tuple[str, ...]) -> tuple[str, ...]:
        repos = dict(run.repositories)
        out = []
        for name in names:
            line = main_source if name == MAIN_REPO else repos.get(name)
            if line:  # repos the image already has (the OSG's names) need no line
                out.append(line.replace("{suite}", suite))
        return tuple(out)

    install = lines(run.source.repos)
    # Keeping the image's own sources when the spec only names `main` avoids a needless rewrite.
    if install == (main_source,):
        install = ()
    return Conditions(
        run_id=run.id,
        platform=run.platform.name,
        source=run.source.label,
        package_set=run.package_set.label,
        network=run.vm.network != "none",
        debug=run.vm.debug,
        install_repos=install,
        upgrade_repos=lines(run.source.upgrade_to),
        packages=run.package_set.packages,
        test_command=run.test.command,
        test_timeout_s=run.test.timeout_s,
        test_env=run.test.env,
        results_file=run.test.results,
        has_suite=run.test.suite is not None,
    )
