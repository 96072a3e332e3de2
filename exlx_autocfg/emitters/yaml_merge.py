"""YAML out: fresh documents, and round-trip merges into files people already have.

A merge changes only the keys exlx-autocfg owns under one section (`model:` in TabbyAPI's config.yml,
one `<model>$:` entry in text-generation-webui's config-user.yaml). Comments, key order, every other key
and section survive (ruamel.yaml round-trip mode, the library TabbyAPI itself uses). The pure part is
`merge_yaml(text, ...) -> text` (the file's BOM and CRLF line endings are kept); `merge_into_file` adds the
I/O: under the directory's lock, a `<file>.bak` copy of the old file and an atomic replace, so a reader (or
a crash) never sees half a file and concurrent writers never lose each other's entries.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from exlx_autocfg.emitters.common import HEADER_MARK
from exlx_autocfg.emitters.output import TextStyle, update_file
from exlx_autocfg.errors import InputError


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 4096  # never fold a long path or comment
    y.preserve_quotes = True
    return y


def _node(value: Any) -> Any:
    """Plain data as ruamel nodes; lists of scalars in flow style (`[20, 7]`) as TabbyAPI's sample has."""
    if isinstance(value, Mapping):
        out = CommentedMap()
        for k, v in value.items():
            out[k] = _node(v)
        return out
    if isinstance(value, (list, tuple)):
        seq = CommentedSeq(_node(v) for v in value)
        if all(not isinstance(v, (Mapping, list, tuple)) for v in value):
            seq.fa.set_flow_style()
        return seq
    return value


def dump_yaml(data: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    _yaml().dump(_node(data), buf)
    return buf.getvalue()


def _kind(value: Any) -> str:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "list"
    return type(value).__name__ if value is not None else "null"


def _load(text: str, source: str) -> CommentedMap | None:
    try:
        doc = _yaml().load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{source}: not valid YAML{where}: {' '.join(str(problem).split())}") from None
    if doc is None:
        return None
    if not isinstance(doc, CommentedMap):
        raise InputError(f"{source}: the top level is a {_kind(doc)}, not a mapping; not merging into it")
    return doc


def _split_trailing(token_value: str) -> tuple[str, str]:
    """A key's comment token holds its end-of-line comment and then the comment lines that follow it
    (which belong, visually, to whatever comes next). Split the two."""
    if token_value.startswith("#"):
        end = token_value.find("\n")
        if end < 0:
            return token_value, ""
        return token_value[: end + 1], token_value[end + 1 :]
    return "", token_value


def _is_block(value: Any) -> bool:
    return isinstance(value, (CommentedMap, CommentedSeq)) and bool(value) and not value.fa.flow_style()


def _trailing_slot(mapping: CommentedMap) -> tuple[list, int] | None:
    """Where the comment after the mapping's last entry lives: (the comment slot, index in it). The
    comment after a block holds on to the block's innermost last entry (a nested mapping's last key:
    index 2; a block sequence's last item: index 0)."""
    node: Any = mapping
    while True:
        if isinstance(node, CommentedMap) and node:
            last = list(node)[-1]
            if _is_block(node[last]):
                node = node[last]
                continue
            slot, index = node.ca.items.get(last), 2
        elif isinstance(node, CommentedSeq) and node:
            last_item = node[-1]
            if _is_block(last_item):
                node = last_item
                continue
            slot, index = node.ca.items.get(len(node) - 1), 0
        else:
            return None
        return (slot, index) if slot and len(slot) > index and slot[index] is not None else None


def _append_keys(mapping: CommentedMap, items: list[tuple[str, Any]]) -> None:
    """Append keys to a mapping so that comments which followed its last key (often the comment of the
    next section) stay below the new keys instead of ending up above them."""
    if not items:
        return
    found = _trailing_slot(mapping)
    for key, value in items:
        mapping[key] = _node(value)
    if found is None:
        return
    slot, index = found
    token = slot[index]
    eol, rest = _split_trailing(token.value)
    if eol:
        token.value = eol
    else:
        slot[index] = None
    if rest:
        moved = copy.copy(token)
        moved.value = ("\n" + rest) if eol else rest
        mapping.ca.items.setdefault(items[-1][0], [None, None, None, None])[2] = moved


def _section(doc: CommentedMap, path: Sequence[str], source: str) -> CommentedMap:
    node = doc
    for depth, key in enumerate(path):
        child = node.get(key)
        if child is None:
            child = CommentedMap()
            if key in node:
                node[key] = child
            else:
                _append_keys(node, [(key, child)])
                child = node[key]
        elif not isinstance(child, CommentedMap):
            dotted = ".".join(path[: depth + 1])
            raise InputError(f"{source}: `{dotted}` is a {_kind(child)}, not a mapping; not merging into it")
        node = child
    return node


def strip_header(text: str) -> str:
    """Remove a header block an earlier emit wrote at the top of the file (and its blank line)."""
    lines = text.splitlines(keepends=True)
    if not lines or not lines[0].startswith(HEADER_MARK):
        return text
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        i += 1
    if i < len(lines) and not lines[i].strip():
        i += 1
    return "".join(lines[i:])


def merge_yaml(text: str | None, path: Sequence[str], values: Mapping[str, Any], header: str,
               source: str = "<yaml>") -> str:
    """`text` with `values` set under `path` (created if missing); everything else kept as it was, the
    byte-order mark and line endings too."""
    style = TextStyle.of(text)
    body = strip_header(style.strip(text) or "")
    doc = _load(body, source)
    prefix = ""
    if doc is None:  # empty, or only comments: ruamel has no node to hang them on, keep them as text
        prefix = body.rstrip("\n") + "\n\n" if body.strip() else ""
        doc = CommentedMap()
    section = _section(doc, path, source)
    new_items = []
    for key, value in values.items():
        if key in section:
            section[key] = _node(value)
        else:
            new_items.append((key, value))
    _append_keys(section, new_items)
    buf = io.StringIO()
    _yaml().dump(doc, buf)
    return style.apply(header + "\n" + prefix + buf.getvalue())


def merge_into_file(path: str | Path, section: Sequence[str], values: Mapping[str, Any], header: str) -> Path:
    """Merge into `path` (created when missing) under its directory's lock. The previous file, if any, is
    kept as `<path>.bak`. Returns the file written (a symlink's target)."""
    path = Path(path)
    with update_file(path) as out:
        merged = merge_yaml(out.old_text(), section, values, header, source=str(path))
        return out.write(merged, backup=True)
