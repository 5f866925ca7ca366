"""bench/gpu_check.sh --rehearsal: the device script's stages on this CPU at tiny sizes, so that
the script a GPU session runs first cannot rot between sessions that have a GPU.

It runs with a pack of this test's making (the data of ``bench/device_pack.py --data-only`` and
a one-module ``site.tar.xz``), so the pack stage unpacks and puts it on PYTHONPATH as on the
device. Each stage must end ``ok`` or ``SKIP`` with a reason, the summary table must come last,
and the logs and figures must lie under $OUT.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
STAGES = ("pack", "probes", "tests", "kd_memory", "generation", "overhead", "memory")


def _make_pack(pack: Path) -> None:
    """data.tar.xz (when the shared data is here) and a site.tar.xz holding one module."""
    if (SHARED_DATA / "scitldr" / "train.source").is_file():
        subprocess.run([sys.executable, str(REPO / "bench" / "device_pack.py"), "--data-only",
                        "--lines", "300", "--out", str(pack)], check=True, cwd=REPO,
                       capture_output=True)
    pack.mkdir(parents=True, exist_ok=True)
    code = b"PACKED = True\n"
    with tarfile.open(pack / "site.tar.xz", "w:xz") as tar:
        info = tarfile.TarInfo("gpu_check_packed/__init__.py")
        info.size = len(code)
        tar.addfile(info, io.BytesIO(code))
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    (pack / "MANIFEST.json").write_text(json.dumps(
        {"python": python, "packages": {"gpu-check-packed": "0"}}))


@pytest.mark.integration
@pytest.mark.timeout(420)
def test_gpu_check_rehearsal_runs_every_stage_and_prints_the_summary_last(tmp_path):
    pack, out, work = tmp_path / "pack", tmp_path / "out", tmp_path / "work"
    _make_pack(pack)
    env = {**os.environ, "OUT": str(out), "GPU_CHECK_WORK": str(work),
           "GPU_CHECK_PACK": str(pack), "PYTHON": sys.executable}
    env.pop("RAY_ADDRESS", None)  # the benchmarks start their own local Ray, as on the device
    t0 = time.time()
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--rehearsal"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    seconds = time.time() - t0
    print(proc.stdout[-4000:], proc.stderr[-2000:], f"rehearsal: {seconds:.0f} s", sep="\n")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]

    # The summary table is what the script prints last.
    lines = proc.stdout.rstrip().splitlines()
    head = max(i for i, ln in enumerate(lines) if ln.startswith("## gpu_check rehearsal"))
    rows = [ln for ln in lines[head:] if ln.startswith("| ") and not ln.startswith("| stage")]
    assert lines[-1].startswith("logs: ")
    status = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        stage, state, secs = cells[0], cells[1], cells[2]
        status[stage] = state
        assert state.startswith(("ok", "SKIP: ")) and int(secs) >= 0, row
        if state.startswith("SKIP: "):
            assert len(state) > len("SKIP: ") + 10, f"{stage} skipped without a reason: {row}"
    assert tuple(status) == STAGES

    # The pack went on PYTHONPATH; the data, when packed, is what the benchmarks read.
    assert "1 packages on PYTHONPATH" in (out / "logs" / "pack.log").read_text()
    assert (work / "site" / "gpu_check_packed" / "__init__.py").is_file()
    # Logs and figures under $OUT.
    for stage in STAGES:
        assert (out / "logs" / f"{stage}.log").is_file(), stage
    assert (out / "summary.md").read_text().count("| ") >= len(STAGES)
    probes = json.loads((out / "figures" / "probes.json").read_text())
    assert probes["torch"] and "raydistill_modules" in probes
    assert (out / "figures" / "tests_gpu.xml").is_file()
    for stage, files in (("kd_memory", ("kd_memory.json", "kd_memory_sweep.json")),
                         ("generation", ("generation.json",)), ("overhead", ("overhead.json",))):
        if status[stage].startswith("ok"):
            for name in files:
                assert (out / "figures" / name).is_file(), name
    sweep = json.loads((out / "figures" / "kd_memory_sweep.json").read_text())
    assert sweep["suggested_chunk_elements"] in (1 << 14, 1 << 16)


def test_gpu_check_refuses_an_unknown_stage():
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--only", "bogus"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "no stage 'bogus'" in proc.stderr
