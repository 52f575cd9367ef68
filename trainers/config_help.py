"""One line of help per config key, read from the docstring of the Config dataclass.

A method's Config documents each key once, in its docstring, as an entry

    name: what it does (continuation lines indented deeper)
    a / b: one text for several keys

and `c2f train METHOD --help`, `c2f sweep METHOD --help` and the docs read it from there, so
the listing cannot drift from the code. Torch-free: it only inspects the dataclass.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
import typing
from dataclasses import dataclass
from typing import Any

_ENTRY = re.compile(r"^(?P<names>[a-z_][a-z0-9_]*(?:\s*/\s*[a-z_][a-z0-9_]*)*):\s+(?P<text>.*)$")


@dataclass(frozen=True)
class ConfigKey:
    """One key of a Config: its name, type as written, default and one line of help."""

    name: str
    type: str
    default: Any
    help: str


def docstring_entries(cls: type) -> dict[str, str]:
    """Key -> help text from the 'name: text' entries of `cls`'s docstring."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    entries: dict[str, str] = {}
    names: list[str] = []
    text: list[str] = []

    def close() -> None:
        for name in names:
            entries[name] = " ".join(text)

    for line in doc.splitlines():
        match = _ENTRY.match(line)
        if match:
            close()
            names = [n.strip() for n in match["names"].split("/")]
            text = [match["text"].strip()]
        elif names and line.startswith((" ", "\t")) and line.strip():
            text.append(line.strip())
        else:
            close()
            names, text = [], []
    close()
    return entries


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def config_keys(cls: type, presets: typing.Mapping[str, Any] | None = None) -> list[ConfigKey]:
    """Every field of the Config dataclass `cls`, defaults with `presets` applied."""
    entries = docstring_entries(cls)
    presets = presets or {}
    return [ConfigKey(name=f.name, type=str(f.type).replace("typing.", ""),
                      default=presets.get(f.name, _default(f)), help=entries.get(f.name, ""))
            for f in dataclasses.fields(cls)]


def format_keys(keys: list[ConfigKey], width: int = 88) -> str:
    """The keys as an indented listing: 'name (type, default X)', then its help wrapped."""
    lines = []
    for key in keys:
        lines.append(f"  {key.name} ({key.type}, default {key.default!r})")
        lines.append(textwrap.fill(key.help or "(undocumented)", width,
                                   initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)
