"""The quiet console: raydistill's lines shown, Ray's kept whole in the log file."""

from __future__ import annotations

import io
import logging

import pytest

from raydistill import console

NOISE = [
    "Requesting resources: {'CPU': 2.0} * 1",
    "[2026-12-07 17:30:23,683 E 30219 30250] core_worker.cc:2465: Actor with class name: "
    "'PreemptionWatcher' has constructor arguments in the object store",
    "Failed to query Ray Train Controller actor state. State API may be temporarily unavailable.",
    "Starting execution of Dataset train_0. Full logs are in /tmp/ray/session/logs/ray-data",
    "✔️  Dataset val_0 execution finished in 0.00 seconds",
    "Checkpoint successfully created at: Checkpoint(filesystem=local, path=/x)",
]
OURS = "[raydistill] step 50/376 epoch 0 loss=2.7727 lr=0.000942 tok/s=4455 eta=2m54s"


@pytest.fixture
def log(tmp_path, monkeypatch):
    monkeypatch.setenv(console.VERBOSE_ENV, "0")  # restored after the test, set or not
    monkeypatch.setattr(console, "_state", {"file": None, "path": None, "said": set(),
                                            "open_line": False})
    yield tmp_path / "run" / "ray.log"
    if console._state["file"] is not None:
        console._state["file"].close()


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def forward(lines, **data):
    printed = []
    console._forward({"lines": lines, "pid": 7, "actor_name": "TrainController", **data},
                     False, show=lambda batch, ignore_prefix: printed.extend(batch["lines"]))
    return printed


def test_only_raydistills_lines_and_failures_reach_the_console():
    assert console.shown(NOISE + [OURS]) == [OURS]
    assert console.shown(NOISE) == []
    failure = ["[FailurePolicy] RETRY", "  Source: worker group", "Error: node 3f2 marked dead"]
    assert console.shown(failure) == failure  # a retry says why, in full
    trace = ["Traceback (most recent call last):", '  File "loop.py", line 3', "ValueError: x"]
    assert console.shown(NOISE[:1] + trace) == NOISE[:1] + trace


def test_every_forwarded_line_goes_to_the_log_file_and_the_first_line_says_where(log, capsys):
    console.log_to(log)
    assert capsys.readouterr().out == f"[raydistill] Ray's own log lines go to {log} " \
                                      "(--verbose shows them here)\n"
    assert forward(NOISE + [OURS]) == [OURS]
    text = log.read_text()
    assert all(f"(TrainController pid=7) {line}\n" in text for line in NOISE + [OURS])
    console.log_to(log)  # the same file again (a second stage): said once
    assert capsys.readouterr().out == ""


def test_step_lines_update_in_place_on_a_terminal_and_stay_lines_elsewhere(log, monkeypatch):
    tty = Tty()
    monkeypatch.setattr("sys.stdout", tty)
    assert forward([OURS]) == []  # drawn here, not printed as a line
    assert forward([OURS.replace("step 50/", "step 100/")]) == []
    console.say("[raydistill] validation rouge2=22.7")
    assert tty.getvalue() == ("\r\033[K" + OURS + "\r\033[K" + OURS.replace("step 50/", "step 100/")
                              + "\n[raydistill] validation rouge2=22.7\n")
    monkeypatch.setattr("sys.stdout", io.StringIO())  # a file or a pipe: a line each
    assert forward([OURS]) == [OURS]


def test_verbose_leaves_rays_printing_alone(log, monkeypatch):
    console.set_verbose(True)
    try:
        assert console.verbose()
        handler_levels = [h.level for h in logging.getLogger("ray").handlers]
        console.quiet_ray_logger()
        assert [h.level for h in logging.getLogger("ray").handlers] == handler_levels
        assert console.log_file() is None
    finally:
        console.set_verbose(False)


@pytest.mark.parametrize("name, child, line", [
    ("ray", "ray._private.worker", "Started a local Ray instance."),
    # Ray Data's logger keeps a console handler of its own and does not propagate to "ray".
    ("ray.data", "ray.data._internal.execution.streaming_executor",
     "Execution plan of Dataset train_0"),
])
def test_rays_own_loggers_write_to_the_file_and_only_errors_to_the_console(
        log, monkeypatch, name, child, line):
    import ray.data  # noqa: F401  (configures both loggers' console handlers)

    logger = logging.getLogger(name)
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))
    stream = next(h for h in logger.handlers if isinstance(h, logging.StreamHandler))
    monkeypatch.setattr(stream, "level", stream.level)
    console.log_to(log)
    console.quiet_ray_logger(name)
    logging.getLogger(child).info(line)
    assert line in log.read_text()
    assert stream.level == logging.ERROR


def test_raydistills_lines_drop_rays_worker_prefix_and_failures_keep_it(log):
    prefixes = []

    def show(batch, ignore_prefix):
        prefixes.append(ignore_prefix)

    console._forward({"lines": [OURS], "pid": 7}, False, show)
    console._forward({"lines": ["Traceback (most recent call last):", "ValueError: x"],
                      "pid": 7}, False, show)
    assert prefixes == [True, False]


def test_a_progress_line_redraws_in_place_on_a_terminal_and_ends_with_the_stage(log, monkeypatch):
    tty = Tty()
    monkeypatch.setattr("sys.stdout", tty)
    console.progress("[raydistill] generation: 10/20 examples")
    console.progress("[raydistill] generation: 20/20 examples", final=True)
    console.say("[raydistill] next")
    assert tty.getvalue() == ("\r\033[K[raydistill] generation: 10/20 examples"
                              "\r\033[K[raydistill] generation: 20/20 examples\n"
                              "[raydistill] next\n")


def test_a_commands_warnings_are_one_line_each(monkeypatch):
    import warnings

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    console.one_line_warnings()
    text = warnings.formatwarning("no hardcoded layers to copy", UserWarning,
                                  "/x/raydistill/models/student.py", 121, "layers = f(n)")
    assert text == "UserWarning: no hardcoded layers to copy (student.py:121)\n"
