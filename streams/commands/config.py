"""`defectstream config`: the settings in effect and where each came from; unknown DEFECTSTREAM_* variables."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Iterator

from streams.commands.options import DefaultsHelpFormatter, output_option

# DEFECTSTREAM_* variables that are not settings: read by ops/stack, the fault tests and the demo
NON_SETTINGS_PREFIXES = ("DEFECTSTREAM_STACK_", "DEFECTSTREAM_FAULT_")


def _fields(model: Any) -> dict[str, Any]:
    return getattr(type(model), "model_fields", {}) if not isinstance(model, type) else model.model_fields


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "model_fields")


def known_variable(name: str, settings_cls: Any | None = None) -> bool:
    """Whether DEFECTSTREAM_<name> names a setting (nested with `__`) or a known non-setting variable."""
    from streams.settings import Settings

    if name.startswith(NON_SETTINGS_PREFIXES):
        return True
    cls = settings_cls or Settings
    path = name[len("DEFECTSTREAM_"):].lower().split("__")
    for i, part in enumerate(path):
        fields = cls.model_fields
        if part not in fields:
            return False
        tp = fields[part].annotation
        if not _is_model(tp):
            return True  # a plain value (or a dict/list given as JSON): anything below is its content
        cls = tp
    return True


def unknown_variables(environ: dict[str, str] | None = None) -> list[str]:
    """DEFECTSTREAM_* variables of the environment that no setting reads (a typo is otherwise silently ignored)."""
    env = os.environ if environ is None else environ
    return sorted(k for k in env if k.upper().startswith("DEFECTSTREAM_") and not known_variable(k.upper()))


def _walk(model: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if hasattr(type(value), "model_fields"):
            yield from _walk(value, key + ".")
        else:
            yield key, value


def settings_table(environ: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every setting: its dotted name, value (secrets masked) and source (environment variable, .env or default)."""
    from pydantic import SecretStr

    from streams.settings import Settings

    env = {k.upper(): v for k, v in (os.environ if environ is None else environ).items()}
    dotenv: set[str] = set()
    if os.path.exists(".env"):
        with open(".env", encoding="utf-8") as f:
            dotenv = {ln.split("=", 1)[0].strip().upper() for ln in f if "=" in ln and not ln.lstrip().startswith("#")}
    rows = []
    for key, value in _walk(Settings()):
        var = "DEFECTSTREAM_" + key.upper().replace(".", "__")
        owner = next((v for v in sorted(env) if var == v or var.startswith(v + "__")), None)
        source = f"env {owner}" if owner else (".env" if var in dotenv else "default")
        shown = "***" if isinstance(value, SecretStr) else value
        rows.append({"setting": key, "value": shown, "source": source, "variable": var})
    return rows


def register(sub: argparse._SubParsersAction) -> None:
    from streams.settings import SHIFTS_FORMAT

    p = sub.add_parser("config", help="print the settings in effect and where each came from",
                       description=__doc__, formatter_class=DefaultsHelpFormatter,
                       epilog="Settings are DEFECTSTREAM_* variables (nested names with __; README, Settings); "
                              "lists and objects are JSON.\n\nShift calendar: " + SHIFTS_FORMAT)
    output_option(p, ["table", "json"])
    p.set_defaults(func=run_config)


def run_config(args: argparse.Namespace) -> int:
    rows = settings_table()
    unknown = unknown_variables()
    if args.output == "json":
        print(json.dumps({"settings": rows, "unknown_variables": unknown}, indent=2, default=str))
        return 0
    width = max(len(r["setting"]) for r in rows)
    for r in rows:
        print(f"{r['setting']:<{width}}  {str(r['value']):<40}  {r['source']}")
    for name in unknown:
        print(f"warning: {name} is not a defectstream setting (ignored); see `defectstream config`")
    return 0
