"""`raydistill serve`: later commands run in a fork of a warm server, exactly as they would run
themselves (exit code, stdout, stderr, working folder), and a command the server cannot run the
same way runs itself."""

import os
import subprocess
import sys
import time

import pytest

from raydistill import serve


@pytest.fixture
def server(tmp_path):
    """A server on a socket of this test's own; its log lines are read from a file."""
    sock = tmp_path / "s.sock"
    log = tmp_path / "server.log"
    env = {**os.environ, serve.SOCKET_ENV: str(sock)}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "raydistill.cli", "serve"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while "imports done" not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the server did not start in 120 s"
        time.sleep(0.2)
    yield env, log
    proc.terminate()
    proc.wait(timeout=30)
    assert not sock.exists()


def cli(env, *args, cwd):
    return subprocess.run([sys.executable, "-m", "raydistill.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_a_command_runs_in_the_servers_fork_as_it_would_run_itself(server, tiny_bart_dir,
                                                                  tmp_path):
    env, log = server
    done = cli(env, "make-student", str(tiny_bart_dir), "--save-path", "student", "-d", "1",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "student saved to student" in done.stdout and "serve" not in done.stderr
    assert (tmp_path / "student" / "config.json").exists()  # the command's folder, not the server's
    assert "runs raydistill make-student" in log.read_text()
    # An input error: one line on the command's stderr, exit 2, as without a server.
    bad = cli(env, "distill", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "missing.yaml" in bad.stderr, bad.stderr
    assert log.read_text().count("runs raydistill") == 2


def test_a_command_with_other_import_time_variables_runs_itself(server, tmp_path):
    env, log = server
    done = cli({**env, "HF_HUB_OFFLINE": "0" if env.get("HF_HUB_OFFLINE") == "1" else "1"},
               "distill", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert "serve: not used (HF_HUB_OFFLINE differ" in lines[0] and "missing.yaml" in lines[1]
    assert "runs raydistill" not in log.read_text()
    # and RAYDISTILL_SERVE=0 keeps every command in its own process
    quiet = cli({**env, serve.DISABLE_ENV: "0"}, "distill", "missing.yaml", cwd=tmp_path)
    assert quiet.returncode == 2 and "serve" not in quiet.stderr
    assert "runs raydistill" not in log.read_text()


def test_other_code_or_environment_is_refused():
    fingerprint = serve.code_fingerprint()
    env = serve.import_time_env(dict(os.environ))
    same = {"code": fingerprint, "env": dict(os.environ)}
    assert serve._refusal(same, fingerprint, env) == ("", False)
    why, stale = serve._refusal({**same, "code": "other"}, fingerprint, env)
    assert stale and "older raydistill code" in why
    why, stale = serve._refusal({**same, "env": {**os.environ, "TORCH_HOME": "/x"}},
                                fingerprint, env)
    assert not stale and "TORCH_HOME" in why


def test_without_a_server_a_command_runs_itself(tmp_path, monkeypatch):
    monkeypatch.setenv(serve.SOCKET_ENV, str(tmp_path / "none.sock"))
    assert serve.hand_over(["distill", "x.yaml"]) is None
    (tmp_path / "none.sock").write_text("")  # a file left behind, nothing listening
    assert serve.hand_over(["distill", "x.yaml"]) is None
