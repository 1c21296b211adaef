"""The conditions file: the one human-readable text file on a run's input disk.

TOML (`version = 1`, documented in the README), written here with tomli-w and read inside the
guest by the agent with Python's tomllib, or on a guest Python older than 3.11 (down to 3.6)
with the agent's own reader of what tomli-w writes (`read_toml`). Every
field the agent needs is here and nothing host-specific leaks in (no host paths).
engine.attempt.conditions_for makes the conditions of a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tomli_w

from .guest import CONDITIONS_VERSION

HEADER = "# vmharness run conditions: read by the guest agent (see README, 'Conditions file')\n"


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
    # An HTTP proxy apt fetches through (a caching one: the host's own, or a site's); the agent
    # falls back to the mirrors directly when it cannot be reached. None: no proxy.
    package_proxy: str | None = None
    # RPM repositories (dnf or yum guests): each one .repo section, its ("id", ID) and dnf's
    # options as (key, value) pairs; written by the agent as /etc/yum.repos.d/vmharness-*.repo.
    rpm_install: tuple[tuple[tuple[str, str], ...], ...] = ()
    rpm_upgrade: tuple[tuple[tuple[str, str], ...], ...] = ()
    # "apt", "dnf" or "yum" to use that one; None: the agent chooses (see the README).
    package_manager: str | None = None
    # "enforcing" or "permissive": the package set's SELinux mode, where the guest has SELinux.
    selinux: str | None = None

    def to_toml(self) -> str:
        env = dict(self.test_env)
        env.setdefault("VMHARNESS_PACKAGES", " ".join(self.packages))
        test: dict[str, Any] = {}
        if self.test_command is not None:
            test["command"] = self.test_command
        test["timeout"] = int(self.test_timeout_s)
        test["suite"] = self.has_suite
        if self.results_file:
            test["results"] = self.results_file
        test["env"] = dict(sorted(env.items()))
        doc = {
            "version": CONDITIONS_VERSION,
            "run_id": self.run_id,
            "platform": self.platform,
            "source": self.source,
            "package_set": self.package_set,
            "network": self.network,
            "debug": self.debug,
            **({"package_manager": self.package_manager} if self.package_manager else {}),
            **({"selinux": self.selinux} if self.selinux else {}),
            "repositories": {
                "install": list(self.install_repos),
                "upgrade": list(self.upgrade_repos),
            },
            "packages": {"install": list(self.packages)},
            "test": test,
        }
        if self.rpm_install or self.rpm_upgrade:
            # Optional, so version 1 still: only an agent that knows dnf gets RPM repositories.
            doc["rpm"] = {
                "install": [dict(section) for section in self.rpm_install],
                "upgrade": [dict(section) for section in self.rpm_upgrade],
            }
        if self.package_proxy:
            # Optional, so version 1 still: an agent that ignores it fetches directly.
            doc["apt"] = {"proxy": self.package_proxy}
        return HEADER + tomli_w.dumps(doc)
