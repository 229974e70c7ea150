"""What every command's arguments share: one name per concept, renamed spellings that warn, user errors.

One name per concept (README "Command line"): a time range is `--since/--until`, a camera filter
`--camera ID` (repeatable), a model directory `--model DIR`, a data layout `--format` (train,
evaluate), an output format `--output` (`output_option`; its old spelling `--format` warns). `deprecated_alias` keeps an old spelling working for a release, with a
warning on stderr. `UsageError` is what a handler raises for input the user can fix: the CLI prints
it as one `error:` line and exits 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence


class UsageError(argparse.ArgumentTypeError):
    """Bad input the user can fix (a time text, a rule name, a missing folder): `error: <message>`, exit 2."""


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (unless the help already says it, or there is none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is argparse.SUPPRESS or default is False or "default" in text
                or not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class _Deprecated(argparse.Action):
    """An old option spelling: stores into the new option's dest and warns once on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", append: bool = False,
                 **kwargs: Any) -> None:
        self.new, self.append = new, append
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"warning: {option_string} is deprecated and will be removed; use {self.new}", file=sys.stderr)
        if self.append:
            cur = list(getattr(namespace, self.dest, None) or [])
            cur.extend(values if isinstance(values, list) else [values])
            values = cur
        setattr(namespace, self.dest, values)


def deprecated_alias(p: argparse.ArgumentParser, old: str, new: str, dest: str, *, nargs: Any = None,
                     append: bool = False, choices: Sequence[str] | None = None) -> None:
    """Accept `old` as a spelling of `new` (same dest), warning that it is deprecated; hidden from --help."""
    p.add_argument(old, dest=dest, action=_Deprecated, new=new, append=append, nargs=nargs, choices=choices,
                   help=argparse.SUPPRESS)


def output_option(p: argparse.ArgumentParser, choices: Sequence[str], default: str = "table") -> None:
    """`--output FORMAT` (dest `output`), the one name of an output format; `--format` is its old spelling
    here (a data layout is `--format` in train/evaluate)."""
    p.add_argument("--output", choices=list(choices), default=default, help="output format")
    deprecated_alias(p, "--format", "--output", "output", choices=list(choices))


def cameras(values: Sequence[str] | None) -> list[str] | None:
    """`--camera a --camera b,c` → [a, b, c] (None when not given)."""
    if not values:
        return None
    out = [c.strip() for v in values for c in v.split(",") if c.strip()]
    return out or None


def writable_file(path: str, what: str) -> str:
    """`path` if its folder exists (a PNG into a missing folder fails before any query, not after)."""
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise UsageError(f"{what}: folder {parent} does not exist")
    return path


def time_range(since_ms: int | None, until_ms: int | None) -> None:
    """Refuse an inverted or empty range."""
    if since_ms is not None and until_ms is not None and since_ms >= until_ms:
        raise UsageError("--since must be before --until (the range is empty or inverted)")
