"""The machinery of :mod:`nearline.settings`: a variable (:class:`Var`), where a settings field's
value comes from (:func:`env`, :func:`flag`, :func:`nested`), loading (:func:`load`) and the
command-line flags derived from the fields (:func:`add_flags`, :func:`with_flags`).

The table of variables and the settings classes live in :mod:`nearline.settings`, which
re-exports these names; import them from there.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Collection, Mapping
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any, TypeVar

from nearline.errors import ConfigError
from nearline.setting_values import OneOf, Parse, switch


@dataclass(frozen=True)
class Var:
    """One environment variable: a row of the table.

    Attributes:
        name: The variable (the Kubernetes manifests set exactly these).
        parse: Its type and limits.
        default: The value when it is unset or empty.
        help: What it sets, in a few words.
        programs: The programs that read it (``serve`` includes the workers it starts).
        secret: Its value is never shown (an error names the variable, not the value).
    """

    name: str
    parse: Parse
    default: Any
    help: str
    programs: tuple[str, ...]
    secret: bool = False

    def read(self, environ: Mapping[str, str]) -> Any:
        """Its value in ``environ``; unset or empty (a ConfigMap's blank entry) is the default."""
        raw = environ.get(self.name, "").strip()
        if not raw:
            return self.default
        try:
            return self.parse(raw)
        except ValueError as exc:
            shown = "(its value)" if self.secret else repr(raw)
            raise ConfigError(f"{self.name}={shown}: {exc}") from None


# --- fields, loading, flags ---------------------------------------------------------------

_OPTION, _NESTED = "nearline.option", "nearline.nested"
S = TypeVar("S", bound="Settings")


@dataclass(frozen=True)
class Option:
    """Where a field's value comes from: a variable, a flag, or both."""

    parse: Parse
    help: str
    var: Var | None = None
    flag: str | None = None
    repeat: bool = False
    metavar: str | None = None
    many: bool = False


def option_of(f: Field[Any]) -> Option | None:
    """Where the settings field ``f`` comes from (None: set by the program, not configured)."""
    return f.metadata.get(_OPTION)


def env(var: Var, flag: str | None = None, *, many: bool = False) -> Any:
    """A field read from ``var`` (and given by ``flag``, when there is one; ``many``: the flag
    takes one or more values, each parsed as the variable is, and joined)."""
    option = Option(var.parse, var.help, var, flag, many=many)
    return field(default=var.default, metadata={_OPTION: option})


def flag(
    name: str, default: Any, parse: Parse, help: str, *, repeat: bool = False, metavar: str | None = None
) -> Any:
    """A field given only by the flag ``name`` (``repeat``: the flag may be given more than once)."""
    return field(default=default, metadata={_OPTION: Option(parse, help, None, name, repeat, metavar)})


def nested(cls: type[Settings]) -> Any:
    """A field holding another settings class, loaded with it."""
    return field(default_factory=cls, metadata={_NESTED: cls})


class Settings:
    """Base of the settings classes (frozen dataclasses): ``from_env`` loads one."""

    @classmethod
    def from_env(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
        """These settings from ``environ`` (default: the process environment); see :func:`load`."""
        return load(cls, environ)


def load(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    """The one place settings are read from the environment.

    Raises:
        ConfigError: A variable's value is not of its type or out of its limits; the message
            names the variable and the value.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if _NESTED in f.metadata:
            values[f.name] = load(f.metadata[_NESTED], environ)
        elif (option := option_of(f)) is not None and option.var is not None:
            values[f.name] = option.var.read(environ)
    return cls(**values)


def add_flags(
    parser: argparse.ArgumentParser,
    current: Settings,
    *,
    only: Collection[str] | None = None,
    prefix: str = "",
) -> None:
    """Add the flags of ``current``'s fields (those named in ``only``) to ``parser``.

    Each flag's default is the field's value in ``current`` (settings loaded from the
    environment, so a flag given overrides the variable); it lands in the namespace as
    ``prefix + field``, where :func:`with_flags` finds it.
    """
    for f in fields(current):  # type: ignore[arg-type]
        option = option_of(f)
        if option is None or option.flag is None or (only is not None and f.name not in only):
            continue
        value = getattr(current, f.name)
        kwargs: dict[str, Any] = {"dest": prefix + f.name, "default": value, "help": _help(option, value)}
        if option.parse is switch:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = _flag_type(option.parse)
            if isinstance(option.parse, OneOf):
                kwargs["choices"] = option.parse.choices
            else:  # the field's name, not the dotted dest
                kwargs["metavar"] = option.metavar or f.name.upper()
            if option.repeat:
                kwargs["action"] = "append"
            if option.many:
                kwargs["nargs"] = "+"
        parser.add_argument(option.flag, **kwargs)


def with_flags(current: S, args: argparse.Namespace, *, prefix: str = "") -> S:
    """``current`` with the flags given in ``args`` (see :func:`add_flags`) put over it."""
    given = vars(args)
    changes: dict[str, Any] = {}
    for f in fields(current):  # type: ignore[arg-type]
        if _NESTED in f.metadata:
            changes[f.name] = with_flags(getattr(current, f.name), args, prefix=f"{prefix}{f.name}.")
        elif prefix + f.name in given:
            value = given[prefix + f.name]
            if isinstance(value, list):  # repeated or many: a many flag's values are tuples, joined
                value = tuple(v for item in value for v in (item if isinstance(item, tuple) else (item,)))
            changes[f.name] = value
    return replace(current, **changes)  # type: ignore[type-var]


def _flag_type(parse: Parse) -> Parse:
    def convert(raw: str) -> Any:
        try:
            return parse(raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{raw!r}: {exc}") from None

    return convert


def _help(option: Option, value: Any) -> str:
    if option.parse is switch:
        return option.help
    shown = "none" if value is None or value == () else value
    source = f"; env {option.var.name}" if option.var is not None else ""
    return f"{option.help} (default: {shown}{source})".replace("%", "%%")
