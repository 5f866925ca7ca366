"""``raydistill serve``: a warm process that runs later ``raydistill`` commands in a fork of itself.

Every command pays for importing torch, transformers, Ray Train and Ray Data before it can train
(7-11 s on a 2-core machine, BENCHMARKS.md section 10), and a notebook pays it once. A server
pays it once too: it imports them, then waits on a Unix socket. A later ``raydistill ...``
command (the console script, or ``python -m raydistill.cli``) finds the socket and hands its
command line, working folder, environment and terminal (stdin, stdout, stderr) over; the
server forks a child that runs the command exactly as the command would have run itself, with
its imports done, and the command exits with the child's exit code. Ctrl-C and SIGTERM reach
the child. Without a server, or when it cannot serve this command, the command runs itself.

The server serves only what it would run the same way:
- the same raydistill code: it stops itself when a file of the package changed since it
  started (the command then runs itself and says so);
- the same Python, and the same values of the variables that libraries read once, at import
  (``HF_*``, ``TRANSFORMERS_*``, ``TORCH_*``, ``RAY_*``, ...); a command whose values differ
  runs itself.

Ray is never started in the server, only in a child (a fork of a process that runs Ray would
share its connections), so ``--address auto`` and a local Ray both work as without it. The
socket: ``$RAYDISTILL_SERVE_SOCKET``, default ``~/.cache/raydistill/serve.sock``; set
``RAYDISTILL_SERVE=0`` to make a command run itself.

A top-level module below ``cli``: the CLI imports it to hand a command over, or to serve with
its own ``main`` (``serve(main)``); it imports no CLI, so the two form no import circle.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SOCKET_ENV = "RAYDISTILL_SERVE_SOCKET"
DISABLE_ENV = "RAYDISTILL_SERVE"
# Read by a library when it is imported (the server's imports are done): a child must see the
# values the server imported with.
IMPORT_TIME_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "RAY_",
                        "OMP_", "MKL_", "CUDA_", "TOKENIZERS_", "PYTHON", "LD_", "XDG_CACHE")
PACKAGE = Path(__file__).resolve().parent
MAX_MESSAGE = 1 << 20


def socket_path() -> Path:
    return Path(os.environ.get(SOCKET_ENV) or Path.home() / ".cache" / "raydistill" / "serve.sock")


def code_fingerprint() -> str:
    """The package's files (name, size, mtime) and this Python: a change means other code."""
    stats = sorted((str(p.relative_to(PACKAGE)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in PACKAGE.rglob("*.py"))
    return json.dumps([sys.executable, stats])


# Read when they are used, in the child: a command may set them as it likes. (torch writes
# TORCHINDUCTOR_CACHE_DIR into the environment when it first uses its cache, so a script that
# ran torch passes it on to the commands it starts.)
READ_LATER = ("RAY_ADDRESS", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "TORCHINDUCTOR_CACHE_DIR")


def import_time_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items()
            if k.startswith(IMPORT_TIME_PREFIXES) and k not in READ_LATER}


# ---- the command's side ---------------------------------------------------------------------

def hand_over(argv: list[str]) -> int | None:
    """Run ``argv`` in a server's child and return its exit code; None when no server serves it
    (the command then runs itself). Costs one failed connect when no server runs."""
    if os.environ.get(DISABLE_ENV) == "0":
        return None
    path = socket_path()
    if not path.exists():
        return None
    from raydistill.runtime import launch_time

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        return None
    with conn:
        request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
                   "code": code_fingerprint(), "launched": launch_time()}
        try:
            _send(conn, request, fds=[0, 1, 2])
            reply = _recv(conn)
        except OSError as err:  # e.g. no stdin to hand over
            reply = {"refused": f"cannot hand the terminal over ({err})"}
        if reply is None or "refused" in reply:
            why = reply["refused"] if reply else "the server closed the connection"
            print(f"[raydistill] serve: not used ({why}); running here", file=sys.stderr)
            return None
        child = int(reply["pid"])
        forward = {sig: signal.signal(sig, lambda s, _f: _signal_child(child, s))
                   for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            done = _recv(conn)  # the child's exit code, when it ends
        finally:
            for sig, handler in forward.items():
                signal.signal(sig, handler)
        if done is None:  # killed before it could say (SIGKILL, out of memory)
            print("raydistill: error: the serve process's child running this command died "
                  "without an exit code; run it again with RAYDISTILL_SERVE=0", file=sys.stderr)
            return 1
        return int(done["exit"])


def _signal_child(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# ---- the server's side ----------------------------------------------------------------------

def serve(run: Callable[[list[str]], int], path: Path | None = None) -> int:
    """Import the heavy modules, then fork a child per command until stopped (Ctrl-C, SIGTERM);
    each child runs its command line with ``run`` (the CLI's ``main``)."""
    path = path or socket_path()
    t0 = time.time()
    before = dict(os.environ)
    warm_up()
    # What the command's env is compared with: the server's before its imports. What those
    # imports set (Ray sets RAY_CLIENT_MODE) each child sets too, as the command's own would.
    fingerprint, env = code_fingerprint(), import_time_env(before)
    set_by_imports = {k: v for k, v in os.environ.items() if k not in before}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # left by a server that died
        else:
            from raydistill.errors import ConfigError

            raise ConfigError(f"a raydistill server already listens on {path}; stop it "
                              f"(raydistill serve --stop) or set ${SOCKET_ENV} to another path")
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    path.chmod(0o600)  # this user's commands only
    listener.listen(16)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGCHLD, _reap)
    print(f"[raydistill] serve: imports done in {time.time() - t0:.1f} s; later raydistill "
          f"commands run in a fork of this process (socket {path}; Ctrl-C stops it)", flush=True)
    try:
        while True:
            conn, _ = listener.accept()
            why = _serve_one(conn, listener, run, fingerprint, env, set_by_imports)
            if why:
                print(f"[raydistill] serve: stopped ({why})", flush=True)
                return 0
    except KeyboardInterrupt:
        return 0
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def warm_up() -> None:
    """What most commands import: torch, transformers' models, Ray Train, Ray Data, Ray Tune."""
    import raydistill.eval.evaluate  # noqa: F401
    import raydistill.models.generate  # noqa: F401
    import raydistill.models.student  # noqa: F401
    import raydistill.pipeline  # noqa: F401
    import raydistill.tune.sweep  # noqa: F401
    from raydistill.train.run import import_training_stack

    import_training_stack()


def _serve_one(conn: socket.socket, listener: socket.socket, run: Callable[[list[str]], int],
               fingerprint: str, env: dict[str, str], set_by_imports: dict[str, str]) -> str:
    """One command: refuse it, or fork its child. Returns why the server must stop, or ""."""
    with conn:
        try:
            request, fds = _recv(conn, with_fds=True)
        except (OSError, ValueError):
            return ""
        if request is None:
            return ""
        if request.get("stop"):
            _send(conn, {"refused": "stopped"})
            return "raydistill serve --stop"
        refusal, stale = _refusal(request, fingerprint, env)
        if refusal:
            _send(conn, {"refused": refusal})
            for fd in fds:
                os.close(fd)
            return "raydistill's code changed since it started; start it again" if stale else ""
        pid = os.fork()
        if pid == 0:
            listener.close()
            _run_child(conn, request, fds, run, set_by_imports)  # never returns
        for fd in fds:
            os.close(fd)
        print(f"[raydistill] serve: pid {pid} runs raydistill {' '.join(request['argv'])} "
              f"(in {request['cwd']})", flush=True)
    return ""


def _refusal(request: dict[str, Any], fingerprint: str, env: dict[str, str]) -> tuple[str, bool]:
    if request.get("code") != fingerprint:
        return "the server runs older raydistill code; it stopped, start it again", True
    theirs = import_time_env(request.get("env") or {})
    differ = sorted(k for k in set(theirs) | set(env) if theirs.get(k) != env.get(k))
    if differ:
        return (f"{', '.join(differ[:3])} differ from the server's, which its imports read; "
                "start the server with this environment", False)
    return "", False


def _run_child(conn: socket.socket, request: dict[str, Any], fds: list[int],
               run: Callable[[list[str]], int], set_by_imports: dict[str, str]) -> None:
    """In the fork: take the command's terminal, folder and environment, run it, report."""
    code = 1
    try:
        os.setpgid(0, 0)  # a Ctrl-C in the server's terminal is not this command's
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update({**set_by_imports, **request["env"]})
        from raydistill import runtime

        runtime.set_launch_time(float(request["launched"]))
        _send(conn, {"pid": os.getpid()})
        threading.Thread(target=_end_with_the_command, args=(conn,), daemon=True).start()
        sys.argv = ["raydistill", *request["argv"]]  # what Ray records as the job's entrypoint
        code = run(list(request["argv"]))
    except SystemExit as end:  # argparse: --help, usage errors
        code = end.code if isinstance(end.code, int) else (0 if end.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - as the command would: a traceback, exit 1
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        # What the interpreter does at exit (a local Ray this command started shuts down),
        # then the exit code to the command, which exits with it.
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
            _send(conn, {"exit": code if isinstance(code, int) else 1})
        finally:
            os._exit(code if isinstance(code, int) else 1)


def _end_with_the_command(conn: socket.socket) -> None:
    """The command sends nothing more: its end (even by SIGKILL) closes the connection, and
    this child then stops as a killed command would (SIGTERM: Ray's handler shuts it down)."""
    try:
        conn.recv(1)
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def _reap(*_: Any) -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def stop(path: Path | None = None) -> int:
    """``raydistill serve --stop``: end the server listening on the socket, if any."""
    path = path or socket_path()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        print(f"no raydistill server listens on {path}")
        return 0
    with conn:
        _send(conn, {"stop": True})
        reply = _recv(conn) or {}
    print(f"raydistill server on {path}: {reply.get('refused', 'stopped')}")
    return 0


# ---- messages: one JSON object per line, the command's fds beside the first ---------------

def _send(conn: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode() + b"\n"
    if fds:
        socket.send_fds(conn, [data], fds)
    else:
        conn.sendall(data)


def _recv(conn: socket.socket, with_fds: bool = False):
    """The next message (None when the other side closed); with ``with_fds``, (message, fds)."""
    buf, fds = b"", []
    while not buf.endswith(b"\n"):
        if with_fds and not buf:
            chunk, got, _flags, _addr = socket.recv_fds(conn, MAX_MESSAGE, 3)
            fds = list(got)
        else:
            chunk = conn.recv(MAX_MESSAGE)
        if not chunk:
            break
        buf += chunk
    message = json.loads(buf) if buf.endswith(b"\n") else None
    return (message, fds) if with_fds else message
