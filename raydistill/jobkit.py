"""What the ``jobs/*.py`` stage scripts share: config checks, durable outputs, the error exit.

Each script is a thin ``main(argv)`` around one library function; these helpers keep their
behaviour identical: an unknown key names the closest one, a missing required key says how to
set it, a relative output path inside a Ray job is refused (it would vanish with the job's
working-dir copy), and a raydistill error ends the script with one line and exit code 2.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from raydistill.config import merge, parse_overrides, read_yaml
from raydistill.errors import ConfigError, RaydistillError


def require_durable(path: str | None, key: str) -> None:
    """Inside a Ray job, refuse relative output paths: they would land in the job's copy of
    ``--working-dir``, a temporary folder on one node that Ray deletes."""
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    if in_job and path and "://" not in path and not os.path.isabs(path):
        raise ConfigError(f"{key}={path} is relative: a Ray job runs in a temporary copy of "
                          f"--working-dir, so it would be lost; pass an absolute path on storage "
                          f"every node sees, e.g. {key}=/mnt/shared/{path}")


def read_stage_config(path: str, overrides: list[str], known: Iterable[str],
                      required: Iterable[str]) -> dict[str, Any]:
    """YAML + ``key=value`` overrides, checked against the stage's ``known`` and ``required``
    keys (config names)."""
    data = merge(read_yaml(path), parse_overrides(overrides))
    known = list(known)
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
            raise ConfigError(f"{path}: unknown key {key!r}; {hint}")
    for key in required:
        if not data.get(key):
            raise ConfigError(f"{path}: {key} is required (set {key}: PATH or {key}=PATH)")
    return data


def function_keys(func: Callable[..., Any], renamed: Mapping[str, str] | None = None,
                  exclude: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """(known, required) config keys of a stage that passes its config to ``func``:
    its parameters, under their config names (``renamed``: config name -> parameter)."""
    import inspect

    back = {v: k for k, v in (renamed or {}).items()}
    params = {p: v for p, v in inspect.signature(func).parameters.items() if p not in set(exclude)}
    known = [back.get(p, p) for p in params]
    required = [back.get(p, p) for p, v in params.items() if v.default is inspect.Parameter.empty]
    return known, required


def add_verbose_arg(parser) -> None:
    """``--verbose``: every line Ray prints in the job's logs (by default they go to ray.log)."""
    parser.add_argument("--verbose", action="store_true", help="show every line Ray and Ray "
                        "Data print (by default they go to a log file; the first line says where)")


def parse_args(parser, argv: list[str] | None = None):
    """``parser.parse_args(argv)``, applying ``--verbose`` (``add_verbose_arg``)."""
    args = parser.parse_args(argv)
    if getattr(args, "verbose", False):
        from raydistill.console import set_verbose

        set_verbose(True)
    return args


def run_stage(main: Callable[[], int], script: str) -> None:
    """``sys.exit(main())``; a raydistill error exits 2 with one line naming the script."""
    try:
        sys.exit(main())
    except RaydistillError as err:
        print(f"{script}: error: {err}", file=sys.stderr)
        sys.exit(2)


__all__ = ["add_verbose_arg", "function_keys", "parse_args", "read_stage_config",
           "require_durable", "run_stage"]
