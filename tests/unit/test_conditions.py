"""The conditions file: what the host writes (tomli-w) is what the guest agent reads (tomllib),
whatever characters a spec's labels, commands and environment hold."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from vmharness.engine.attempt import conditions_for
from vmharness.spec import PackageSet, Platform, Run, Source, VMSettings
from vmharness.spec import TestSettings as Settings
from vmharness.wire.conditions import Conditions
from vmharness.wire.guest import CONDITIONS_FILE, CONDITIONS_VERSION

AGENT = Path(__file__).resolve().parents[2] / "src" / "vmharness" / "guest" / "vmharness-agent"
MAIN = "deb http://deb.debian.org/debian {suite} main"
# Outside the Basic Multilingual Plane (JSON writes these as surrogate pairs, which TOML
# forbids), controls, quotes, backslashes, line and paragraph separators, a lone CR.
ODD = ["smile 😀", "🧪 tests", "tab\tnew\nline", 'q"uo\\te', "\x7f\x1b[31m", "\u2028\u2029", "\r"]


def make_run(label: str, env_value: str) -> Run:
    return Run(
        id="0007",
        platform=Platform(name="debian-12"),
        source=Source(label=f"source {label}", repos=("main", "extra")),
        package_set=PackageSet(label=label, packages=("curl", "jq")),
        test=Settings(
            command=f"echo '{label}' && ./run",
            suite=Path("/somewhere/suite"),
            results="out/results.xml",
            env=(("GREETING", env_value), (f"KEY_{len(label)}", label)),
        ),
        vm=VMSettings(network="user"),
        repositories=(("extra", "deb http://example.org/{suite} extra main"),),
    )


def agent_module() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("vmharness_agent_conditions", str(AGENT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)  # its __main__ block does not run
    return module


@pytest.fixture(scope="module")
def agent() -> ModuleType:
    return agent_module()


@pytest.mark.parametrize("text", ODD)
def test_any_character_in_a_label_or_env_value_reads_back_the_same(text: str) -> None:
    run = make_run(text, f"value {text}")
    toml = conditions_for(run, main_source=MAIN, suite="bookworm").to_toml()
    cond = tomllib.loads(toml)
    assert cond == agent_module().read_toml(toml)  # the agent's reader for Python < 3.11
    assert cond["package_set"] == text and cond["source"] == f"source {text}"
    assert cond["test"]["command"] == f"echo '{text}' && ./run"
    assert cond["test"]["env"]["GREETING"] == f"value {text}"
    assert cond["test"]["env"][f"KEY_{len(text)}"] == text


def test_the_agent_reads_the_conditions_the_host_writes(
    agent: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run("Web server 😀", "🧪")
    toml = conditions_for(run, main_source=MAIN, suite="bookworm").to_toml()
    (tmp_path / CONDITIONS_FILE).write_text(toml, encoding="utf-8")
    monkeypatch.setattr(agent, "INPUT_DIR", str(tmp_path))
    cond = agent.Agent().read_conditions()  # raises PhaseFailed on a file tomllib rejects
    assert cond == {
        "version": CONDITIONS_VERSION,
        "run_id": "0007",
        "platform": "debian-12",
        "source": "source Web server 😀",
        "package_set": "Web server 😀",
        "network": True,
        "debug": False,
        "selinux": "enforcing",
        "repositories": {
            "install": [
                "deb http://deb.debian.org/debian bookworm main",
                "deb http://example.org/bookworm extra main",
            ],
            "upgrade": [],
        },
        "packages": {"install": ["curl", "jq"]},
        "test": {
            "command": "echo 'Web server 😀' && ./run",
            "timeout": 1200,
            "suite": True,
            "results": "out/results.xml",
            "env": {"GREETING": "🧪", "KEY_12": "Web server 😀", "VMHARNESS_PACKAGES": "curl jq"},
        },
    }


def test_optional_fields_are_left_out_and_the_env_keeps_its_own_packages_line() -> None:
    cond = Conditions(
        run_id="1",
        platform="p",
        source="s",
        package_set="k",
        network=False,
        packages=("a",),
        test_env=(("VMHARNESS_PACKAGES", "mine"),),
    )
    text = cond.to_toml()
    assert text.startswith("# vmharness run conditions")
    read = tomllib.loads(text)
    assert "command" not in read["test"] and "results" not in read["test"]
    assert read["test"]["env"] == {"VMHARNESS_PACKAGES": "mine"}
    assert 'package_set = "k"\n' in text  # one `key = "value"` line: what shell tests grep for


def test_rpm_repositories_the_package_manager_and_selinux_read_back_the_same(
    agent: ModuleType,
) -> None:
    """What a dnf guest gets: read the same by tomllib and by the agent's own reader (for
    guests whose Python is older than 3.11)."""
    section = (("id", "v1"), ("baseurl", "http://10.0.2.2:8080/el$releasever/$basearch/"))
    cond = Conditions(
        run_id="1",
        platform="p",
        source="s",
        package_set="k",
        network=True,
        packages=("a",),
        rpm_install=(section, (("id", "odd 😀"), ("gpgkey", 'q"uo\\te\ttab'))),
        rpm_upgrade=((("id", "v2"), ("gpgcheck", "0")),),
        package_manager="dnf",
        selinux="permissive",
    )
    text = cond.to_toml()
    read = tomllib.loads(text)
    assert read == agent.read_toml(text)
    assert read["package_manager"] == "dnf" and read["selinux"] == "permissive"
    assert read["rpm"]["install"][0] == dict(section)
    assert read["rpm"]["upgrade"] == [{"id": "v2", "gpgcheck": "0"}]


@pytest.mark.parametrize(
    "text",
    ["a = ", "a = 1\na = 2", "[a\n", 'a = "x', "a = [1 2]", 'a = """x"""', "a = 1 b"],
)
def test_the_agents_own_toml_reader_refuses_what_is_not_toml(agent: ModuleType, text: str) -> None:
    with pytest.raises(ValueError, match="TOML line"):
        agent.read_toml(text)
