"""The ``fgrlhf`` command convention: a command's options are one dataclass, its flags are derived
from it, and one runner turns what the job raises into the exit statuses of the README's table.

A command's config declares its options once, as the trainers' configs do: a field per option
with its type, default and docstring (the string after it, which ``--help`` prints), and the
``CHOICES`` / ``AT_LEAST`` / ``ABOVE`` / ``AT_MOST`` class variables of
:func:`~trainer.infra.config.check_declared`::

    add_flags(parser, EditConfig, positional=("input",), short={"output": "-o"})
    cfg = config_from_args(EditConfig, parser.parse_args())   # ranges checked, naming the flag
    return run(lambda: run_edit(cfg), log.error, skip_hint=not cfg.skip_invalid)

Flags: ``max_tokens`` is ``--max-tokens``; a ``bool`` that is off by default is ``--name``, one that
is on is ``--no-name``; ``T | None`` also takes ``none``; a ``list`` takes one or more values.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from trainer.errors import DataError, Stopped, error_line, exit_status
from trainer.infra.config import check_declared, declared, field_docs, flag_name

__all__ = ["add_flags", "config_from_args", "run"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def _optional(kind: type) -> Callable[[str], Any]:
    """An argparse type for ``kind | None``: ``none`` / ``null`` / ``""`` is None."""

    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null", "") else kind(text)

    parse.__name__ = kind.__name__  # (argparse names the type in its errors)
    return parse


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    positional: tuple[str, ...] = (),
    short: dict[str, str] | None = None,
) -> None:
    """Add one flag per field of the dataclass ``cls`` to ``parser`` (help: the field's docstring).

    Args:
        parser: the command's parser.
        cls: the command's config (a dataclass).
        positional: fields given as positional arguments, in this order (required).
        short: a short flag per field (``{"output": "-o"}``); a field without a default is a
            required flag.
    """
    short = short or {}
    docs, hints, choices = field_docs(cls), typing.get_type_hints(cls), declared(cls, "CHOICES")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    own = list(vars(cls).get("__annotations__", {}))  # the command's own options first, in its order
    fields = {n: fields[n] for n in sorted(fields, key=lambda n: own.index(n) if n in own else len(own))}
    for name in positional:  # (a list takes one or more)
        many = {"nargs": "+"} if typing.get_origin(hints[name]) is list else {}
        parser.add_argument(name, help=docs.get(name, "").replace("%", "%%").replace("``", ""), **many)
    for name, f in fields.items():
        if name in positional:
            continue
        doc = docs.get(name, "").replace("%", "%%").replace("``", "")
        kind = hints[name]
        args = typing.get_args(kind)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), kind) if optional else kind
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        flags = [*([short[name]] if name in short else []), flag_name(name)]
        if base is bool:
            if default:
                parser.add_argument(
                    "--no-" + name.replace("_", "-"), dest=name, action="store_false",
                    help=f"turn off (on by default): {doc[:1].lower()}{doc[1:]}",
                )  # fmt: skip
            else:
                parser.add_argument(*flags, action="store_true", help=doc)
            continue
        options: dict[str, Any] = {"help": doc}
        if typing.get_origin(base) is list:
            options.update(nargs="+", type=typing.get_args(base)[0])
        else:
            options["type"] = _optional(base) if optional else base
        if name in choices:
            options["choices"] = choices[name]
            options["metavar"] = "{" + ",".join(str(c) for c in choices[name] if c is not None) + "}"
        if has_default:
            options["default"] = default
            if default not in (None, []):
                options["help"] += f" (default: {default})"
        else:
            options["required"] = True
        parser.add_argument(*flags, **options)


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The config ``cls`` of parsed flags, checked against its declared choices and bounds (and
    its own ``check()``, where it has one), naming the flag.

    Raises:
        ConfigError: a value out of its range.
    """
    cfg = cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
    check_declared(cfg, flags=True)
    if hasattr(cfg, "check"):
        cfg.check()
    return cfg


def run(
    job: Callable[[], int | None],
    say: Callable[[str], None],
    skip_hint: bool = False,
    interrupted: str | None = None,
    notice: Callable[[str], None] = print,
) -> int:
    """Run a command's ``job`` and return its exit status: what the job returns (None: 0), or the
    status of what it raised (:func:`trainer.errors.exit_status`, the README's table) after one
    line. An error no rule covers is a crash and propagates (its traceback); with ``-v`` a handled
    error's traceback is logged too.

    Args:
        job: the command's work.
        say: prints an error line (``log.error``).
        skip_hint: add "--skip-invalid skips bad records" to a bad record's error.
        interrupted: said on Ctrl-C (what was kept; the job may have said it already).
        notice: prints what a stop kept (SIGTERM's message, ``interrupted``): not an error.
    """
    try:
        status = job()
    except BaseException as e:
        code = exit_status(e)
        if code is None:
            raise
        log.debug("%s", type(e).__name__, exc_info=True)
        if isinstance(e, KeyboardInterrupt):
            if interrupted:
                notice(interrupted)
        elif isinstance(e, Stopped):
            if str(e):
                notice(str(e))
        elif isinstance(e, DataError):
            hint = skip_hint and e.where is not None and "--skip-invalid" not in str(e)
            say(f"bad input: {e}" + (" (--skip-invalid skips bad records)" if hint else ""))
        else:
            say(error_line(e))
        return code
    return 0 if status is None else status
