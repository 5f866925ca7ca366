"""Ray jobs and fault tolerance on a real two-node Ray cluster on this machine.

Each node is one ``ray start --block`` in its own process session, so "stop a node" and
"clean up" mean: signal the processes of that session, found by their PIDs. ``ray stop`` is
never used: it stops every Ray on the machine, other people's included.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv: its `ray`, and its `python` for job entrypoints
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
       "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
# Job-level env vars (none may repeat a key that run.init_ray passes to ray.init: Ray refuses
# to merge two values of one variable). No log dedup: every worker line stays in the job log.
JOB_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "0"}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _session_pids(sid: int) -> list[int]:
    """PIDs of every process in session ``sid`` (one Ray node and all it started)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Node:
    """One ``ray start --block`` in a new session: its processes are that session's."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with open(log, "w") as f:
            self.proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", *args], env=ENV,
                                         stdout=f, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def pids(self) -> list[int]:
        return _session_pids(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL the whole node at once, as a machine that loses power."""
        for pid in self.pids():
            os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (``ray start --block`` then stops its processes), then SIGKILL what is left."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Cluster:
    """A head (1 CPU, dashboard on a free port) and one worker node (1 CPU) on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.gcs_port, self.dashboard_port, client_port = _free_ports(3)
        self.url = f"http://127.0.0.1:{self.dashboard_port}"
        # Worker processes take ports from a range per node, below Linux's ephemeral ports.
        self._worker_ports = iter(range(20000 + 1000 * random.randrange(12), 32000, 100))
        self.head = Node(["--head", f"--port={self.gcs_port}",
                          f"--dashboard-port={self.dashboard_port}",
                          f"--ray-client-server-port={client_port}", *self._node_args(),
                          f"--temp-dir={root / 'ray'}"], root / "head.log")
        self.worker: Node | None = None
        self.restarts = 0
        self._wait_nodes(1)
        self.ensure_two_nodes()

    def _node_args(self) -> list[str]:
        # Every port explicit and distinct: two nodes share this machine with other Rays.
        names = ("node-manager", "object-manager", "dashboard-agent-listen",
                 "dashboard-agent-grpc", "runtime-env-agent", "metrics-export")
        low = next(self._worker_ports)
        return ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats",
                f"--object-store-memory={300 * 2**20}",
                f"--min-worker-port={low}", f"--max-worker-port={low + 99}",
                *(f"--{name}-port={port}" for name, port in zip(names, _free_ports(len(names))))]

    def ensure_two_nodes(self) -> None:
        """Start (or restart, after a test stopped it) the second node."""
        if self.worker is not None and self.worker.proc.poll() is None:
            return
        self.worker = Node([f"--address=127.0.0.1:{self.gcs_port}", *self._node_args()],
                           self.root / f"worker_{self.restarts}.log")
        self.restarts += 1
        self._wait_nodes(2)

    def _wait_nodes(self, n: int, timeout: float = 90) -> None:
        from ray.util.state import list_nodes

        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if sum(x.state == "ALIVE" for x in list_nodes(address=self.url, timeout=5)) >= n:
                    return
            except Exception:  # noqa: BLE001 - the dashboard is still starting
                pass
            time.sleep(1)
        raise TimeoutError(f"{n} Ray nodes not alive after {timeout} s; see {self.root}/*.log")

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.url)

    def runtime_env(self, **env_vars: str) -> str:
        # RAY_ADDRESS for Ray Train's helper actors too: with several Rays on one machine they
        # cannot guess which one is theirs.
        return json.dumps({"env_vars": {**JOB_ENV, "RAY_ADDRESS": f"127.0.0.1:{self.gcs_port}",
                                        **env_vars}})

    def submit(self, config: Path, *args: str, env: dict[str, str] | None = None) -> str:
        """``ray job submit --no-wait`` of jobs/distill.py from the repo; returns the job id."""
        out = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", self.url, "--working-dir", ".",
             "--no-wait", "--runtime-env-json", self.runtime_env(**(env or {})),
             "--", "python", "jobs/distill.py", str(config), *args],
            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120, check=True)
        return next(w for w in out.stdout.split() + out.stderr.split() if w.startswith("'raysubmit_")
                    ).strip("'")

    def wait_job(self, job_id: str, timeout: float) -> str:
        from ray.job_submission import JobStatus

        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.client().get_job_status(job_id)
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                return status.value
            time.sleep(2)
        raise TimeoutError(f"job {job_id} still running after {timeout} s:\n" + self.logs(job_id))

    def logs(self, job_id: str) -> str:
        return self.client().get_job_logs(job_id)

    def stop(self) -> None:
        for node in (self.worker, self.head):
            if node is not None:
                node.stop()


@pytest.fixture(scope="module")
def cluster():
    # A short temp dir: Ray's socket paths under it must stay below the 107-byte limit.
    root = Path(tempfile.mkdtemp(prefix="rdc_", dir="/tmp"))
    c = None
    try:
        c = Cluster(root)
        yield c
    finally:
        if c is not None:
            c.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Generated data (the demo's stories) and a tiny random 4-4 BART to shrink to 2-1."""
    from raydistill.demo import build_teacher_init, write_dataset

    root = tmp_path_factory.mktemp("cluster_inputs")
    data = write_dataset(root / "data", n_train=256, n_val=8, n_test=8)
    return {"data_dir": str(data), "teacher": str(build_teacher_init(data, root / "teacher"))}


def write_config(tmp_path: Path, inputs: dict[str, str], **changes) -> Path:
    """sft of a 2-1 student, 2 workers x 1 CPU (one per node): 32 batches per worker and epoch,
    a validation and checkpoint every 8 steps, 80 steps (~30 s here, after ~60 s of start-up)."""
    cfg = dict(method="sft", task="summarization", student_encoder_layers=2,
               student_decoder_layers=1, output_dir=str(tmp_path / "out"),
               storage_path=str(tmp_path / "storage"), run_name="cluster_test",
               num_workers=2, cpus_per_worker=1, max_failures=1, n_train=256, max_steps=80,
               val_check_interval=0.25, train_batch_size=4, eval_batch_size=8, eval_beams=1,
               max_source_length=64, max_target_length=24, val_max_target_length=16,
               test_max_target_length=16, learning_rate=1e-3, logger="none",
               log_every_n_steps=4, do_predict=False, seed=0, **inputs)
    cfg.update(changes)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def wait_for_checkpoint(storage: Path, running, logs, timeout: float = 300) -> None:
    """Until Ray has registered a checkpoint (it writes the manager snapshot after each one)."""
    snapshot = storage / "cluster_test" / "checkpoint_manager_snapshot.json"
    deadline = time.time() + timeout
    while not snapshot.exists():
        if time.time() > deadline or not running():
            raise AssertionError("no checkpoint registered while the job ran:\n" + logs())
        time.sleep(0.5)


def checkpoint_steps(storage: Path) -> dict[int, Path]:
    return {json.loads((c / "trainer_state.json").read_text())["global_step"]: c
            for c in (storage / "cluster_test").glob("checkpoint_*") if c.is_dir()}


@pytest.fixture(scope="module")
def killed_run(cluster, inputs, tmp_path_factory):
    """`ray job submit ... -- python jobs/distill.py CONFIG` as a user types it (blocking);
    one RayTrainWorker is SIGKILLed after the first checkpoint, and max_failures=1."""
    tmp = tmp_path_factory.mktemp("killed_run")
    # storage_path as a URI: the pyarrow file system path that s3:// and gs:// take too.
    config = write_config(tmp, inputs, do_predict=True, n_test=8,
                          storage_path=f"file://{tmp / 'storage'}")
    log = tmp / "submit.log"
    with open(log, "w") as f:
        submit = subprocess.Popen(
            [str(BIN / "ray"), "job", "submit", "--address", cluster.url, "--working-dir", ".",
             "--runtime-env-json", cluster.runtime_env(), "--",
             "python", "jobs/distill.py", str(config)],
            cwd=REPO, env=ENV, stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_for_checkpoint(tmp / "storage", lambda: submit.poll() is None, log.read_text)
        pids = [p for p in cluster.worker.pids() if "RayTrainWorker" in _cmdline(p)]
        assert pids, "no RayTrainWorker on the second node:\n" + log.read_text()
        os.kill(pids[0], signal.SIGKILL)
        submit.wait(timeout=300)
    finally:
        if submit.poll() is None:
            submit.kill()
    return submit.returncode, log.read_text(), tmp


@pytest.mark.timeout(600)
def test_distill_job_on_two_nodes_writes_outputs(killed_run):
    """(a) The job succeeds and leaves the run's outputs in output_dir."""
    returncode, logs, tmp = killed_run
    assert returncode == 0 and "succeeded" in logs, logs
    # The job imported raydistill from its uploaded working dir (no sys.path tricks).
    imported_from = logs.split("[distill] raydistill 0.1.0 from ")[1].splitlines()[0]
    assert "/runtime_resources/working_dir_files/_ray_pkg_" in imported_from, imported_from
    out = tmp / "out"
    for name in ("best_tfmr/model.safetensors", "best_tfmr/config.json", "student/config.json",
                 "metrics.json", "hparams.json", "test_results.json", "test_generations.txt"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final_step"] == 80 and metrics["test"]["n_examples"] == 8


@pytest.mark.timeout(600)  # the shared run counts against whichever test starts it
def test_killed_train_worker_resumes_from_latest_checkpoint(killed_run):
    """(b) The restart resumed from a checkpoint's step, not from 0, and went on from there."""
    _, logs, tmp = killed_run
    metrics = json.loads((tmp / "out" / "metrics.json").read_text())
    (resumed,) = metrics["resumed_from"]  # exactly one restart
    assert resumed > 0 and resumed % 8 == 0, metrics["resumed_from"]
    assert f"resumed from checkpoint at step {resumed} " in logs
    assert [v["step"] for v in metrics["val"]] == list(range(8, 81, 8))  # none lost or repeated


@pytest.mark.timeout(600)
def test_lost_node_leaves_a_resumable_checkpoint(cluster, inputs, tmp_path):
    """(c) The second node dies mid-run. With num_workers=2 fixed and one CPU left, Ray Train
    names the dead node and waits for resources (an autoscaler would add a node), retrying
    every RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S. We stop that job and resume its latest
    checkpoint on the node that is left, with num_workers=1."""
    from ray.util.state import list_nodes

    from raydistill.models.layers import load_seq2seq

    cluster.ensure_two_nodes()
    lost = next(n.node_id for n in list_nodes(address=cluster.url) if not n.is_head_node
                and n.state == "ALIVE")
    config = write_config(tmp_path, inputs)
    storage = tmp_path / "storage"
    job = cluster.submit(config, env={"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "10"})
    try:
        wait_for_checkpoint(storage, lambda: not cluster.client().get_job_status(job).is_terminal(),
                            lambda: cluster.logs(job))
        cluster.worker.kill()
        deadline = time.time() + 180
        while "worker group startup timed out" not in cluster.logs(job):
            assert time.time() < deadline, cluster.logs(job)
            time.sleep(2)
        logs = cluster.logs(job)
        assert lost in logs and "marked dead" in logs, logs  # Ray names the node it lost
        assert cluster.client().get_job_status(job).value == "RUNNING"  # waiting, not failed
    finally:
        cluster.client().stop_job(job)
        cluster.wait_job(job, timeout=60)

    # Every checkpoint left behind is whole: a loadable model and the state to resume from.
    steps = checkpoint_steps(storage)
    assert steps and min(steps) > 0
    for path in steps.values():
        assert load_seq2seq(str(path)).config.decoder_layers == 1

    # `--resume` on what is left (the head, 1 CPU) with one worker.
    job = cluster.submit(config, "num_workers=1", "--resume")
    try:
        assert cluster.wait_job(job, timeout=300) == "SUCCEEDED", cluster.logs(job)
    finally:
        cluster.client().stop_job(job)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    # The newest folders may be ones rank 0 wrote but Ray never registered (its peer was gone
    # before the controller collected the reports): the run still resumes from the newest.
    (resumed,) = metrics["resumed_from"]
    assert resumed == max(steps) and metrics["final_step"] == 80, (steps, metrics)
