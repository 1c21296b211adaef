"""The wire layer's codec and files: dataclasses <-> JSON led by type hints, versioned
documents, strict bounded reading, atomic writes, SHA-256 (no VM)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from vmharness.results.model import Problem, RunResult
from vmharness.results.model import TestCounts as Counts
from vmharness.spec import expand, load_spec
from vmharness.state import RunDB
from vmharness.wire import codec, files, formats
from vmharness.wire.codec import Kind, WireError

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Inner:
    name: str
    size: int = 0


@dataclass
class Sample:
    label: str
    where: Path
    maybe: Path | None = None
    ratio: float = 0.5
    mode: Literal["a", "b"] = "a"
    names: tuple[str, ...] = ()
    pairs: tuple[tuple[str, str], ...] = ()
    inner: Inner = field(default_factory=lambda: Inner("x"))
    inners: list[Inner] = field(default_factory=list)
    by_name: dict[str, Inner] = field(default_factory=dict)
    either: int | str = 0
    anything: Any = None


SAMPLE = Sample(
    label="a 😀 b",
    where=Path("/x/y"),
    maybe=None,
    ratio=2.0,
    mode="b",
    names=("p", "q"),
    pairs=(("K", "V"),),
    inner=Inner("i", 3),
    inners=[Inner("j")],
    by_name={"k": Inner("k", 1)},
    either="s",
    anything={"free": [1, "form"]},
)
KIND = Kind("sample.json", 2)


def test_a_nested_dataclass_survives_json() -> None:
    text = codec.dumps(codec.encode(SAMPLE))
    back = codec.decode(Sample, codec.loads(text))
    assert back == SAMPLE
    assert isinstance(back.names, tuple) and isinstance(back.pairs[0], tuple)
    assert isinstance(back.where, Path) and isinstance(back.inner, Inner)
    assert json.loads(text)["where"] == "/x/y"  # plain JSON for anyone else


def test_runs_and_results_of_the_examples_survive_as_documents() -> None:
    runs = expand(load_spec(REPO / "examples" / "matrix.yaml"))
    for run in runs:
        text = codec.to_text(formats.RUN, run)
        assert codec.from_text(formats.RUN, type(run), text) == run
    result = RunResult(
        run_id="0001",
        status="fail",
        counts=Counts(ok=3, fail=1),
        problems=[Problem("m", "t", "C", "FAIL", "-", "boom")],
        exit_code=1,
        phases={"vm": 1.5},
        versions={"kernel": "6.1"},
    )
    assert codec.from_text(formats.RESULT, RunResult, codec.to_text(formats.RESULT, result)) == (
        result
    )


def test_decoding_ignores_unknown_fields_and_fills_defaults() -> None:
    assert codec.decode(Inner, {"name": "n", "added_later": [1]}) == Inner("n", 0)


@pytest.mark.parametrize(
    "data, where",
    [
        ({"label": 1, "where": "/"}, "$.label: expected str, got int"),
        ({"where": "/"}, "$.label: missing"),
        ({"label": "l", "where": "/", "inner": {"name": "n", "size": "3"}}, "$.inner.size"),
        ({"label": "l", "where": "/", "inners": [{"name": "n"}, {}]}, "$.inners[1].name"),
        ({"label": "l", "where": "/", "mode": "c"}, "$.mode: expected one of ['a', 'b']"),
        ({"label": "l", "where": "/", "pairs": [["a"]]}, "$.pairs[0]: expected 2 items"),
        ({"label": "l", "where": "/", "ratio": True}, "$.ratio: expected float, got bool"),
        ({"label": "l", "where": "/", "either": 1.5}, "$.either: expected int or str"),
        ({"label": "l", "where": "/", "by_name": {"k": 1}}, "$.by_name.k: expected an object"),
    ],
)
def test_a_value_of_the_wrong_type_is_an_error_saying_where(data: dict, where: str) -> None:
    with pytest.raises(WireError) as exc:
        codec.decode(Sample, data)
    assert str(exc.value).startswith(where)


def test_lenient_decoding_drops_odd_fields_that_have_defaults() -> None:
    got = codec.decode(Inner, {"name": "n", "size": "big"}, lenient=True)
    assert got == Inner("n", 0)
    with pytest.raises(WireError):
        codec.decode(Inner, {"name": 1}, lenient=True)  # no default to fall back on


def test_encoding_refuses_what_json_cannot_carry() -> None:
    for bad in (float("nan"), float("inf"), 10**30, {1: "x"}, {"s"}):
        with pytest.raises(WireError):
            codec.encode({"v": bad})
    assert codec.encode([float("nan"), -float("inf"), 1.0], nonfinite_as_null=True) == [
        None,
        None,
        1.0,
    ]


def test_documents_carry_and_check_their_version() -> None:
    doc = codec.to_document(KIND, Inner("n"))
    assert doc == {"format": 2, "name": "n", "size": 0}
    assert codec.from_document(KIND, Inner, doc) == Inner("n")
    for other in ({**doc, "format": 1}, {"name": "n"}, {**doc, "format": True}, [doc]):
        with pytest.raises(WireError, match="not a sample.json document"):
            codec.from_document(KIND, Inner, other)
    old = Kind("row", 1, unversioned=1)
    assert codec.from_document(old, Inner, {"name": "n"}) == Inner("n")
    results = Kind("results.json", 1, key="format_version")
    assert codec.to_document(results, Inner("n"))["format_version"] == 1


@pytest.mark.parametrize(
    "text, words",
    [
        ('{"a": NaN}', "NaN is not a number JSON allows"),
        ('{"a": -Infinity}', "-Infinity is not a number JSON allows"),
        ('{"a": 1e999}', "the number 1e999 is out of range"),
        ('{"a": ' + "9" * 400 + "}", "the integer 999"),
        ('{"a": 9223372036854775808}', "is out of range"),
        ("[" * 200_000 + "]" * 200_000, "nested deeper than"),
        ("[" * 65 + "]" * 65, "nested deeper than 64 levels"),
        ('{"a": 1', "not JSON (Expecting"),
        (b'{"a": "\xff"}', "not UTF-8 text"),
    ],
)
def test_strict_reading_refuses_with_a_reason(text: str | bytes, words: str) -> None:
    with pytest.raises(WireError) as exc:
        codec.loads(text, what="guest.json")
    assert str(exc.value).startswith("guest.json is not valid: ") and words in str(exc.value)


def test_strict_reading_takes_what_is_within_bounds() -> None:
    deep = "[" * 64 + "]" * 64
    assert codec.loads(deep) is not None
    assert codec.loads('{"a": -9223372036854775807, "b": 1e308}') == {
        "a": -9223372036854775807,
        "b": 1e308,
    }


def test_files_are_named_in_errors_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "sample.json"
    codec.write_document(path, KIND, SAMPLE)
    assert codec.read_document(path, KIND, Sample) == SAMPLE
    assert "😀" in path.read_text(encoding="utf-8")  # readable UTF-8, not escapes
    path.write_text('{"format": 2, "label": 3, "where": "/"}')
    with pytest.raises(WireError, match=f"^{path}: \\$.label: expected str"):
        codec.read_document(path, KIND, Sample)
    path.write_text("[" + "1," * 100 + "1]")
    with pytest.raises(WireError, match=f"^{path} is not valid: larger than 100 bytes"):
        codec.read_json(path, limit=100)
    with pytest.raises(OSError):
        codec.read_json(tmp_path / "absent.json")


def test_a_lone_surrogate_is_written_as_its_json_escape(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    codec.write_json_atomic(path, {"s": "bad \udc80 byte"})
    assert "\\udc80" in path.read_text(encoding="utf-8")
    assert codec.read_json(path) == {"s": "bad \udc80 byte"}


def test_atomic_write_replaces_whole_and_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.txt"
    files.write_atomic(path, "one")
    files.write_atomic(path, b"two")
    assert path.read_text() == "two" and oct(path.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(RuntimeError), files.replacing(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert path.read_text() == "two"
    assert os.listdir(path.parent) == ["f.txt"]


def test_atomic_writes_from_many_threads_never_show_half_a_file(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    bodies = [{"n": i, "pad": "x" * 100_000} for i in range(8)]
    seen: list[Any] = []

    def write(body: dict) -> None:
        for _ in range(5):
            codec.write_json_atomic(path, body)
            seen.append(codec.read_json(path))

    threads = [threading.Thread(target=write, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s in bodies for s in seen) and len(seen) == 40
    assert os.listdir(tmp_path) == ["f.json"]


def test_sha256_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = os.urandom(3 * files.CHUNK + 7)
    path.write_bytes(data)
    assert files.sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_database_rows_are_versioned_documents_and_older_rows_still_read(tmp_path: Path) -> None:
    (run,) = expand(load_spec(REPO / "examples" / "smoke.yaml"))
    db = RunDB(tmp_path)
    db.add_runs([run])
    db.start_attempt(run.id)
    verdict = RunResult(run_id=run.id, status="pass", counts=Counts(ok=1), phases={"vm": 2.0})
    db.finish_attempt(verdict, final=True)
    stored = db.conn.execute("SELECT run_json, result_json FROM runs").fetchone()
    assert [json.loads(s)["format"] for s in stored] == [1, 1]
    # As vmharness wrote them before the wire layer: the same fields, no version.
    db.conn.execute(
        "UPDATE runs SET run_json = ?, result_json = ?",
        (json.dumps(codec.encode(run)), json.dumps(dataclasses.asdict(verdict))),
    )
    assert db.runs() == [run] and db.results() == {run.id: verdict}
    db.close()
