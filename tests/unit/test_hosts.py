"""The execute-host deny-list (src/vmharness/hosts.py): counting, thresholds, expiry, the file."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from vmharness.errors import UsageError
from vmharness.hosts import DenyList, HostsFile, Policy, classad_list
from vmharness.spec import parse_duration

HOUR = 3600.0


def fresh(policy: Policy | None = None, path: Path = Path("/nonexistent/hosts.json")) -> DenyList:
    return DenyList(path, HostsFile(), policy or Policy())


def test_two_infrastructure_failures_in_a_row_deny_the_host() -> None:
    d = fresh()
    assert d.record("ep2", failed=True, run="0001", reason="qemu broke", now=0) == ""
    assert d.denied(now=1) == []
    assert d.record("ep2", failed=True, run="0002", reason="qemu broke", now=2) == "denied"
    assert d.denied(now=3) == ["ep2"]
    entry = d.data.hosts["ep2"]
    assert [f.run for f in entry.failures] == ["0001", "0002"]
    assert "2 infrastructure failures in a row" in entry.reason and "qemu broke" in entry.reason
    assert entry.expires == 2 + Policy().expiry_s


def test_a_verdict_between_failures_breaks_the_streak() -> None:
    d = fresh()
    d.record("ep1", failed=True, run="1", now=0)
    d.record("ep1", failed=False, run="2", now=1)  # a test failure or a pass: the host works
    assert d.record("ep1", failed=True, run="3", now=2) == ""
    assert d.denied(now=3) == []
    assert d.record("ep1", failed=True, run="4", now=4) == "denied"


def test_failures_on_other_hosts_do_not_add_up() -> None:
    d = fresh()
    for i, host in enumerate(["ep1", "ep2", "ep3", "ep1"]):
        d.record(host, failed=i == 0 or host != "ep1", run=str(i), now=i)
    assert d.denied(now=10) == []


def test_the_rate_rule_over_a_window() -> None:
    d = fresh(Policy(consecutive=0, window=4, rate=0.5))
    pattern = [True, False, True, False]  # never two in a row, but half of the last four
    events = [d.record("ep3", failed=f, run=str(i), now=i) for i, f in enumerate(pattern)]
    assert events == ["", "", "", ""]  # the window is full only with the 4th, which passed
    assert d.record("ep3", failed=True, run="5", now=5) == "denied"
    assert "2 of its last 4 runs died" in d.data.hosts["ep3"].reason


def test_expiry_gives_one_trial_and_a_success_clears_it() -> None:
    d = fresh(Policy(expiry_s=HOUR))
    d.record("ep2", failed=True, run="1", now=0)
    d.record("ep2", failed=True, run="2", now=1)
    assert d.denied(now=HOUR) == ["ep2"]
    assert d.denied(now=HOUR + 2) == []  # expired: allowed again, on trial
    assert d.data.hosts["ep2"].state(HOUR + 2) == "trial"
    assert d.record("ep2", failed=False, run="3", now=HOUR + 3) == "cleared"
    assert "ep2" not in d.data.hosts


def test_a_failed_trial_denies_again_at_once() -> None:
    d = fresh(Policy(expiry_s=HOUR))
    d.record("ep2", failed=True, run="1", now=0)
    d.record("ep2", failed=True, run="2", now=1)
    assert d.record("ep2", failed=True, run="3", now=HOUR + 5) == "denied"
    assert d.denied(now=HOUR + 6) == ["ep2"]
    assert "trial run" in d.data.hosts["ep2"].reason


def test_a_success_while_denied_does_not_forgive() -> None:
    d = fresh()
    d.record("ep2", failed=True, run="1", now=0)
    d.record("ep2", failed=True, run="2", now=1)
    assert d.record("ep2", failed=False, run="3", now=2) == ""  # a job that started before
    assert d.denied(now=3) == ["ep2"]


def test_no_host_counts_for_nothing() -> None:
    d = fresh()
    assert d.record("", failed=True, run="1", now=0) == ""
    assert d.data.hosts == {}


def test_the_file_survives_and_forgive_removes(tmp_path: Path) -> None:
    path = tmp_path / "hosts.json"
    with DenyList.locked(path) as d:
        d.record("ep2", failed=True, run="1", reason="boom", run_dir="/r", now=100)
        d.record("ep2", failed=True, run="2", reason="boom", run_dir="/r", now=101)
    again = DenyList.read(path)
    assert again.denied(now=102) == ["ep2"]
    assert again.data.hosts["ep2"].failures[0].run_dir == "/r"
    with DenyList.locked(path) as d:
        assert d.forgive("ep2") and not d.forgive("ep9")
    assert DenyList.read(path).denied(now=102) == []


def test_a_damaged_file_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "hosts.json"
    path.write_text("{not json")
    with pytest.raises(UsageError) as exc:
        DenyList.read(path)
    assert "move it away" in (exc.value.hint or "")


def _fail_once(args: tuple[str, int]) -> None:
    path, i = args
    with DenyList.locked(Path(path), Policy(consecutive=1000)) as d:
        d.record("ep1", failed=True, run=str(i), now=float(i))


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "hosts.json"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_fail_once, [(str(path), i) for i in range(16)])
    assert len(DenyList.read(path).data.hosts["ep1"].failures) == 16


def test_policy_parsing() -> None:
    p = Policy.parse("after=3, window=10, rate=0.3, expiry=2h")
    assert (p.consecutive, p.window, p.rate, p.expiry_s) == (3, 10, 0.3, 7200)
    assert Policy.parse("") == Policy()
    assert "3 infrastructure failures in a row" in p.describe()
    for bad in ("after=x", "rate=2", "colour=red", "expiry=soon"):
        with pytest.raises(UsageError):
            Policy.parse(bad)
    assert parse_duration("15m") == 900


def test_classad_list_quotes() -> None:
    assert classad_list([]) == "{}"
    assert classad_list(["a.b", 'we"ird']) == '{"a.b", "we\\"ird"}'


def test_the_reports_section_counts_died_attempts_per_host() -> None:
    from vmharness.report import infra_by_host

    rows = [
        ("0001", {"attempt": 1, "status": "died", "host": "ep2", "reason": "qemu broke"}),
        ("0001", {"attempt": 2, "status": "pass", "host": "ep1", "reason": ""}),
        ("0002", {"attempt": 1, "status": "fail", "host": "ep2", "reason": "tests failed"}),
        ("0003", {"attempt": 1, "status": "died", "host": "ep2", "reason": "[red]no[/red]"}),
        ("0004", {"attempt": 1, "status": "died", "host": "", "reason": "never ran"}),
        ("0005", {"attempt": 1, "status": None, "host": "ep3", "reason": None}),  # running
        # the guest wrote a corrupt output disk on ep3: not ep3's failure
        ("0006", {"attempt": 1, "status": "died", "host": "ep3", "not_the_hosts": "the guest"}),
    ]
    got = infra_by_host(rows, {"ep2": "2 in a row"})
    assert [h.host for h in got] == ["ep2"]  # a test failure never counts; no host, no entry
    assert got[0].failures == [("0001", 1, "qemu broke"), ("0003", 1, "[red]no[/red]")]
    assert (got[0].runs_ok, got[0].denied) == (1, "2 in a row")


def test_deny_sub_keeps_giving_up_once_every_host_is_denied(tmp_path: Path) -> None:
    """POST scripts rewrite deny.sub as the list changes; once one found every execute point
    denied, a later rewrite (a host cleared, say) must not bring the DAG's jobs back."""
    from vmharness.condor import deny
    from vmharness.condor.job import CONDOR_DIR

    (tmp_path / CONDOR_DIR).mkdir()
    deny.write_deny_sub(tmp_path, ["ep1"])
    text = (tmp_path / CONDOR_DIR / deny.DENY_SUB).read_text()
    assert f'My.{deny.DENIED_ATTR} = {{"ep1"}}' in text and deny.ALL_DENIED_ATTR not in text
    deny.write_deny_sub(tmp_path, ["ep1", "ep2"], "every execute point is on the deny-list")
    deny.write_deny_sub(tmp_path, ["ep2"])
    text = (tmp_path / CONDOR_DIR / deny.DENY_SUB).read_text()
    assert f'My.{deny.DENIED_ATTR} = {{"ep2"}}' in text
    assert f"My.{deny.ALL_DENIED_ATTR} = true" in text
    assert deny.given_up(tmp_path) == "every execute point is on the deny-list"
