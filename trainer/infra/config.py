"""Entry-point configs: one dataclass per entry point, YAML file + ``key=value`` overrides.

Built on OmegaConf structured configs (torchtune's choice): the dataclass is the schema, so
a key it does not have — in the YAML file or on the command line — is rejected with an error
naming the key, and values are type-checked. Every field carries a docstring (the string
literal after it), which ``--help`` prints::

    python trainer/reward.py --config configs/tiny_cpu/reward.yaml lr=3e-4 synthetic.n_pairs=500
    python trainer/reward.py --help
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import sys
import textwrap
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["ConfigError", "config_help", "field_docs", "load_config", "to_yaml"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key or file."""


def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass, read from the string literal after each field."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def config_help(cls: type, prefix: str = "") -> str:
    """One line per field: ``name = default  # docstring`` (nested dataclasses expanded)."""
    lines = []
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            lines.append(f"# {prefix}{f.name}: {docs.get(f.name, '')}")
            lines.append(config_help(type(default), prefix=f"{prefix}{f.name}."))
        else:
            lines.append(f"{prefix}{f.name} = {default!r}  # {docs.get(f.name, '')}")
    return "\n".join(lines)


def load_config(cls: type[T], argv: list[str]) -> T:
    """Build a ``cls`` from ``argv``: an optional ``--config FILE.yaml`` then ``key=value``
    overrides (dotted keys for nested fields), applied in that order over the defaults.

    Raises:
        ConfigError: an unknown key (named, with the closest known keys), a value of the
            wrong type, a missing or malformed YAML file, or an argument that is not
            ``key=value``.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    argv = list(argv)
    files: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--config", "-c"):
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a file name")
            files.append(argv[i + 1])
            i += 2
            continue
        if a.startswith("--config="):
            files.append(a.split("=", 1)[1])
        elif "=" not in a or a.startswith("="):
            raise ConfigError(f"argument {a!r} is not key=value (or --config FILE)")
        else:
            overrides.append(a[2:] if a.startswith("--") else a)
        i += 1

    schema = OmegaConf.structured(cls)
    OmegaConf.set_struct(schema, True)
    merged = schema
    sources: list[tuple[str, Any]] = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise ConfigError(f"config file {f}: no such file")
        try:
            sources.append((f"config file {f}", OmegaConf.load(path)))
        except Exception as e:
            raise ConfigError(f"config file {f}: not valid YAML ({e})") from e
    for o in overrides:
        key = o.split("=", 1)[0]
        try:
            sources.append((f"override {o!r}", OmegaConf.from_dotlist([o])))
        except Exception as e:
            raise ConfigError(f"override {o!r}: cannot parse key {key!r} ({e})") from e
    # ``???`` (required) in a file: merging it keeps the default, so track it by hand
    required: set[str] = set()
    for _, src in sources:
        required = {k for k in required if OmegaConf.select(src, k, default=None) is None}
        required |= set(OmegaConf.missing_keys(src))
    if required:
        key = sorted(required)[0]
        raise ConfigError(f"config key {key!r} is required (??? in the YAML file): set it as {key}=...")
    for where, src in sources:
        try:
            merged = OmegaConf.merge(merged, src)
        except ConfigKeyError as e:
            bad = getattr(e, "full_key", None) or str(e)
            known = sorted(_all_keys(cls))
            near = difflib.get_close_matches(str(bad), known, n=3, cutoff=0.6)
            hint = f"; did you mean one of {near}?" if near else ""
            raise ConfigError(
                f"{where}: unknown config key {bad!r} for {cls.__name__}{hint} (see --help)"
            ) from None
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None)
            msg = str(e).splitlines()[0]
            raise ConfigError(f"{where}: bad value for key {key!r}: {msg}") from None
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(
            f"config key {key!r} has no value: set it in the YAML file or as {key}=..."
        ) from None


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            out += _all_keys(type(default), f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML (what the run logs at start and saves next to its outputs)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def cli_main(config_cls: type[T], train: Any, doc: str | None, argv: list[str] | None = None) -> int:
    """The body of every entry point's ``main``: ``--help`` prints ``doc`` and every config
    key; otherwise parse ``argv`` (``--config FILE`` then ``key=value``) into ``config_cls``,
    run ``train(cfg)``, and turn a bad config or bad input into a one-line error and exit 2.
    The process group is always shut down."""
    from trainer.data.formats import DataError
    from trainer.infra.dist import shutdown

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(doc)
        print(config_help(config_cls))
        return 0
    try:
        train(load_config(config_cls, argv))
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        shutdown()
    return 0
