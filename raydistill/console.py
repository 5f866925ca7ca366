"""What a command prints: raydistill's own lines on the console, Ray's in a log file.

A Ray driver prints every line its workers and actors write (``log_to_driver``): Ray Train's
controller announcing each worker group, Ray Data's execution plans and deprecation notices, a
C++ message about the preemption watcher's constructor. A demo's console was mostly those. By
default a command now shows the lines a user acts on:

- raydistill's own (``[raydistill] ...``: stages, start-up, step and validation lines);
- any batch of lines with a Python traceback, and Ray Train's failure-policy reports (a worker
  died, a node was lost, a retry): they say why a run stopped or restarted;
- the driver's own output (``print``, warnings) untouched: only Ray's forwarded lines and Ray's
  own logger are sorted.

Everything Ray prints goes, in full, to a log file: the run's folder's ``ray.log`` for a distill
run (``log_to``), else a file under the temp folder; the first line a command prints says
where. ``--verbose`` (``$RAYDISTILL_VERBOSE=1``) shows everything on the console as before.

On a terminal, step lines overwrite each other in place (a progress line with its ETA); in a
file or a pipe each stays a line. A base module: it imports nothing of raydistill.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

VERBOSE_ENV = "RAYDISTILL_VERBOSE"
OURS = "[raydistill]"
# A batch holding one of these is shown whole: the lines after it belong to it.
WHOLE_BATCH = ("Traceback (most recent call last)", "[FailurePolicy]")
STEP_LINE = re.compile(r"\[raydistill\] step \d+/\d+ ")

_lock = threading.Lock()
_state: dict = {"file": None, "path": None, "said": set(), "open_line": False}


def verbose() -> bool:
    """Whether everything Ray prints goes to the console (``--verbose``)."""
    return os.environ.get(VERBOSE_ENV) == "1"


def set_verbose(on: bool) -> None:
    """``--verbose``; an environment variable, so the processes a command starts inherit it."""
    os.environ[VERBOSE_ENV] = "1" if on else "0"


def shown(lines: list[str]) -> list[str]:
    """The lines of one forwarded batch that the quiet console shows."""
    if any(mark in line for line in lines for mark in WHOLE_BATCH):
        return list(lines)
    return [line for line in lines if OURS in line]


def log_to(path: str | os.PathLike) -> Path:
    """Send Ray's lines from now on to ``path`` (appended); say so once per file."""
    path = Path(path).resolve()
    with _lock:
        if _state["path"] != path:
            if _state["file"] is not None:
                _state["file"].close()
            path.parent.mkdir(parents=True, exist_ok=True)
            _state["file"], _state["path"] = open(path, "a", encoding="utf-8"), path
    if not verbose() and path not in _state["said"]:
        _state["said"].add(path)
        say(f"{OURS} Ray's own log lines go to {path} (--verbose shows them here)")
    return path


def log_file() -> Path | None:
    return _state["path"]


def say(line: str, stream=None) -> None:
    """Print one line, ending an open progress line first."""
    stream = stream or sys.stdout
    with _lock:
        if _state["open_line"]:
            stream.write("\n")
            _state["open_line"] = False
        stream.write(line + "\n")
        stream.flush()


def progress(line: str, final: bool = False, stream=None) -> None:
    """A progress line: redrawn in place on a terminal (ended by ``final`` or the next line),
    a line of its own in a file or a pipe."""
    stream = stream or sys.stdout
    if not stream.isatty():
        say(line, stream)
        return
    with _lock:
        stream.write("\r\033[K" + line + ("\n" if final else ""))
        stream.flush()
        _state["open_line"] = not final


def one_line_warnings() -> None:
    """A command's Python warnings as one line each (``UserWarning: ... (student.py:121)``),
    not two with the source line that raised them."""
    import warnings

    def format_warning(message, category, filename, lineno, line=None) -> str:
        return f"{category.__name__}: {message} ({Path(filename).name}:{lineno})\n"

    warnings.formatwarning = format_warning


def _write_log(lines: list[str], prefix: str = "") -> None:
    with _lock:
        f = _state["file"]
        if f is not None:
            f.writelines(f"{prefix}{line}\n" for line in lines)
            f.flush()


def _prefix(data: dict) -> str:
    who = data.get("actor_name") or data.get("task_name") or ""
    return f"({who} pid={data.get('pid')}) " if who else f"(pid={data.get('pid')}) "


def _forward(data: dict, ignore_prefix: bool, show) -> None:
    """The driver's handler of every batch of lines Ray forwards (replaces Ray's printer)."""
    lines = data.get("lines", [])
    if data.get("pid") == "autoscaler":  # its status every few seconds: its events, as Ray does
        from ray._private.worker import filter_autoscaler_events

        lines = list(filter_autoscaler_events(lines))
        _write_log(lines, "(autoscaler) ")
        return
    _write_log(lines, _prefix(data))
    kept = shown(lines)
    if not kept:
        return
    stream = sys.stderr if data.get("is_err") else sys.stdout
    if stream.isatty() and all(STEP_LINE.search(line) for line in kept):
        line = kept[-1]  # step lines: the newest overwrites the last one in place
        progress(line[line.index(OURS):].rstrip(), stream=stream)
        return
    with _lock:
        if _state["open_line"]:
            stream.write("\n")
            _state["open_line"] = False
    # raydistill's lines need no "(RayTrainWorker pid=...)" before them; a failure keeps it.
    ours = all(OURS in line for line in kept)
    show({**data, "lines": kept}, ignore_prefix=ignore_prefix or ours)


class _ToLogFile(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _write_log([self.format(record)])


def quiet_ray_logger(name: str = "ray") -> None:
    """Ray's logger ``name`` of this process (``ray``: start-up notices, before ``ray.init``;
    ``ray.data``, which keeps its own console handler: the plans of datasets the driver runs)
    writes to the log file, and only errors to the console."""
    if verbose():
        return
    if _state["file"] is None:
        log_to(_default_log())
    logger = logging.getLogger(name)
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, _ToLogFile):
            handler.setLevel(logging.ERROR)
    if not any(isinstance(h, _ToLogFile) for h in logger.handlers):
        handler = _ToLogFile(logging.INFO)  # Ray Data's logger passes DEBUG to its own file
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def quiet_forwarded_lines() -> None:
    """After ``ray.init``: the lines Ray forwards from workers and actors go through ``shown``."""
    if verbose():
        return
    from ray._private import worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    if "ray_print_logs" not in [name for name, _ in getattr(dispatcher, "handlers", [])]:
        return  # log_to_driver is off, or Ray changed: leave its printing alone
    ignore = worker._should_ignore_worker_log_prefix(worker.global_worker)
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", lambda data: _forward(
        data, ignore, show=worker.print_to_stdstream))


def _default_log() -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / "raydistill" / f"ray-{stamp}-{os.getpid()}.log"


__all__ = ["VERBOSE_ENV", "log_file", "log_to", "one_line_warnings", "progress", "quiet_forwarded_lines",
           "quiet_ray_logger", "say", "set_verbose", "shown", "verbose"]
