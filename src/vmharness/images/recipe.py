"""Recipes: how a base image is built. Built-in ones live in recipes/*.yaml beside this file.

Read with the spec's YAML reader (spec/yamlread.py): errors name file, line and field, and a
recipe must be plain UTF-8 YAML that says each field once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError
from ..spec.models import Platform, is_recipe_path
from ..spec.yamlread import YamlDoc

BUILTIN_DIR = "recipes"
DEFAULT_HOSTNAME = "vmtest.localdomain"
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})+$")
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.\-]+(:[a-z0-9]+)?(=[A-Za-z0-9.+~:\-]+)?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SIZE_RE = re.compile(r"^(\d+)\s*([MG])i?B?$", re.IGNORECASE)


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str  # where it was read from, for messages
    distribution: str = "debian"
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    components: tuple[str, ...] = ("main",)
    kernel: str = "linux-image-cloud-amd64"
    packages: tuple[str, ...] = ()
    hostname: str = DEFAULT_HOSTNAME
    disk_size_mib: int = 2048
    cert_file: Path | None = None  # None: a certificate signed by vmharness's test CA
    key_file: Path | None = None

    @property
    def apt_source(self) -> str:
        """The image's own repository as an apt source line (the spec's repo name `main`)."""
        return f"deb {self.mirror} {self.suite} {' '.join(self.components)}"

    def shape(self) -> dict[str, Any]:
        """Everything in the recipe that shapes the image, for the cache key."""
        return {
            "distribution": self.distribution,
            "suite": self.suite,
            "mirror": self.mirror,
            "components": list(self.components),
            "kernel": self.kernel,
            "packages": sorted(self.packages),
            "hostname": self.hostname,
            "disk_size_mib": self.disk_size_mib,
        }


def valid_name(name: str) -> bool:
    """Whether `name` can name an image (it becomes part of cache paths)."""
    return bool(_NAME_RE.match(name))


def builtin_names() -> list[str]:
    folder = resources.files("vmharness.images") / BUILTIN_DIR
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_recipe(name_or_path: str) -> Recipe:
    """A built-in recipe by name ("debian-12"), or a recipe YAML file by path."""
    if name_or_path in builtin_names():
        ref = resources.files("vmharness.images") / BUILTIN_DIR / f"{name_or_path}.yaml"
        source = f"built-in recipe {name_or_path}"
        return _read(YamlDoc(source, text=ref.read_text()), name=name_or_path, base=None)
    path = Path(name_or_path)
    if not os.path.exists(path):  # os.path: False, not an error, for too long a name
        raise SpecError(
            f"no recipe named '{name_or_path}' and no such file",
            hint=f"built-in recipes: {', '.join(builtin_names())}; or give a recipe YAML path",
        )
    return _read(YamlDoc(path), name=path.stem, base=path.parent)


def check_recipes(platforms: Iterable[Platform]) -> None:
    """Load every recipe the platforms name, each once: one that cannot be read stops
    `matrix`, `run` and `submit` before anything is made (it used to stop the image build).

    A recipe that does not exist is `check_platforms`' to report (`matrix` only notes it).
    """
    known = set(builtin_names())
    seen: set[str] = set()
    for platform in platforms:
        recipe = platform.recipe
        if recipe is None or recipe in seen:
            continue
        seen.add(recipe)
        if recipe in known or (is_recipe_path(recipe) and os.path.exists(recipe)):
            load_recipe(recipe)


def _read(doc: YamlDoc, *, name: str, base: Path | None) -> Recipe:
    try:
        return _parse(doc, name=name, base=base)
    finally:
        doc.close()


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "distribution": str,
    "suite": str,
    "mirror": str,
    "components": list,
    "kernel": str,
    "packages": list,
    "hostname": str,
    "disk_size": (str, int),
    "certificate": (str, dict),
    "name": str,
}


def _parse(doc: YamlDoc, *, name: str, base: Path | None) -> Recipe:
    source = doc.name
    root = doc.root
    if root is None or not isinstance(root, yaml.MappingNode):
        raise SpecError("a recipe must be a mapping of fields", file=source, line=1)
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for key_node, value_node in root.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            raise SpecError("a field name must be a plain word", file=source, line=line)
        key = key_node.value
        if key not in _FIELDS:
            raise SpecError(
                f"unknown field (known: {', '.join(sorted(_FIELDS))})",
                file=source,
                line=line,
                field=key,
            )
        value = _plain(doc, value_node, key)
        if not isinstance(value, _FIELDS[key]):
            raise SpecError(f"wrong type {type(value).__name__}", file=source, line=line, field=key)
        values[key] = value
        lines[key] = line

    def err(field: str, message: str) -> SpecError:
        return SpecError(message, file=source, line=lines.get(field), field=field)

    kwargs: dict[str, Any] = {"name": values.get("name", name), "source": source}
    if not _NAME_RE.match(kwargs["name"]):  # it becomes part of cache paths
        raise SpecError(
            f"a recipe name is letters, digits, '.', '_' and '-' only (got {kwargs['name']!r})",
            file=source,
            line=lines.get("name"),
            field="name",
        )
    for key in ("distribution", "suite", "mirror", "kernel"):
        if key in values:
            kwargs[key] = values[key]
    if kwargs.get("distribution", "debian") != "debian":
        raise err("distribution", "only 'debian' can be built here (mmdebstrap)")
    if "mirror" in values and not re.match(r"^(https?|file)://", values["mirror"]):
        raise err("mirror", "must be an http://, https:// or file:// URL")
    for key in ("components", "packages"):
        if key in values:
            items = values[key]
            if not all(isinstance(i, str) for i in items):
                raise err(key, "must be a list of strings")
            if key == "packages":
                bad = [i for i in items if not _PACKAGE_RE.match(i)]
                if bad:
                    raise err(key, f"not a package name: {bad[0]!r}")
            kwargs[key] = tuple(items)
    if "hostname" in values:
        if not _HOSTNAME_RE.match(values["hostname"]):
            raise err(
                "hostname", "must be a fully qualified lower-case name such as vmtest.localdomain"
            )
        kwargs["hostname"] = values["hostname"]
    if "disk_size" in values:
        kwargs["disk_size_mib"] = _size_mib(values["disk_size"], err)
    cert = values.get("certificate", "generated")
    if isinstance(cert, dict):
        if set(cert) != {"cert", "key"}:
            raise err("certificate", "give both 'cert' and 'key' file paths, or 'generated'")
        paths = {k: (base / v if base else Path(v)) for k, v in cert.items()}
        for k, p in paths.items():
            if not os.path.isfile(p):
                raise err("certificate", f"{k} file {p} does not exist")
        kwargs["cert_file"], kwargs["key_file"] = paths["cert"], paths["key"]
    elif cert != "generated":
        raise err("certificate", "must be 'generated' or {cert: FILE, key: FILE}")
    return Recipe(**kwargs)


def _plain(doc: YamlDoc, node: yaml.Node, field: str, depth: int = 0) -> Any:
    """A field's value as plain data: text, numbers, lists and mappings of them.

    No field of a recipe nests deeper than a list or a mapping of text, so deeper is refused
    rather than walked.
    """
    if depth > 0 and isinstance(node, yaml.SequenceNode | yaml.MappingNode):
        raise doc.error(node, field, "nested too deep for a recipe field")
    if isinstance(node, yaml.SequenceNode):
        return [_plain(doc, item, field, depth + 1) for item in node.value]
    if isinstance(node, yaml.MappingNode):
        return {
            key: _plain(doc, v, f"{field}.{key}", depth + 1)
            for key, (_k, v) in doc.mapping(node, field, None).items()
        }
    return doc.value(node, field)


def _size_mib(value: str | int, err: Any) -> int:
    if isinstance(value, int):
        mib = value
    else:
        m = _SIZE_RE.match(value.strip())
        if not m:
            raise err("disk_size", f"not a size: {value!r} (use e.g. 2G or 1536M)")
        mib = int(m.group(1)) * (1024 if m.group(2).upper() == "G" else 1)
    if mib < 512:
        raise err("disk_size", "must be at least 512M")
    return mib
