"""Ray start-up, the runtime environment every Ray-using stage shares, and the checks each
stage runs before it spends a resource (cluster resources, a writable output folder).

A low module: ``data/``, ``models/``, ``train/``, ``eval/`` and ``tune/`` import it, it imports
nothing of raydistill, so no stage has to import a later one to start Ray. (The model-folder
checks, the other thing every stage needs before it spends a resource, are ``raydistill.hub``'s.)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
}
# Passed to the workers only when the user set them: workers load local folders (the driver
# resolves Hub ids), so offline or not is the user's choice, never ours.
PASSED_THROUGH = ("HF_HUB_OFFLINE",)


# A local Ray started by a command shows the dashboard (http://127.0.0.1:8265) only when this is 1.
DASHBOARD_ENV = "RAYDISTILL_DASHBOARD"

# Port 1 (tcpmux) is never served here: a state-API query is refused at once.
NO_STATE_API = "http://127.0.0.1:1"

# How long a stage waits for resources an attached cluster does not have yet (an autoscaler may
# still add them); a local Ray fails at once. The user sets it with $RAYDISTILL_RESOURCE_TIMEOUT_S.
RESOURCE_TIMEOUT_ENV = "RAYDISTILL_RESOURCE_TIMEOUT_S"
DEFAULT_RESOURCE_TIMEOUT_S = 300.0


def init_ray(address: str | None = None) -> None:
    """Join ``address`` (or $RAY_ADDRESS) when given; otherwise start a local Ray. A cluster
    address that does not answer is a one-line ConfigError, not a traceback."""
    import ray

    from raydistill.console import quiet_forwarded_lines, quiet_ray_logger
    from raydistill.errors import ConfigError

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    global _attached_flag
    _attached_flag = bool(address) and address != "local"
    # Inside `ray job submit`, the job's runtime env may set some of these already: Ray refuses
    # to merge two values for one variable, so the job's own win.
    job_env = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}") or "{}")
    job_runtime_env = job_env.get("runtime_env") or {}
    taken = set(job_runtime_env.get("env_vars") or {})
    passed = {k: os.environ[k] for k in PASSED_THROUGH if k in os.environ}
    env = {k: v for k, v in {**RAY_ENV, **passed}.items() if k not in taken}
    runtime_env: dict = {"env_vars": env}
    if "worker_process_setup_hook" not in job_runtime_env:
        runtime_env["worker_process_setup_hook"] = f"{__name__}.{pin_cluster_address.__name__}"
    # Ray itself waits minutes, mostly silently, for an address where nothing listens.
    problem = _unreachable(address) if _attached_flag else None
    # Start-up: a local Ray skips the dashboard's UI modules (about 1.5 s of ray.init and a
    # process per module on a small machine) unless $RAYDISTILL_DASHBOARD=1; the Train
    # controller polls its workers every 0.5 s instead of 2 (it sees them start and end sooner).
    local = {} if _attached_flag else {"include_dashboard": os.environ.get(DASHBOARD_ENV) == "1"}
    if local and not local["include_dashboard"] and "RAY_API_SERVER_ADDRESS" not in taken:
        # Without its dashboard a local Ray still names http://127.0.0.1:8265 as its state API:
        # once another Ray's dashboard takes that port, Ray Train's placement-group cleaner
        # asked that cluster whether this run's controller lived, heard "no" and removed the
        # run's placement group (a teacher run died at step 700 when a test session started).
        # The cleaner now asks the GCS (pin_cluster_address); any other state-API query of
        # these workers gets an address where nothing answers rather than another cluster.
        env["RAY_API_SERVER_ADDRESS"] = NO_STATE_API
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    quiet_ray_logger()
    try:
        if problem is None:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, **local)
            global _started_local
            _started_local = not _attached_flag
            quiet_forwarded_lines()
    except (ConnectionError, TimeoutError) as err:
        problem = first_line(err)
    if problem is not None:
        raise ConfigError(f"no Ray cluster answers at {address} ({problem}); start one there "
                          "(ray start --head, or ray up cluster.yaml), fix --address / "
                          "RAY_ADDRESS, or leave both unset to start a local Ray")
    quiet_ray_data()
    quiet_ray_logger("ray.data")


def add_address_arg(parser) -> None:
    """``--address``, for a command that starts or joins Ray (``join_address`` applies it)."""
    parser.add_argument("--address", default=None, help="Ray cluster address, e.g. a GPU "
                        "cluster's ray://head:10001 (default: $RAY_ADDRESS, else a local Ray)")


def join_address(address: str | None) -> None:
    """A command's ``--address``: every ``init_ray`` of this process joins it, as it would join
    $RAY_ADDRESS (set here; the stage's input checks still run before Ray starts)."""
    if address:
        os.environ["RAY_ADDRESS"] = address


def _starts_local_ray(address: str | None = None) -> bool:
    """Whether ``init_ray(address)`` starts a Ray in this process rather than joining one."""
    joins = address or os.environ.get("RAY_ADDRESS")
    return not joins or joins == "local"


def init_ray_during(work: Callable[[], T], address: str | None = None,
                    beside: Callable[[], None] | None = None) -> T:
    """Run ``work()`` on a helper thread while this thread starts or joins Ray (``init_ray``);
    returns what ``work`` returned. ``beside`` (warming imports) runs after ``work`` on the
    helper, only while a local Ray starts.

    A local Ray takes 5-7 s to start on a small machine, mostly waiting for its processes; the
    imports and model writes a stage does next keep one core busy for as long. Side by side they
    take about the longer of the two. Ray stays on the main thread: only there can it install
    its SIGTERM handler, which stops a local Ray when the command is killed. The input checks
    run before this call, so a bad input starts no Ray. An error of ``work`` wins over Ray's:
    the Ray this call started is shut down first, so it leaves none behind.

    Joining a cluster (``address`` or $RAY_ADDRESS) runs ``work`` first, then joins: joining
    takes about a second, and inside ``ray job submit`` it re-creates the job's working_dir,
    the driver's current folder, while it runs (an import beside it failed in os.getcwd;
    a driver that had imported Ray Train before it joined could not import raydistill from
    the job's working_dir after: tests/integration/test_cluster.py).
    """
    import threading

    import ray

    if ray.is_initialized() or not _starts_local_ray(address):
        value = work()
        init_ray(address)
        return value
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
            if beside is not None:
                beside()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread below
            outcome["error"] = err

    helper = threading.Thread(target=run, name="raydistill-prepare", daemon=True)
    helper.start()
    try:
        init_ray(address)
    except Exception:
        helper.join()
        if "error" in outcome:
            raise outcome["error"] from None
        raise
    helper.join()
    if "error" in outcome:
        ray.shutdown()
        raise outcome["error"]
    return outcome["value"]


def pin_cluster_address() -> None:
    """Every Ray worker's setup hook (init_ray): $RAY_ADDRESS = this worker's own cluster.

    Ray resolves an unset address to the cluster started last on the machine
    (/tmp/ray/ray_current_cluster). Ray Train's placement-group cleaner asks the state API, so
    addressed, whether its controller is alive; once a second local Ray started on the same
    machine (a second raydistill command, a test session, a notebook), the answer could come
    from that other cluster, which knows no such actor, and the cleaner removed the running
    training's placement group, which killed the run (seen: a teacher run died at step 250
    when a test session started beside it; tests/integration/test_two_local_rays.py).
    """
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    sys.meta_path.insert(0, _CleanerAsksGcs())


# Ray Train's placement-group cleaner (a detached actor per run) asks the state API every second
# whether the run's controller lives. That API is served by Ray's dashboard, which a local Ray of
# ours starts without: every question failed (a warning each second, 150 of a demo's 280 lines),
# and a controller that died was never seen, so its placement group leaked. The GCS, which every
# Ray has, holds the same answer: the cleaner's module gets a liveness check that asks it.
CLEANER_MODULE = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def actor_alive_in_gcs(actor_id: str, timeout: float | None = None) -> bool:
    """Whether the actor lives, from this cluster's GCS (no dashboard needed). An actor the GCS
    does not know counts as alive: the cleaner must never remove a running run's resources on a
    doubt. (``timeout``: the signature of the check it replaces.)"""
    from ray._private import state

    info = state.actors(actor_id=actor_id)
    return not info or info.get("State") != "DEAD"


class _CleanerAsksGcs:
    """An import hook (``sys.meta_path``) that, once the cleaner's module is imported in this
    worker, replaces its state-API check with ``actor_alive_in_gcs``; any other import passes."""

    def find_spec(self, name: str, path: Any = None, target: Any = None):
        if name != CLEANER_MODULE:
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            if hasattr(module, "is_actor_alive"):
                module.is_actor_alive = actor_alive_in_gcs

        spec.loader.exec_module = exec_module
        return spec


def _unreachable(address: str, timeout_s: float = 5.0) -> str | None:
    """Why nothing answers at ``host:port`` (None when something listens, or for ``auto``)."""
    import socket

    hostport = address.split("://", 1)[-1]
    if hostport in ("auto", "") or ":" not in hostport:
        return None
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return None
    except ValueError:
        return f"{port!r} is not a port"
    except OSError as err:
        return err.strerror or type(err).__name__


def check_output_dir(out: Path, *, overwrite: bool, resume: bool) -> None:
    """A run's ``output_dir``: writable; non-empty only with ``--resume`` or ``--overwrite``;
    holding an earlier run (``hparams.json``) with ``--resume``."""
    from raydistill.errors import ConfigError

    check_writable(out, "output_dir")
    if out.exists() and any(out.iterdir()) and not (overwrite or resume):
        raise ConfigError(f"output_dir {out} is not empty; pass --resume to continue that run, "
                          "--overwrite to start over there, or choose another output_dir")
    if resume and not (out / "hparams.json").exists():
        raise ConfigError(f"--resume: {out} holds no earlier run (no hparams.json); drop --resume")


def check_writable(folder: str | os.PathLike, key: str) -> None:
    """``folder`` (created if missing) takes files; else a one-line ConfigError naming ``key``."""
    import tempfile

    from raydistill.errors import ConfigError

    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".raydistill_write_test."):
            pass
    except OSError as err:
        raise ConfigError(f"{key} {folder} cannot be written ({err.strerror or err}); choose a "
                          "folder you can write to") from None


def launch_time() -> float:
    """When this process started (epoch seconds): start-up is counted from the launch. In a
    ``raydistill serve`` child: when the command that handed itself over started."""
    if _LAUNCHED_AT:
        return _LAUNCHED_AT
    started = process_start_time()
    if started is not None:
        return started
    import time

    try:  # not Linux
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - no psutil: count from the first call
        global _FIRST_CALL
        _FIRST_CALL = _FIRST_CALL or time.time()
        return _FIRST_CALL


def process_start_time() -> float | None:
    """When this very process started (epoch seconds, Linux; None elsewhere): unlike
    ``launch_time``, a ``raydistill serve`` child gets its own fork's start."""
    import time

    age = _process_age_s()
    return None if age is None else time.time() - age


def _process_age_s() -> float | None:
    """Seconds since this process started, both ends on the kernel's clock since boot (Linux).

    psutil's create_time adds the boot time, which the kernel gives in whole seconds: it put
    every launch up to a second early (1.02 s on the machine of BENCHMARKS.md section 10).
    """
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


_FIRST_CALL = 0.0
_RUNS_STARTED = 0
_LAUNCHED_AT = 0.0


def set_launch_time(when: float) -> None:
    """This process runs a command launched at ``when`` (a ``raydistill serve`` child)."""
    global _LAUNCHED_AT
    _LAUNCHED_AT = when


def run_start(called: float) -> tuple[float, str]:
    """Where a run's start-up is counted from, and its name: the process's launch for the first
    run in a process (a command: its imports count), ``called`` for each later run in the same
    process (a notebook or a script running several, whose imports are done)."""
    global _RUNS_STARTED
    _RUNS_STARTED += 1
    return (launch_time(), "launch") if _RUNS_STARTED == 1 else (called, "the call")


class Progress:
    """``[raydistill] <what>: done/total examples, ex/s, ETA`` every ``every_s`` seconds and at
    the end: redrawn in place on a terminal, one line at a time in log files and ``ray job
    logs`` (``console.progress``)."""

    def __init__(self, what: str, total: int, every_s: float = 10.0) -> None:
        import time

        self.what, self.total, self.every_s = what, total, every_s
        self.done = 0
        self.start = self.last = time.monotonic()

    def add(self, n: int) -> None:
        import time

        from raydistill.console import progress

        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta = f", ETA {left:.0f} s" if self.done < self.total else f", {now - self.start:.0f} s"
            progress(f"[raydistill] {self.what}: {self.done}/{self.total} examples, "
                     f"{rate:.1f} ex/s{eta}", final=self.done >= self.total)


def first_line(err: BaseException) -> str:
    """An error's message on one line (an OSError's strerror when it has one)."""
    text = (err.strerror if isinstance(err, OSError) and err.strerror else str(err)).strip()
    return (text.splitlines() or [type(err).__name__])[0][:200]


def check_resources(what: str, cpus: float, gpus: float = 0.0, *, per_unit_cpus: float = 0.0,
                    per_unit_gpus: float = 0.0, fix: str, attached: bool | None = None,
                    timeout_s: float | None = None, poll_s: float = 10.0) -> None:
    """Before a stage asks Ray for ``cpus`` / ``gpus`` in all (``per_unit_*`` for each worker or
    actor, which must fit on one node): a request the cluster cannot meet is a one-line
    ConfigError with the numbers and ``fix``, instead of a wait that never ends.

    On a cluster we attached to (an autoscaler may still add nodes) the request is waited for,
    saying so once and then every ``poll_s`` seconds what is missing, for ``timeout_s`` seconds
    ($RAYDISTILL_RESOURCE_TIMEOUT_S, default 300) before the same error. Ray must be running.
    """
    import time

    import ray

    from raydistill.errors import ConfigError

    if attached is None:
        attached = _attached_flag
    if timeout_s is None:
        timeout_s = float(os.environ.get(RESOURCE_TIMEOUT_ENV) or DEFAULT_RESOURCE_TIMEOUT_S)
    start = time.monotonic()
    said = False
    while True:
        missing = _missing(cpus, gpus, per_unit_cpus, per_unit_gpus)
        if not missing:
            return
        waited = time.monotonic() - start
        if not attached or waited >= timeout_s:
            after = f" after waiting {waited:.0f} s" if attached else ""
            raise ConfigError(f"{what} needs {missing}{after}; {fix}")
        if not said:
            print(f"[raydistill] {what} needs {missing}; this cluster may still add nodes: "
                  f"waiting up to {timeout_s:.0f} s (${RESOURCE_TIMEOUT_ENV})", flush=True)
            said = True
        else:
            print(f"[raydistill] still waiting for {missing} ({waited:.0f} s)", flush=True)
        time.sleep(poll_s)


_attached_flag = False  # set by init_ray when it joined a running cluster
_started_local = False  # set by init_ray when it started a Ray in this process


def actor_restarts() -> dict[str, int]:
    """The restarts of an actor pool's actors on a Ray this process started (one machine): none.
    Ray Data restarts a pool's dead actors by default, and Ray 2.60's core worker then prints
    an error line on the console for every actor it creates (its constructor arguments are in
    the object store: ray-project/ray#57733). On one machine a restart only repeats what ended
    the actor (its memory), so the stage stops with that error instead. On a cluster, where a
    lost node ends its actors, and in processes that joined a Ray, they restart as Ray Data's
    default has it ({})."""
    return {"max_restarts": 0} if _started_local else {}


def pool_map_batches(ds, fn, **kwargs):
    """``ds.map_batches(fn, **kwargs)`` on an actor pool, with ``actor_restarts``. Ray 2.60 takes
    an actor's restarts only as an extra keyword, which it deprecates (its warning is silenced
    here); a Ray whose ``map_batches`` takes none keeps its default."""
    import inspect
    import warnings

    params = inspect.signature(type(ds).map_batches).parameters.values()
    extra = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(fn, **kwargs, **(actor_restarts() if extra else {}))


def check_actor_pool(what: str, actors: int, cpus_per_actor: float, gpus_per_actor: float,
                     knob: str = "num_workers") -> None:
    """``check_resources`` for a Ray Data actor pool of ``actors`` (a fixed-size pool waits
    until every actor is placed)."""
    check_resources(what, actors * cpus_per_actor, actors * gpus_per_actor,
                    per_unit_cpus=cpus_per_actor, per_unit_gpus=gpus_per_actor,
                    fix=f"use fewer actors ({knob}={actors} now)"
                        + (", a share of a GPU per actor (num_gpus=0.5: two actors on each GPU), "
                           "or no GPU (num_gpus=0)" if gpus_per_actor else ""))


def actor_threads() -> int:
    """Threads for this process's compute: the CPUs Ray gave this actor or task (actors share
    the node, so not every core of it), 1 outside a Ray worker."""
    import ray

    cpus = 1.0
    if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(cpus))


def _missing(cpus: float, gpus: float, per_cpus: float, per_gpus: float) -> str:
    """What the cluster lacks for the request, in words ('' when nothing)."""
    import ray

    total = ray.cluster_resources()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    have_cpu, have_gpu = total.get("CPU", 0.0), total.get("GPU", 0.0)
    biggest_cpu = max((n.get("CPU", 0.0) for n in nodes), default=have_cpu)
    biggest_gpu = max((n.get("GPU", 0.0) for n in nodes), default=have_gpu)
    eps = 1e-6
    if gpus > have_gpu + eps:
        return f"{gpus:g} GPUs but the Ray cluster has {have_gpu:g}"
    if cpus > have_cpu + eps:
        return f"{cpus:g} CPUs but the Ray cluster has {have_cpu:g}"
    if per_cpus > biggest_cpu + eps:
        return f"{per_cpus:g} CPUs on one node but the largest node has {biggest_cpu:g}"
    if per_gpus > biggest_gpu + eps:
        return f"{per_gpus:g} GPUs on one node but the largest node has {biggest_gpu:g}"
    return ""


def quiet_ray_data() -> None:
    """Ray Data's per-operator progress bars flood logs that are not terminals."""
    import sys

    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    ctx.enable_operator_progress_bars = False


__all__ = ["PASSED_THROUGH", "RAY_ENV", "RESOURCE_TIMEOUT_ENV", "add_address_arg",
           "check_actor_pool", "check_output_dir", "check_resources", "check_writable", "first_line", "launch_time",
           "Progress", "init_ray", "join_address", "quiet_ray_data"]
