"""Decode a mapping file strictly: TOML, JSON or YAML by extension; no BOM, no duplicate keys, no NaN."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from .errors import MergeError, bad_input
from .inputs import kind_of as _kind

MAX_MAPPING_BYTES = 16 * 1024 * 1024


def read_document(path: Path) -> dict[str, Any]:
    """Decode TOML, JSON or YAML (by extension) strictly: no BOM, no duplicate keys, no NaN."""
    try:
        if not path.exists() and not path.is_symlink():  # a dangling link or a loop: its stat error says which
            raise bad_input(path, "no such mapping file")
        if path.is_dir():
            raise bad_input(path, "is a directory, not a mapping file")
        size = path.stat().st_size
        if size > MAX_MAPPING_BYTES:
            raise bad_input(path, f"mapping file is {size} bytes; more than {MAX_MAPPING_BYTES} is refused")
        with open(path, "rb") as f:  # capped: a pipe or /dev/zero has no size to check first
            raw = f.read(MAX_MAPPING_BYTES + 1)
        if len(raw) > MAX_MAPPING_BYTES:
            raise bad_input(path, f"mapping file is over {MAX_MAPPING_BYTES} bytes; more is refused")
    except OSError as e:
        raise bad_input(path, f"cannot read mapping file: {e.strerror or e}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raise bad_input(path, "starts with a UTF-8 byte-order mark", "save the file as UTF-8 without a BOM")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_input(path, f"is not valid UTF-8 (byte {e.start})", "save the file as UTF-8") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            doc: Any = tomllib.loads(text)
        elif suffix == ".json":
            doc = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
        elif suffix in (".yaml", ".yml"):
            doc = _load_yaml(text, path)
        else:
            raise bad_input(path, f"unknown mapping format {suffix or '(no extension)'!r}",
                            "name the file .toml, .json or .yaml")
    except MergeError:
        raise
    except tomllib.TOMLDecodeError as e:
        raise bad_input(path, f"invalid TOML: {e}") from None
    except json.JSONDecodeError as e:
        raise bad_input(path, f"invalid JSON: {e}") from None
    except _DocumentError as e:
        raise bad_input(path, str(e)) from None
    except RecursionError:
        raise bad_input(path, "nested too deeply to be a mapping file") from None
    except ValueError as e:  # Python's own limits: an integer of more than 4300 digits
        raise bad_input(path, f"invalid {suffix[1:].upper()}: {str(e).split(';')[0]}") from None
    if not isinstance(doc, dict):
        raise bad_input(path, f"the top level must be a table/object, not {_kind(doc)}")
    if _SURROGATE_ESCAPE.search(text):  # the only way a surrogate gets in: valid UTF-8 holds none
        _refuse_surrogates(doc, path)
    return doc


_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\(u|U0000)[dD][89a-fA-F]")  # JSON/YAML "\ud800", YAML "\U0000d800"


def _refuse_surrogates(doc: dict[str, Any], path: Path) -> None:
    """JSON may spell a lone UTF-16 surrogate ("\\ud800"): no UTF-8 encoding exists for it, so a column or
    input name holding one failed when the merged file was written (exit 70). Refused here, by key.

    One encode of the whole document finds whether there is one (0.1 s for 1.3M column names; a walk
    over every string took 1.3 s); only then is the key looked for."""
    try:
        json.dumps(doc, ensure_ascii=False, default=str).encode("utf-8")
        return
    except RecursionError:
        raise bad_input(path, "nested too deeply to be a mapping file") from None
    except UnicodeEncodeError:
        pass
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            texts = [value]
        elif isinstance(value, dict):
            texts = list(value)
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            texts = []
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
        else:
            continue
        bad = next((t for t in texts if isinstance(t, str) and _SURROGATE.search(t)), None)
        if bad is not None:
            raise bad_input(path, f"{where or 'a key'}: {bad!r} holds a lone surrogate, which is not Unicode text",
                            "save the file as UTF-8 text without \\ud800-\\udfff escapes")


class _DocumentError(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DocumentError(f"invalid JSON: duplicate key {k!r}")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise _DocumentError(f"invalid JSON: {name} is not a number JSON allows")


def _load_yaml(text: str, path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        raise bad_input(path, "YAML mapping files need PyYAML", "pip install 'merge-models[yaml]' or use TOML") from None

    class StrictLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no stubs here
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        keys = set()
        for key_node, _ in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: keys written here override the base's
                continue
            scalar = isinstance(key_node, yaml.ScalarNode)
            key = loader.construct_object(key_node) if scalar else None
            if not isinstance(key, str):
                shown = _kind(key) if scalar else "a list or table"
                raise _DocumentError(f"invalid YAML: a key must be a string, not {shown} (line {line})")
            if key in keys:
                raise _DocumentError(f"invalid YAML: duplicate key {key!r} (line {line})")
            keys.add(key)
        loader.flatten_mapping(node)
        mapping: dict[Any, Any] = loader.construct_mapping(node)
        return mapping

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise _DocumentError(f"invalid YAML: {str(e).splitlines()[0]}") from None
