"""What every command line of ours shares: one typed config made into flags, config files and MLflow params, and a
one-line ``error: ...`` on bad input.

A command's options are one frozen dataclass deriving from ``Checked``, or a root dataclass whose fields are such
sections (``trainer.config.TrainConfig``). Each field is declared with ``option(default, help, ...)``, which keeps
its help text in the field's metadata: metadata survives wheels, zipapps and bytecode-only images, where attribute
docstrings parsed from the source would not. From the fields come

- ``build_parser`` / ``parse``: one flag per field, named after it (``init_from`` -> ``--init-from``), help with the
  default; booleans as ``--x`` / ``--no-x``, ``tuple[X, X]`` as two values, ``tuple[X, ...]`` as several values or a
  repeated flag, ``none`` for None where a field allows it, older spellings as aliases;
- ``flatten`` / ``build`` / ``load_file``: config files and stored dicts (nested by section, flat by field name, or
  ``section.field``; YAML, or Python with ``get_config(...)``), numbers written as strings read as the flags read them;
- ``to_dict`` / ``to_params``: the config as plain data (checkpoints, artifacts; what ``flatten`` reads back) and as
  MLflow params;
- ``Checked``: each field type-checked and every float finite before the section's own ``check``; a refusal is one
  line, ``bad <field> <value>: expected ...``, which ``OneLineParser`` prints as ``error: ...`` with exit code 2.

Why not a library: jsonargparse (litgpt's choice, the closest fit) spells flags with underscores (``--fc_width``),
has no ``--no-x`` booleans, takes a tuple as one JSON value (``[256,512]``, not ``256 512``), reads ``null`` but not
``none`` and reports a bad value in several lines; keeping our flags and the one-line contract would take an override
per feature, more code than this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import inspect
import math
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, NoReturn, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

import yaml

# MLflow servers before 2.x stored at most 500 characters per param value (newer ones 6000); the smaller limit
# keeps params loggable to any server.
MAX_PARAM_VALUE = 500


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (usage would list every flag): ``error: <message> (see <prog> --help)``."""

    def error(self, message: str) -> NoReturn:
        """Print the one-line error and exit with code 2, as argparse does."""
        self.exit(2, f"error: {' '.join(message.split())} (see {self.prog} --help)\n")


def check_finite(config: Any) -> None:
    """Raise a one-line ValueError naming the first float field of a dataclass that holds NaN or an infinity.

    Comparisons with NaN are all false and infinity passes every "positive" check, so range checks alone let both
    through to fail much later (an ``int(inf)`` in a worker); this runs before them.
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"bad {f.name} {v!r}: expected a finite number")


def check_http_url(name: str, url: str | None) -> None:
    """Raise a one-line ValueError unless ``url`` is None or an ``http://`` / ``https://`` URL with a host."""
    try:
        parts = urlsplit(url) if url is not None else None
        ok = parts is None or (parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0)
    except ValueError:  # a port that is not a number, an unbalanced IPv6 bracket
        ok = False
    if not ok:
        raise ValueError(f"bad {name} {url!r}: expected an http:// or https:// URL, e.g. http://127.0.0.1:9000")


# ---- declaring options -----------------------------------------------------------------------------------------------


def option(default: Any = MISSING, help: str = "", *, choices: Sequence[Any] | None = None,
           metavar: str | None = None, aliases: Sequence[str] = (), repeat: bool = False,
           parse: Callable[[Any], Any] | None = None, dump: Callable[[Any], Any] | None = None,
           nargs: str | None = None, group: str | None = None) -> Any:
    """A dataclass field with what its flag needs: help, accepted values, metavar, older flag spellings (``aliases``),
    ``repeat`` for a tuple given as a repeated flag; ``parse`` / ``dump`` (with the flag's ``nargs``) read and write a
    value of a type of our own. ``parse`` takes what flags, files or code give and raises ValueError(expected).
    ``group`` titles the flag's group in ``--help`` for a config without sections (a section is its own group)."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "metavar": metavar,
            "aliases": tuple(aliases), "repeat": repeat, "parse": parse, "dump": dump, "nargs": nargs, "group": group}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Leaf:
    """One option of a config, as flags, files and params see it: its field, section and what it holds."""

    name: str
    section: str | None  # None: a field of the root
    field: dataclasses.Field
    base: type  # the type of one value
    optional: bool  # None allowed
    nargs: int | str | None  # N for tuple[X, X], "+" for tuple[X, ...], None for one value

    def meta(self, key: str) -> Any:
        """The ``option`` metadata ``key`` (absent in a plain ``field(metadata={"help": ...})``: None)."""
        return self.field.metadata.get(key)

    @property
    def required(self) -> bool:
        """True for a field without a default."""
        return self.field.default is MISSING and self.field.default_factory is MISSING  # type: ignore[misc]

    @property
    def default(self) -> Any:
        """The field's default value."""
        f = self.field
        return f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]


def _leaf(f: dataclasses.Field, hint: Any, section: str | None) -> Leaf:
    optional = False
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        optional = len(args) < len(get_args(hint))
        (hint,) = args
    if get_origin(hint) is tuple:
        args = get_args(hint)
        variadic = len(args) == 2 and args[1] is Ellipsis
        return Leaf(f.name, section, f, args[0], optional, "+" if variadic else len(args))
    return Leaf(f.name, section, f, hint, optional, None)


class Checked:
    """Base of a config dataclass: each field type-checked (ints become floats, lists tuples, ``parse`` run), every
    float finite, then the section's own ``check``."""

    def __post_init__(self) -> None:
        for leaf in _own_leaves(type(self), None):
            object.__setattr__(self, leaf.name, normalise(leaf, getattr(self, leaf.name)))
        check_finite(self)  # NaN and infinity pass most range checks: every float field, before them
        self.check()

    def check(self) -> None:
        """Range checks and checks across fields; raise a one-line ValueError (see ``require``)."""


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Checked) and is_dataclass(hint)


@functools.cache
def _own_leaves(cls: type, section: str | None) -> tuple[Leaf, ...]:
    hints = get_type_hints(cls)
    return tuple(_leaf(f, hints[f.name], section) for f in fields(cls))


@functools.cache
def sections(schema: type) -> dict[str, type]:
    """The sections of a root config: its fields whose type is a ``Checked`` dataclass, by field name."""
    hints = get_type_hints(schema)
    return {f.name: hints[f.name] for f in fields(schema) if _is_section(hints[f.name])}


@functools.cache
def leaves(schema: type) -> dict[str, Leaf]:
    """Every option of a config by field name, in declaration order; names are unique across sections, so a flag
    and a flat file key are just the field's name."""
    hints = get_type_hints(schema)
    out: dict[str, Leaf] = {}
    for f in fields(schema):
        own = _own_leaves(hints[f.name], f.name) if _is_section(hints[f.name]) else (_leaf(f, hints[f.name], None),)
        for leaf in own:
            if leaf.name in out:
                raise TypeError(f"field {leaf.name} is in both {out[leaf.name].section} and {leaf.section}")
            out[leaf.name] = leaf
    return out


def flag(name: str) -> str:
    """The command-line flag of a field: ``init_from`` -> ``--init-from``."""
    return "--" + name.replace("_", "-")


# ---- checking values -------------------------------------------------------------------------------------------------

_WHAT = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_PLURAL = {int: "integers", float: "numbers", str: "strings"}


def expected(leaf: Leaf) -> str:
    """What a field accepts, for its error line."""
    if leaf.meta("choices"):
        what = "one of " + ", ".join(map(str, leaf.meta("choices")))
    elif leaf.nargs == "+":
        what = "one or more " + _PLURAL.get(leaf.base, "values")
    elif leaf.nargs:
        what = f"{leaf.nargs} " + ("integers" if leaf.base is int else "values")
    else:
        what = _WHAT.get(leaf.base, f"a {leaf.base.__name__}")
    return what + (" or none" if leaf.optional else "")


def shown(value: Any) -> str:
    """A value as an error line shows it: strings quoted, several values comma-separated, None as none."""
    if value is None:
        return "none"
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else repr(value)


def reject(name: str, value: Any, expected: str) -> ValueError:
    """The one-line error of every bad value: the field, the value, what is accepted."""
    return ValueError(f"bad {name} {shown(value)}: expected {expected}")


def require(ok: bool, name: str, value: Any, expected: str) -> None:
    """Raise ``reject(name, value, expected)`` unless ``ok``."""
    if not ok:
        raise reject(name, value, expected)


def _fits(leaf: Leaf, value: Any) -> bool:
    base = leaf.base
    if base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, base)
    return ok and (not leaf.meta("choices") or value in leaf.meta("choices"))


def normalise(leaf: Leaf, value: Any) -> Any:
    """One value checked for its field: ints become floats for float fields, lists tuples, ``parse`` runs."""
    if value is None:
        if leaf.optional:
            return None
        raise reject(leaf.name, value, expected(leaf))
    if leaf.meta("parse") is not None:
        try:
            return leaf.meta("parse")(value)
        except (TypeError, ValueError) as e:
            raise reject(leaf.name, value, str(e)) from None
    if leaf.nargs is not None:
        if not isinstance(value, (list, tuple)) or (leaf.nargs != "+" and len(value) != leaf.nargs) or not all(
                _fits(leaf, v) for v in value):
            raise reject(leaf.name, value, expected(leaf))
        return tuple(float(v) if leaf.base is float else v for v in value)
    if not _fits(leaf, value):
        raise reject(leaf.name, value, expected(leaf))
    return float(value) if leaf.base is float else value


# ---- files and stored dicts ------------------------------------------------------------------------------------------


def _coerce(leaf: Leaf, value: Any) -> Any:
    """A value from a file as the flags read it: "none" is None where allowed; numbers written as strings (YAML reads
    1e-2 as a string) become numbers. The field's checks do the rest."""
    if leaf.optional and isinstance(value, str) and value.lower() == "none":
        return None
    if isinstance(value, str) and leaf.base in (int, float) and leaf.nargs is None and not leaf.meta("parse"):
        try:
            return leaf.base(value)
        except ValueError:
            raise reject(leaf.name, value, expected(leaf)) from None
    return value


def flatten(schema: type, layer: Any, source: str, legacy: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A layer (nested by section, flat by field name, or ``section.field``) as {field name: value}. ``legacy`` names
    fields of older versions (name -> section) that are still read: they pass through under their own names, for the
    caller to translate."""
    if not isinstance(layer, Mapping):
        raise ValueError(f"bad {source}: expected a mapping of sections or fields, got {type(layer).__name__}")
    known, secs, legacy = leaves(schema), sections(schema), legacy or {}
    out: dict[str, Any] = {}

    def put(name: str, value: Any, section: str | None) -> None:
        if name in legacy and section in (None, legacy[name]):
            out[name] = value
        elif name not in known or section not in (None, known[name].section):
            where = f"section {section}" if section else f"the {source}"
            accepted = [n for n, leaf in known.items() if section in (None, leaf.section)]
            raise ValueError(f"unknown field {name!r} in {where} ({source}): expected one of {', '.join(accepted)}")
        else:
            out[name] = _coerce(known[name], value)

    for key, value in layer.items():
        if key in secs and (isinstance(value, Mapping) or key not in known):  # "data" can be a section and a field
            if not isinstance(value, Mapping):
                raise ValueError(f"bad section {key} in {source}: expected a mapping of fields")
            for name, v in value.items():
                put(name, v, key)
        elif "." in key and key.split(".", 1)[0] in secs:
            section, name = key.split(".", 1)
            put(name, value, section)
        else:
            put(key, value, None)
    return out


def build(schema: type, flat: Mapping[str, Any]) -> Any:
    """The config from {field name: value} (missing fields take their defaults); a bad value raises ValueError."""
    known, secs = leaves(schema), sections(schema)
    nested: dict[str, dict[str, Any]] = {s: {} for s in secs}
    top: dict[str, Any] = {}
    for name, value in flat.items():
        if name not in known:
            raise ValueError(f"unknown field {name!r}: expected one of {', '.join(known)}")
        section = known[name].section
        (nested[section] if section else top)[name] = value
    return schema(**top, **{s: cls(**nested[s]) for s, cls in secs.items()})


def load_file(schema: type, path: Path, legacy: Mapping[str, str] | None = None, **options: Any) -> dict[str, Any]:
    """A config file as a flat layer: YAML, or Python whose ``get_config`` returns a mapping or a config; ``options``
    (e.g. ``smoke=True``) go to the ``get_config`` parameters of the same name."""
    if path.suffix == ".py":
        spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        get_config = getattr(module, "get_config", None)
        if get_config is None:
            raise ValueError(f"bad config {path.name}: a Python config file defines get_config()")
        accepted = inspect.signature(get_config).parameters
        layer = get_config(**{k: v for k, v in options.items() if k in accepted})
        if is_dataclass(layer):
            layer = to_dict(layer)
    else:
        layer = yaml.safe_load(path.read_text()) or {}
    return flatten(schema, layer, path.name, legacy)


def _plain(leaf: Leaf, value: Any) -> Any:
    if value is not None and leaf.meta("dump") is not None:
        return leaf.meta("dump")(value)
    return list(value) if isinstance(value, tuple) else value


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain data (JSON/YAML-safe), nested by section as stored in checkpoints; ``flatten`` reads it."""
    out: dict[str, Any] = {}
    for name, leaf in leaves(type(config)).items():
        holder = getattr(config, leaf.section) if leaf.section else config
        (out.setdefault(leaf.section, {}) if leaf.section else out)[name] = _plain(leaf, getattr(holder, name))
    return out


def param_text(value: Any) -> str:
    """A value as an MLflow param: none, lists comma-separated, at most MAX_PARAM_VALUE characters."""
    text = "none" if value is None else ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 3] + "..."


def to_params(config: Any) -> dict[str, str]:
    """Every field as an MLflow param: ``section.field`` (or ``field`` in a config without sections)."""
    params = {}
    for key, value in to_dict(config).items():
        if key in sections(type(config)):
            params.update({f"{key}.{name}": param_text(v) for name, v in value.items()})
        else:
            params[key] = param_text(value)
    return params


# ---- command line ----------------------------------------------------------------------------------------------------


def _default_text(leaf: Leaf) -> str:
    value = _plain(leaf, leaf.default)
    if value is None or value == [] or value == "":
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _converter(leaf: Leaf) -> Callable[[str], Any]:
    """argparse's type= for a field: "none" is None where the field allows it."""

    def convert(text: str) -> Any:
        if leaf.optional and leaf.nargs is None and text.lower() == "none":
            return None
        return leaf.base(text)

    convert.__name__ = leaf.base.__name__  # argparse names it in "invalid int value: 'x'"
    return convert


def add_flag(group: Any, leaf: Leaf) -> None:
    """The flag of one field (and its older spellings) on a parser or argument group."""
    text = leaf.meta("help") or ""
    if not leaf.required and _default_text(leaf) != "none" and "(default" not in text:  # "none" tells nothing
        text = f"{text} (default: {_default_text(leaf)})"
    text = text.replace("%", "%%")
    names = [flag(leaf.name), *(leaf.meta("aliases") or ())]
    if leaf.base is bool and leaf.nargs is None:
        group.add_argument(*names, dest=leaf.name, action=argparse.BooleanOptionalAction, help=text)
        return
    metavar = leaf.meta("metavar") or {int: "N", float: "X"}.get(leaf.base, leaf.name.upper())
    kwargs: dict[str, Any] = dict(dest=leaf.name, help=text, required=leaf.required, metavar=metavar)
    if leaf.meta("parse") is not None:  # read whole by the field's parse, which names the forms it takes
        kwargs.update(type=str, nargs=leaf.meta("nargs"))
    else:
        kwargs.update(type=_converter(leaf))
        if leaf.meta("choices"):  # argparse lists them as the metavar unless the field names one
            kwargs.update(choices=leaf.meta("choices"), metavar=leaf.meta("metavar"))
        if leaf.nargs is not None:
            kwargs.update(action="append") if leaf.meta("repeat") else kwargs.update(nargs=leaf.nargs)
    group.add_argument(*names, **kwargs)


def build_parser(schema: type, prog: str | None = None, description: str | None = None,
                 **kwargs: Any) -> OneLineParser:
    """One flag per field, grouped by section or ``group``; only the flags given reach the namespace (to override)."""
    parser = OneLineParser(prog=prog, description=description, argument_default=argparse.SUPPRESS, **kwargs)
    groups = {s: parser.add_argument_group(s, (inspect.getdoc(cls) or "").splitlines()[0])
              for s, cls in sections(schema).items()}
    for leaf in leaves(schema).values():
        title = leaf.section or leaf.meta("group")
        if title is not None and title not in groups:
            groups[title] = parser.add_argument_group(title)
        add_flag(groups[title] if title is not None else parser, leaf)
    return parser


def parse(schema: type, argv: Sequence[str] | None = None, prog: str | None = None, description: str | None = None,
          **kwargs: Any) -> Any:
    """The config from command-line flags; any bad input exits with one ``error:`` line and code 2."""
    parser = build_parser(schema, prog, description, **kwargs)
    given = vars(parser.parse_args(argv))
    try:
        return build(schema, given)
    except ValueError as e:
        parser.error(str(e))
