"""Command options in layers: documented defaults < recipe < config file < flags given explicitly.

argparse alone cannot tell ``--epochs 50`` from no ``--epochs`` when 50 is the default, so the options
of a layered command are declared through :class:`Options`: each is added to argparse with
``default=SUPPRESS`` (the parsed namespace then holds only what the user typed) and its default is
kept here, once, and written into its ``--help`` line. :meth:`Options.resolve` builds the full
namespace from the layers. A YAML config file (:meth:`Options.read_config`) holds the same options
by name; its values are checked and converted by the option's own argparse type and choices, and an
unknown key is an error listing the valid ones.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emovox.errors import OptionError

#: Deepest nesting a config file may have (option values are scalars, lists or one level of mapping).
MAX_CONFIG_DEPTH = 16


def _check_brackets(text: str) -> None:
    """Refuse deep ``[``/``{`` nesting before the YAML scanner sees it: it takes quadratic time on flow
    nesting (20000 levels, 40 KB: 7 s) before the composer's depth check could stop it. Brackets in
    quoted strings count too, so the bound is looser than :data:`MAX_CONFIG_DEPTH`."""
    import yaml

    depth, limit = 0, 4 * MAX_CONFIG_DEPTH
    for i, ch in enumerate(text):
        if ch in "[{":
            depth += 1
            if depth > limit:
                line = text.count("\n", 0, i) + 1
                raise yaml.YAMLError(f"nested deeper than {MAX_CONFIG_DEPTH} levels (more than {limit} open "
                                     f"brackets by line {line})")
        elif ch in "]}":
            depth = max(0, depth - 1)


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load`` without aliases and deep nesting: a few hundred bytes of nested ``*alias``
    references expand to gigabytes when read (a "billion laughs"), and deep nesting overflows the
    parser's recursion. Config files need neither; both are a :class:`yaml.YAMLError` naming the line."""
    import yaml
    from yaml.composer import ComposerError

    _check_brackets(text)

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise ComposerError(None, None, "aliases (*name) are not allowed in config files; "
                                    "write the value out", self.peek_event().start_mark)
            self.depth += 1
            try:
                if self.depth > MAX_CONFIG_DEPTH:
                    raise ComposerError(None, None, f"nested deeper than {MAX_CONFIG_DEPTH} levels",
                                        self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


@dataclass
class Option:
    action: argparse.Action
    default: Any
    flag: bool  # takes no value (store_true, --x/--no-x)
    multiple: bool  # a list (nargs '+', append, extend)

    @property
    def name(self) -> str:
        return max(self.action.option_strings, key=len)


def _shown(default: Any) -> str:
    if default is None:
        return "none"
    if default is False:
        return "off"
    if default is True:
        return "on"
    if isinstance(default, (list, tuple)):
        return ",".join(map(str, default))
    return str(default)


class Options:
    """The layered options of one command (see the module docstring)."""

    def __init__(self) -> None:
        self.table: dict[str, Option] = {}
        self.keys: dict[str, str] = {}  # config-file key -> dest
        #: config-file keys of other tools: key -> (dest, value converter)
        self.aliases: dict[str, tuple[str, Callable[[Any], Any]]] = {}

    def add(self, group, *names: str, default: Any = None, shown: str | None = None, help: str = "",
            **kw) -> argparse.Action:
        """``group.add_argument`` with the default kept here and shown in the help (``shown``: in words)."""
        text = f"default: {shown or _shown(default)}"
        help_text = f"{help} ({text})" if help else text
        action = group.add_argument(*names, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"), **kw)
        act = kw.get("action")
        flag = act in ("store_true", "store_false") or act is argparse.BooleanOptionalAction
        multiple = kw.get("nargs") in ("+", "*") or act in ("append", "extend")
        self.table[action.dest] = Option(action, default, flag, multiple)
        self.keys[action.dest] = action.dest
        for n in names:
            if n.startswith("--"):
                self.keys[n[2:].replace("-", "_")] = action.dest
        return action

    def alias(self, key: str, dest: str, convert: Callable[[Any], Any] = lambda v: v) -> None:
        """Accept ``key`` in config files as ``dest`` (``convert``: the alias's value → the option's)."""
        self.aliases[key] = (dest, convert)

    def defaults(self) -> dict[str, Any]:
        return {d: o.default for d, o in self.table.items()}

    def explicit(self, args: argparse.Namespace) -> dict[str, Any]:
        """The options given on the command line."""
        return {d: getattr(args, d) for d in self.table if hasattr(args, d)}

    # -- config files
    def valid_keys(self) -> list[str]:
        return sorted({*self.keys, *self.aliases})

    def read_config(self, path: str | os.PathLike) -> dict[str, Any]:
        """A YAML (or JSON) file of option values → ``{dest: value}``, checked like the flags."""
        import yaml

        path = Path(path)
        try:
            data = _load_yaml(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise OptionError(f"config file {path}: cannot read it ({e.strerror or e})") from e
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            mark = getattr(e, "problem_mark", None)
            line = f" (line {mark.line + 1})" if mark is not None else ""
            raise OptionError(f"config file {path}: not valid YAML: {str(e).splitlines()[0]}{line}") from e
        if data is None:
            return {}
        if not isinstance(data, Mapping):
            raise OptionError(f"config file {path}: expected a mapping of option names to values, "
                              f"got a {type(data).__name__}")
        unknown = [str(k) for k in data if str(k).replace("-", "_") not in self.keys
                   and str(k).replace("-", "_") not in self.aliases]
        if unknown:
            raise OptionError(f"config file {path}: unknown key(s) {', '.join(unknown)}; valid keys: "
                              f"{', '.join(self.valid_keys())}")
        out: dict[str, Any] = {}
        for key, value in data.items():
            k = str(key).replace("-", "_")
            where = f"config file {path}: {key}"
            if k in self.aliases:
                dest, convert = self.aliases[k]
                try:
                    value = convert(value)
                except (TypeError, ValueError) as e:
                    raise OptionError(f"{where}: {e}") from e
            else:
                dest = self.keys[k]
            if dest in out:
                raise OptionError(f"{where}: sets {self.table[dest].name} a second time")
            out[dest] = self.convert(dest, value, where)
        return out

    def convert(self, dest: str, value: Any, where: str) -> Any:
        """A config-file value → what the flag would have parsed to (its type and choices applied)."""
        opt = self.table[dest]
        if opt.flag:
            if value is None or isinstance(value, bool):
                return value
            raise OptionError(f"{where}: expected true or false, got {value!r}")
        if value is None:
            if opt.default is not None:
                raise OptionError(f"{where}: needs a value (default: {_shown(opt.default)})")
            return None
        if opt.multiple:
            if isinstance(value, Mapping):  # --model-option KEY=VALUE as a mapping
                items = [f"{k}={json.dumps(v)}" for k, v in value.items()]
            else:
                items = list(value) if isinstance(value, (list, tuple)) else [value]
            return [self._scalar(opt, v, where) for v in items]
        if isinstance(value, (list, tuple)):  # 'a,b,c' options as a YAML list
            value = ",".join(map(str, value))
        return self._scalar(opt, value, where)

    def _scalar(self, opt: Option, value: Any, where: str) -> Any:
        kind = opt.action.type
        if isinstance(value, (Mapping, list, tuple)):
            raise OptionError(f"{where}: expected a single value, got {value!r}")
        try:
            if kind in (int, float) and isinstance(value, bool):
                raise ValueError("a number is needed, not true/false")
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError("a whole number is needed")
            value = kind(value) if kind is not None else str(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise OptionError(f"{where}: {value!r} is not valid: {e}") from e
        if opt.action.choices is not None and value not in opt.action.choices:
            raise OptionError(f"{where}: {value!r} is not one of {', '.join(map(str, opt.action.choices))}")
        return value

    # -- layers
    def resolve(self, layers: list[dict[str, Any]]) -> argparse.Namespace:
        """Every option's value: the defaults, then each layer in turn (later layers win)."""
        values = self.defaults()
        for layer in layers:
            values.update(layer)
        return argparse.Namespace(**values)
