"""The one JSON codec: dataclasses <-> JSON, file kinds with a format version, strict reading.

`encode` turns a dataclass (nested dataclasses, lists, tuples, dicts with string keys, Path,
None, bool, int, float, str) into JSON-compatible values; `decode` turns them back, led by the
dataclass's type hints (also Optional and other unions, Literal, Any): a value that is not what
its field says is an error naming where it is (`$.runs[3].tests.ok: expected int, got str`).
Fields missing from the JSON take their defaults; keys the dataclass does not know are ignored,
so a newer writer may add fields freely.

A document is a JSON object of one `Kind`, carrying its format version under the kind's key
(`{"format": 1, ...}`); reading checks the version first. JSON text is read strictly, as it may
come from a guest or a pool: no NaN or Infinity, no number beyond a 64-bit integer or a float,
at most MAX_DEPTH levels of nesting, and a size limit per file. Nothing here knows a model: the
kinds are in formats.py, the dataclasses with the code that owns them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from .files import write_atomic

T = TypeVar("T")

MAX_DEPTH = 64  # levels of nesting in any JSON we read (ours need fewer than ten)
INT_LIMIT = 2**63  # integers are 64-bit signed: what SQLite and every JSON reader can take
DEFAULT_LIMIT = 256 << 20  # bytes: the largest JSON file read unless its kind says otherwise


class WireError(ValueError):
    """Data that is not what its format says: not JSON, too large or deep, not of its type.

    `path` is where in the document (filled in as the error travels up), the message says what.
    """

    def __init__(self, message: str, path: tuple[str, ...] = ()) -> None:
        self.message = message
        self.path = path
        super().__init__(self.where() + message)

    def where(self) -> str:
        return f"${''.join(self.path)}: " if self.path else ""

    def at(self, part: str | int) -> WireError:
        step = f"[{part}]" if isinstance(part, int) else f".{part}"
        return WireError(self.message, (step, *self.path))


# -- JSON text --------------------------------------------------------------------------------
def dumps(value: Any, *, indent: int | None = 1) -> str:
    """JSON text of a JSON-compatible value; indent None: compact, one line."""
    try:
        text = json.dumps(
            value,
            indent=indent,
            separators=(",", ": ") if indent is not None else (",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except ValueError as exc:
        raise WireError(str(exc)) from None
    # UTF-8 as it is, except lone surrogates (a str may hold them, UTF-8 may not): their
    # \\uXXXX escape, which is what JSON means by them.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def loads(text: str | bytes, *, what: str = "JSON text") -> Any:
    """A JSON value from text that may come from anywhere. If it is not strict JSON within the
    limits (see the module's docstring): WireError("<what> is not valid: <why>")."""
    try:
        value = json.loads(
            text,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
        _check_depth(value)
    except RecursionError:
        why = f"nested deeper than {MAX_DEPTH} levels"
    except UnicodeDecodeError as exc:
        why = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    except WireError as exc:
        why = exc.message
    except ValueError as exc:
        why = f"not JSON ({exc})"
    else:
        return value
    raise WireError(f"{what} is not valid: {why}")


def _no_constant(name: str) -> Any:
    raise WireError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise WireError(f"the number {_cut(text)} is out of range")
    return value


def _bounded_int(text: str) -> int:
    # Length first: converting a huge digit string is itself costly.
    if len(text) > 20 or not -INT_LIMIT < (value := int(text)) < INT_LIMIT:
        raise WireError(f"the integer {_cut(text)} is out of range")
    return value


def _check_depth(value: Any) -> None:
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise WireError(f"nested deeper than {MAX_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def _cut(text: str, n: int = 24) -> str:
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


# -- values <-> JSON-compatible values ---------------------------------------------------------
def encode(value: Any, *, nonfinite_as_null: bool = False) -> Any:
    """JSON-compatible values for `value` (a dataclass, or anything the module's docstring
    lists). A float that is NaN or infinite is an error, or null with nonfinite_as_null."""
    return _encode(value, nonfinite_as_null)


def _encode(v: Any, nulls: bool) -> Any:
    if v is None or isinstance(v, bool | str):
        return v
    if isinstance(v, int):
        if not -INT_LIMIT < v < INT_LIMIT:
            raise WireError(f"the integer {_cut(str(v))} is out of range")
        return v
    if isinstance(v, float):
        if math.isfinite(v):
            return v
        if nulls:
            return None
        raise WireError(f"{v} is not a number JSON can carry")
    if isinstance(v, PurePath):
        return str(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        out = {}
        for f in _fields(type(v)):
            try:
                out[f.name] = _encode(getattr(v, f.name), nulls)
            except WireError as exc:
                raise exc.at(f.name) from None
        return out
    if isinstance(v, Mapping):
        out = {}
        for key, item in v.items():
            if not isinstance(key, str):
                raise WireError(f"the key {key!r} is not a string")
            try:
                out[key] = _encode(item, nulls)
            except WireError as exc:
                raise exc.at(key) from None
        return out
    if isinstance(v, list | tuple):
        items = []
        for i, item in enumerate(v):
            try:
                items.append(_encode(item, nulls))
            except WireError as exc:
                raise exc.at(i) from None
        return items
    raise WireError(f"a {type(v).__name__} cannot be written as JSON")


def decode(tp: Any, value: Any, *, lenient: bool = False) -> Any:
    """The value of type `tp` (a dataclass, or a type the module's docstring lists) that the
    JSON-compatible `value` describes; WireError when it does not fit.

    lenient: a field whose value does not fit takes its default instead, when it has one
    (for files from the far side of a boundary, where one odd field should not cost the rest).
    """
    return _decode(tp, value, lenient)


def _decode(tp: Any, v: Any, lenient: bool) -> Any:
    if tp is Any:
        return _encode(v, False)  # anything JSON can hold, checked
    if tp is None or tp is type(None):
        if v is None:
            return None
        raise WireError(f"expected null, got {_kind(v)}")
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return _decode_union(get_args(tp), v, lenient)
    if origin is Literal:
        for option in get_args(tp):
            if v == option and type(v) is type(option):
                return option
        raise WireError(f"expected one of {list(get_args(tp))}, got {_cut(repr(v))}")
    if origin in (list, tuple, dict) or tp in (list, tuple, dict):
        return _decode_container(origin or tp, get_args(tp), v, lenient)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _decode_dataclass(tp, v, lenient)
    if tp is bool:
        if isinstance(v, bool):
            return v
    elif tp is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    elif tp is float:
        if isinstance(v, int | float) and not isinstance(v, bool):
            if not math.isfinite(v):
                raise WireError(f"{v} is not a number JSON can carry")
            return float(v)
    elif tp is str:
        if isinstance(v, str):
            return v
    elif isinstance(tp, type) and issubclass(tp, PurePath):
        if isinstance(v, str):
            return tp(v)
        tp = str  # for the message
    else:
        raise TypeError(f"the wire codec has no rule for {tp!r}")
    raise WireError(f"expected {tp.__name__}, got {_kind(v)}")


def _decode_union(options: tuple[Any, ...], v: Any, lenient: bool) -> Any:
    if v is None and type(None) in options:
        return None
    errors = []
    for option in options:
        if option is type(None):
            continue
        try:
            return _decode(option, v, lenient)
        except WireError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise WireError(f"expected {names}, got {_kind(v)}")


def _decode_container(kind: type, args: tuple[Any, ...], v: Any, lenient: bool) -> Any:
    if kind is dict:
        if not isinstance(v, dict):
            raise WireError(f"expected an object, got {_kind(v)}")
        key_tp, item_tp = args or (str, Any)
        out = {}
        for key, item in v.items():
            try:
                out[_decode(key_tp, key, lenient)] = _decode(item_tp, item, lenient)
            except WireError as exc:
                raise exc.at(key) from None
        return out
    if not isinstance(v, list):
        raise WireError(f"expected an array, got {_kind(v)}")
    if kind is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(v) != len(args):
            raise WireError(f"expected {len(args)} items, got {len(v)}")
        types_ = list(args)
    else:
        types_ = [args[0] if args else Any] * len(v)
    items = []
    for i, (item_tp, item) in enumerate(zip(types_, v, strict=True)):
        try:
            items.append(_decode(item_tp, item, lenient))
        except WireError as exc:
            raise exc.at(i) from None
    return tuple(items) if kind is tuple else items


def _decode_dataclass(cls: type, v: Any, lenient: bool) -> Any:
    if not isinstance(v, dict):
        raise WireError(f"expected an object ({cls.__name__}), got {_kind(v)}")
    hints = _hints(cls)
    kwargs = {}
    for f in _fields(cls):
        if not f.init:
            continue
        has_default = (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        )
        if f.name not in v:
            if has_default:
                continue
            raise WireError("missing").at(f.name)
        try:
            kwargs[f.name] = _decode(hints[f.name], v[f.name], lenient)
        except WireError as exc:
            if lenient and has_default:
                continue
            raise exc.at(f.name) from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # the class's own checks (__post_init__)
        raise WireError(f"not a valid {cls.__name__}: {exc}") from None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _fields(cls: type) -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(cls)


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, dict):
        return "an object"
    return "an array" if isinstance(v, list) else type(v).__name__


# -- documents: a kind, its version, its file ---------------------------------------------------
@dataclass(frozen=True)
class Kind:
    """A kind of JSON document vmharness writes (formats.py lists them all)."""

    name: str
    version: int
    key: str = "format"  # where a document keeps its version
    unversioned: int | None = None  # a document without `key` is of this version (older files)
    limit: int = DEFAULT_LIMIT  # bytes: the largest file of this kind that is read


def to_document(kind: Kind, obj: Any, *, nonfinite_as_null: bool = False) -> dict[str, Any]:
    """`obj` (a dataclass) as a document of `kind`: its fields, and the version under kind.key."""
    body = encode(obj, nonfinite_as_null=nonfinite_as_null)
    if not isinstance(body, dict):
        raise TypeError(f"a {kind.name} document is an object, not a {type(obj).__name__}")
    return {kind.key: kind.version, **body}


def from_document(kind: Kind, cls: type[T], data: Any, *, lenient: bool = False) -> T:
    """The `cls` a document of `kind` describes; WireError if it is not one, or of another
    format version."""
    if not isinstance(data, dict):
        raise WireError(f"not a {kind.name} document: expected an object, got {_kind(data)}")
    version = data.get(kind.key, kind.unversioned)
    if version != kind.version or isinstance(version, bool):
        raise WireError(
            f"not a {kind.name} document of format {kind.version} ({kind.key} is {version!r})"
        )
    return decode(cls, data, lenient=lenient)


def to_text(kind: Kind, obj: Any) -> str:
    """A document as compact JSON text (one line: for database rows)."""
    return dumps(to_document(kind, obj), indent=None)


def from_text(kind: Kind, cls: type[T], text: str | bytes, *, what: str = "") -> T:
    what = what or f"a {kind.name} document"
    data = loads(text, what=what)
    try:
        return from_document(kind, cls, data)
    except WireError as exc:
        raise WireError(f"{what}: {exc}") from None


# -- files ------------------------------------------------------------------------------------
def write_json_atomic(path: Path, value: Any, *, indent: int | None = 1) -> Path:
    """Write a JSON-compatible value to `path`, whole or not at all (files.write_atomic)."""
    return write_atomic(path, dumps(value, indent=indent) + "\n")


def read_json(path: Path, *, limit: int = DEFAULT_LIMIT, what: str = "") -> Any:
    """The JSON value in a file, read strictly (see `loads`) and at most `limit` bytes of it.
    OSError when it cannot be read; WireError("<what> is not valid: <why>") when it is not
    valid, `what` being the file's path unless given."""
    what = what or str(path)
    with open(path, "rb") as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise WireError(f"{what} is not valid: larger than {limit} bytes")
    return loads(raw, what=what)


def write_document(path: Path, kind: Kind, obj: Any, *, nonfinite_as_null: bool = False) -> Path:
    return write_json_atomic(path, to_document(kind, obj, nonfinite_as_null=nonfinite_as_null))


def read_document(path: Path, kind: Kind, cls: type[T], *, lenient: bool = False) -> T:
    """The `cls` in a file of `kind`. OSError when it cannot be read; WireError naming the
    file when it is not such a document."""
    data = read_json(path, limit=kind.limit)
    try:
        return from_document(kind, cls, data, lenient=lenient)
    except WireError as exc:
        raise WireError(f"{path}: {exc}") from None
