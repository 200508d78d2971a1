"""Safe loading of Sealift's YAML (and JSON) input files, and a reader that validates them field by field.

Spec and profile files come from users and from other people's repositories, so loading is
bounded: a size cap, safe construction only (no Python objects), and a cap on the number of nodes
after alias expansion, which stops "billion laughs" documents before anything walks them.
Every validation error names the file, the field path, what was expected and what was found.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NoReturn

import yaml

from updater.errors import InputError
from updater.oci import parse_json

__all__ = ["MAX_FILE_BYTES", "Field", "check_known", "format_duration", "load_json", "load_yaml", "parse_duration"]

MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 64
_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_./:@+-]{1,80}")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:us|ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_MAX_SECONDS = 10**9  # about 31 years: longer is a mistake
_MIN_SECONDS = 0.000001  # a microsecond: shorter is a mistake
_UNITS = {"us": decimal.Decimal("0.000001"), "ms": decimal.Decimal("0.001"), "s": decimal.Decimal(1), "m": decimal.Decimal(60),
          "h": decimal.Decimal(3600)}


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's when PyYAML has it: the same YAML, ten times faster


def load_yaml(path: Path, *, what: str, limit: int = MAX_FILE_BYTES) -> Field:
    """Read ``path`` (at most ``limit`` bytes) as YAML and return its root as a :class:`Field` named
    after the file. A larger ``limit`` (an inventory of many devices) allows proportionally more nodes."""
    text = _read_text(path, what=what, limit=limit)
    try:
        loader = _LOADER(text)  # a safe loader: libyaml's, or PyYAML's own
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_nodes(node, path, most=MAX_NODES * max(limit // MAX_FILE_BYTES, 1))
            value = loader.construct_document(node) if node is not None else None  # the nodes checked, not a second parse
        finally:
            loader.dispose()
    except RecursionError as e:
        raise InputError(f"{path}: YAML nested too deeply") from e
    except yaml.YAMLError as e:
        if "nesting depth" in str(getattr(e, "problem", "")):  # libyaml's own bound
            raise InputError(f"{path}: YAML nested too deeply") from e
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise InputError(f"{path}: not valid YAML{where}: {problem}") from e
    return Field(path, "", value)


def load_json(path: Path, *, what: str) -> Field:
    """Read ``path`` as JSON (a record another Sealift command wrote) and return its root as a :class:`Field`."""
    return Field(path, "", parse_json(_read_text(path, what=what), f"{path}: {what}", InputError))


def _read_text(path: Path, *, what: str, limit: int = MAX_FILE_BYTES) -> str:
    try:
        with open(path, "rb") as f:  # read bounded: a size from stat() says nothing of a pipe or a device file
            data = f.read(limit + 1)
        if len(data) > limit:
            raise InputError(f"{path}: {what} is more than the {limit} bytes allowed")
        return data.decode("utf-8")
    except FileNotFoundError as e:
        raise InputError(f"{path}: {what} not found") from e
    except IsADirectoryError as e:
        raise InputError(f"{path}: {what} is a directory, expected a file") from e
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: {what} is not UTF-8 text") from e
    except OSError as e:
        raise InputError(f"{path}: cannot read {what}: {e.strerror}") from e


def _check_nodes(root: yaml.Node, path: Path, *, most: int = MAX_NODES) -> None:
    """Walk the nodes as a consumer would see them, with every alias expanded: at most ``most`` of
    them, nested at most MAX_DEPTH deep, and no mapping with a key twice (YAML forbids it, yet
    PyYAML keeps the last value where another tool keeps the first)."""
    seen = 0
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > most:
            raise InputError(f"{path}: more than {most} YAML nodes once aliases are expanded")
        if depth > MAX_DEPTH:
            raise InputError(f"{path}: YAML nested more than {MAX_DEPTH} deep")
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            _check_unique_keys(node, path)
            for key, value in node.value:
                stack.extend(((key, depth + 1), (value, depth + 1)))


def _check_unique_keys(node: yaml.MappingNode, path: Path) -> None:
    keys: set[tuple[str, str]] = set()
    for key, _ in node.value:
        if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
            if (key.tag, key.value) in keys:
                raise InputError(f"{path}: line {key.start_mark.line + 1}: key {key.value[:80]!r} appears twice in one mapping")
            keys.add((key.tag, key.value))


def parse_duration(value: object) -> float | None:
    """Seconds from ``30``, ``2.5``, ``"500ms"``, ``"30s"``, ``"2m"``, ``"1h"`` or Compose's ``"1m30s"``;
    None if malformed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and len(value) <= 64 and _DURATION.fullmatch(text := value.strip()):
        # summed exactly, so "700ms" is 0.7 (not 0.7000000000000001) and reads back as it was written
        seconds = float(sum(decimal.Decimal(m[1]) * _UNITS[m[2]] for m in _DURATION_PART.finditer(text)))
    else:
        return None
    return seconds if seconds == 0 or _MIN_SECONDS <= seconds < _MAX_SECONDS else None


def format_duration(seconds: float) -> str:
    """``seconds`` as a duration that :func:`parse_duration` reads back to the same value: ``"90s"``, ``"0.25s"``."""
    text = format(decimal.Decimal(repr(float(seconds))), "f")
    return (text.rstrip("0").rstrip(".") if "." in text else text) + "s"


def _describe(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class Field:
    """One value of a YAML document, with the file and the dotted path that lead to it."""

    def __init__(self, file: Path, path: str, value: object) -> None:
        self.file = file
        self.path = path
        self.value = value

    def child(self, key: str | int) -> Field:
        """The field at ``key`` below this one (a mapping key or a list index)."""
        if isinstance(key, int):
            return Field(self.file, f"{self.path}[{key}]", self._value_at(key))
        if not _PLAIN_KEY.fullmatch(key):  # a key from a hostile file names itself quoted, on one line
            return Field(self.file, f"{self.path}[{key[:60]!r}]", self._value_at(key))
        sub = f"{self.path}.{key}" if self.path else key
        return Field(self.file, sub, self._value_at(key))

    def _value_at(self, key: str | int) -> object:
        if isinstance(key, int) and isinstance(self.value, list):
            return self.value[key]
        if isinstance(self.value, dict):
            return self.value.get(key)
        return None

    def fail(self, expected: str) -> NoReturn:
        """Raise a InputError saying what was expected here and what was found."""
        raise InputError(f"{self.file}: {self.path or 'top level'}: expected {expected}, found {_describe(self.value)}")

    def error(self, message: str) -> InputError:
        """A InputError about this field with a free-form message."""
        return InputError(f"{self.file}: {self.path or 'top level'}: {message}")

    @property
    def present(self) -> bool:
        return self.value is not None

    def mapping(self, *, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> dict[str, Field]:
        """Check that this is a mapping with exactly these keys allowed; return the present ones."""
        if not isinstance(self.value, dict):
            self.fail("a mapping")
        allowed = (*required, *optional)
        for key in self.value:
            if not isinstance(key, str) or key not in allowed:
                where = self.child(str(key))
                raise where.error(f"unknown field (expected one of: {', '.join(sorted(allowed))})")
        for key in required:
            if self.value.get(key) is None:
                raise self.child(key).error("is required")
        return {key: self.child(key) for key in allowed if self.value.get(key) is not None}

    def entries(self, *, key_pattern: re.Pattern[str], key_what: str) -> Iterator[tuple[str, Field]]:
        """Iterate a mapping whose keys are names (of components, services, ...)."""
        if not isinstance(self.value, dict):
            self.fail("a mapping")
        for key in self.value:
            if not isinstance(key, str) or not key_pattern.fullmatch(key):
                raise self.error(f"{key!r} is not a valid {key_what}")
            yield key, self.child(key)

    def items(self) -> list[Field]:
        """The elements of a list."""
        if not isinstance(self.value, list):
            self.fail("a list")
        return [self.child(i) for i in range(len(self.value))]

    def string(self, *, pattern: re.Pattern[str] | None = None, what: str = "a string") -> str:
        if not isinstance(self.value, str) or not self.value:
            self.fail(what)
        if pattern is not None and not pattern.fullmatch(self.value):
            self.fail(what)
        return self.value

    def scalar_string(self) -> str:
        """A string, number or boolean written as a string (environment values, as in Compose)."""
        if isinstance(self.value, bool):
            return str(self.value).lower()
        if isinstance(self.value, str | int | float):
            return str(self.value)
        self.fail("a string or number")

    def integer(self, *, low: int, high: int) -> int:
        if isinstance(self.value, bool) or not isinstance(self.value, int) or not low <= self.value <= high:
            self.fail(f"an integer from {low} to {high}")
        return self.value

    def number(self, *, low: float = 0.0) -> float:
        if isinstance(self.value, bool) or not isinstance(self.value, int | float) or self.value < low:
            self.fail(f"a number of at least {low:g}")
        return float(self.value)

    def boolean(self) -> bool:
        if not isinstance(self.value, bool):
            self.fail("true or false")
        return self.value

    def duration(self) -> float:
        seconds = parse_duration(self.value)
        if seconds is None:
            self.fail('a duration such as 30, "500ms", "30s", "2m", "1h" or "1m30s"')
        return seconds

    def string_list(self, *, pattern: re.Pattern[str] | None = None, what: str = "a string") -> tuple[str, ...]:
        """A list of strings (or a single string, taken as a one-element list)."""
        if isinstance(self.value, str):
            return (self.string(pattern=pattern, what=what),)
        return tuple(item.string(pattern=pattern, what=what) for item in self.items())


def check_known(field: Field, names: Mapping[str, object] | tuple[str, ...], *, what: str) -> str:
    """The string in ``field``, which must name one of ``names``."""
    name = field.string(what=f"the name of {what}")
    if name not in names:
        known = ", ".join(sorted(names)) or "none declared"
        raise field.error(f"{name!r} is not a declared {what} (declared: {known})")
    return name
