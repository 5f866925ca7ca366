"""`raydistill serve`: later commands run in a fork of a warm server, exactly as they would run
themselves (exit code, stdout, stderr, working folder), and a command the server cannot run the
same way runs itself."""

import os
import subprocess
import sys
import time

import pytest

from raydistill import serve


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server on a socket of this module's own; its log lines are read from a file."""
    tmp = tmp_path_factory.mktemp("serve")
    sock, log = tmp / "s.sock", tmp / "server.log"
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


def served(log) -> int:
    return log.read_text().count("runs raydistill")


def cli(env, *args, cwd):
    return subprocess.run([sys.executable, "-m", "raydistill.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_a_command_runs_in_the_servers_fork_as_it_would_run_itself(server, tiny_bart_dir,
                                                                  tmp_path):
    env, log = server
    before = served(log)
    done = cli(env, "make-student", str(tiny_bart_dir), "--save-path", "student", "-d", "1",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "student saved to student" in done.stdout and "serve" not in done.stderr
    assert (tmp_path / "student" / "config.json").exists()  # the command's folder, not the server's
    assert served(log) == before + 1 and "runs raydistill make-student" in log.read_text()
    # An input error: one line on the command's stderr, exit 2, as without a server.
    bad = cli(env, "distill", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "missing.yaml" in bad.stderr, bad.stderr
    assert served(log) == before + 2


def test_a_command_with_other_import_time_variables_runs_itself(server, tmp_path):
    env, log = server
    before = served(log)
    done = cli({**env, "HF_HUB_OFFLINE": "0" if env.get("HF_HUB_OFFLINE") == "1" else "1"},
               "distill", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert "serve: not used (HF_HUB_OFFLINE differ" in lines[0] and "missing.yaml" in lines[1]
    # and RAYDISTILL_SERVE=0 keeps every command in its own process
    quiet = cli({**env, serve.DISABLE_ENV: "0"}, "distill", "missing.yaml", cwd=tmp_path)
    assert quiet.returncode == 2 and "serve" not in quiet.stderr
    assert served(log) == before


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_a_stopped_command_stops_its_child(server, tiny_bart_dir, tiny_data_dir, tmp_path, stop):
    """SIGTERM reaches the child (Ray's handler shuts its local Ray down); a command killed
    outright (SIGKILL) closes its connection, and the child stops too."""
    import re
    import signal

    import yaml

    env, log = server
    config = {"method": "kd", "teacher": str(tiny_bart_dir), "student_decoder_layers": 1,
              "data_dir": str(tiny_data_dir), "output_dir": str(tmp_path / "out"),
              "num_workers": 0, "max_steps": 100000, "log_every_n_steps": 1,
              "n_val": 1, "eval_max_gen_length": 4, "do_predict": False}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        command = subprocess.Popen([sys.executable, "-m", "raydistill.cli", "distill", "c.yaml"],
                                   env=env, cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while "first optimizer step" not in out.read_text():
        assert command.poll() is None, out.read_text()
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.5)
    child = int(re.findall(r"pid (\d+) runs raydistill distill c.yaml", log.read_text())[-1])
    command.send_signal(getattr(signal, stop))
    assert command.wait(timeout=60) != 0
    deadline = time.monotonic() + 60
    while _alive(child):
        assert time.monotonic() < deadline, f"the child {child} still runs after {stop}"
        time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


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
    # read when used, not at import: a command may bring its own
    later = {**same, "env": {**os.environ, "TORCHINDUCTOR_CACHE_DIR": "/tmp/x",
                             "RAY_ADDRESS": "auto"}}
    assert serve._refusal(later, fingerprint, env) == ("", False)


def test_without_a_server_a_command_runs_itself(tmp_path, monkeypatch):
    monkeypatch.setenv(serve.SOCKET_ENV, str(tmp_path / "none.sock"))
    assert serve.hand_over(["distill", "x.yaml"]) is None
    (tmp_path / "none.sock").write_text("")  # a file left behind, nothing listening
    assert serve.hand_over(["distill", "x.yaml"]) is None
