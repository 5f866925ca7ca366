"""The Python side of bench/gpu_check.sh: unpack the carried pack, probe the machine, and read
each stage's key figure for the summary table.

    python bench/gpu_check.py pack --pack .device_pack --work /tmp/raydistill_gpu_check
    python bench/gpu_check.py probes --out OUT [--require-cuda]
    python bench/gpu_check.py figure STAGE --results DIR --out OUT --log LOG

Standard library only at import time: ``pack`` runs before anything else is known to import.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import re
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

SITE_ARCHIVE, DATA_ARCHIVE, MANIFEST = "site.tar.xz", "data.tar.xz", "MANIFEST.json"


# ---- pack --------------------------------------------------------------------------------------

def unpack(pack: Path, work: Path) -> None:
    """Unpack ``pack``'s archives (bench/device_pack.py) into ``work``: ``site/`` goes on
    PYTHONPATH (gpu_check.sh reads ``work/pythonpath``), ``data/`` becomes the data root."""
    (work / "pythonpath").unlink(missing_ok=True)
    if not pack.is_dir() or not any((pack / a).is_file() for a in (SITE_ARCHIVE, DATA_ARCHIVE)):
        print(f"SKIP pack: no pack at {pack} (this machine's own packages and data are used; "
              "build one here with python bench/device_pack.py)")
        return
    manifest = json.loads((pack / MANIFEST).read_text()) if (pack / MANIFEST).is_file() else {}
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    built_for = manifest.get("python", here)
    if (pack / SITE_ARCHIVE).is_file():
        if built_for != here:
            print(f"pack: its packages were built for Python {built_for}; this is {here}: "
                  "not used (this machine's own are)")
        else:
            site = extract(pack / SITE_ARCHIVE, work / "site")
            (work / "pythonpath").write_text(str(site))
            pkgs = manifest.get("packages", {})
            print(f"pack: {len(pkgs)} packages on PYTHONPATH from {site}: "
                  + ", ".join(f"{k} {v}" for k, v in pkgs.items()))
    if (pack / DATA_ARCHIVE).is_file():
        data = extract(pack / DATA_ARCHIVE, work / "data")
        print(f"pack: data in {data}: {', '.join(sorted(p.name for p in data.iterdir()))}")


def extract(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` into ``dest`` once (a stamp of its size and mtime says it is done)."""
    stamp = dest / ".unpacked"
    key = f"{archive.stat().st_size} {archive.stat().st_mtime_ns}"
    if stamp.is_file() and stamp.read_text() == key:
        return dest
    t0 = time.time()
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:xz") as tar:
        tar.extractall(dest, filter="tar")  # keeps exec bits: Ray's raylet and gcs_server
    stamp.write_text(key)
    print(f"pack: {archive.name} unpacked in {time.time() - t0:.1f} s")
    return dest


# ---- probes ------------------------------------------------------------------------------------

def try_import(name: str) -> tuple[Any, str]:
    """(module or None, its version or the first line of why it does not import)."""
    try:
        mod = importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 (any failure is a finding: ImportError, OSError, ...)
        return None, f"does not import: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
    return mod, str(getattr(mod, "__version__", "?"))


def probes(out: Path, require_cuda: bool) -> int:
    """What this machine has: the GPU, versions, and which packages and raydistill modules
    import (those needing Ray fail without it). Written to ``out/figures/probes.json``."""
    found: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine()}
    torch, found["torch"] = try_import("torch")
    if torch is not None:
        found["torch_cuda"] = torch.version.cuda
        found["cuda_available"] = torch.cuda.is_available()
        if found["cuda_available"]:
            props = torch.cuda.get_device_properties(0)
            found["gpu"] = {"name": props.name, "count": torch.cuda.device_count(),
                            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
                            "memory_gib": round(props.total_memory / 2**30, 1),
                            "multiprocessors": props.multi_processor_count,
                            "bf16": torch.cuda.is_bf16_supported()}
    for name in ("transformers", "tokenizers", "safetensors", "sacrebleu", "pyarrow", "pandas",
                 "pydantic", "rouge_score", "tensorboard", "ray", "ctranslate2"):
        _, found[name] = try_import(name)
    ray, _ = try_import("ray")
    if ray is not None:  # what ray.init will see: a GPU request waits forever without it
        try:
            from ray._private.accelerators import NvidiaGPUAcceleratorManager

            found["ray_sees_gpus"] = NvidiaGPUAcceleratorManager.get_current_node_num_accelerators()
        except Exception as err:  # noqa: BLE001 (a private API: report, don't fail)
            found["ray_sees_gpus"] = f"unknown ({type(err).__name__})"
    ct2, _ = try_import("ctranslate2")
    if ct2 is not None:
        try:
            n = ct2.get_cuda_device_count()
            found["ctranslate2_cuda"] = {"devices": n, "compute_types": sorted(
                ct2.get_supported_compute_types("cuda")) if n else []}
        except Exception as err:  # noqa: BLE001
            found["ctranslate2_cuda"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    found["raydistill_modules"] = {}
    for name in ("raydistill.distill.step", "raydistill.train.checkpoint",
                 "raydistill.models.generate", "raydistill.data.tokenize",
                 "raydistill.train.loop", "raydistill.pipeline"):
        mod, why = try_import(name)
        found["raydistill_modules"][name] = "ok" if mod is not None else why
    chunked, _ = try_import("raydistill.distill.chunked")
    if chunked is not None and torch is not None:
        device = torch.device("cuda" if found.get("cuda_available") else "cpu")
        found["chunk_elements"] = (int(chunked.chunk_elements(device))
                                   if hasattr(chunked, "chunk_elements")
                                   else int(chunked.CHUNK_ELEMENTS))
    for key, value in found.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"    {k}: {v}")
        else:
            print(f"{key}: {value}")
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "figures" / "probes.json").write_text(json.dumps(found, indent=2, default=str) + "\n")
    if require_cuda and not found.get("cuda_available"):
        print("no CUDA device visible to torch: every later stage would measure the CPU")
        return 1
    return 0


# ---- the key figure of each stage --------------------------------------------------------------

def read(results: Path, name: str) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def figure(stage: str, results: Path, out: Path, log: Path) -> str:
    """One short line for the summary table."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    if stage == "pack":
        lines = [ln for ln in text.splitlines() if ln.startswith("pack: ") and "packages" in ln]
        return lines[-1][6:90] + ("..." if len(lines[-1]) > 90 else "") if lines else "-"
    if stage == "probes":
        p = json.loads((out / "figures" / "probes.json").read_text())
        gpu = p.get("gpu", {}).get("name", "no GPU")
        short = lambda v: v if len(v) < 20 else "absent"  # noqa: E731 (a version, or why not)
        return (f"{gpu}; torch {p['torch']} (CUDA {p.get('torch_cuda')}); ray "
                f"{short(p['ray'])}; ctranslate2 {short(p['ctranslate2'])}")
    if stage == "tests":
        found = re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|error|deselected).*?)\s*=*$",
                           text, re.M)
        return found[-1] if found else "-"
    if stage == "kd_memory":
        parts = []
        main = read(results, "kd_memory")
        if main and "losses" in main:
            parts.append(f"V={main['vocab']:,}: " + ", ".join(
                f"{loss.split('_')[0]} peak {q['peak_ratio']:.2f}x time {q['time_ratio']:.2f}x"
                for loss, q in main["losses"].items())
                + f" (target {'met' if main['target_met'] else 'NOT met'})")
        sweep = read(results, "kd_memory_sweep")
        if sweep and "suggested_chunk_elements" in sweep:
            parts.append(f"chunk 2^{sweep['suggested_chunk_elements'].bit_length() - 1} "
                         f"suggested (now 2^{sweep['chunk_elements'].bit_length() - 1})")
        return "; ".join(parts) or "-"
    if stage == "generation":
        r = read(results, "generation")
        if not r or "rows" not in r:
            return "-"
        return "; ".join(f"{q['system']} {q['examples_per_s']:.1f} ex/s"
                         + (f" ({q['backend']})" if q.get("backend") not in (None, "ctranslate2")
                            and q["system"].startswith("ct2") else "") for q in r["rows"])
    if stage == "overhead":
        r = read(results, "overhead")
        if not r or "ratios" not in r:
            return "-"
        return "; ".join(f"{k}/plain steady tokens/s {q['steady']:.3f} (target >= "
                         f"{r['target']}: {'met' if q['steady'] >= r['target'] else 'NOT met'})"
                         for k, q in r["ratios"].items())
    return "-"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--pack", type=Path, required=True)
    a.add_argument("--work", type=Path, required=True)
    a = sub.add_parser("probes")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--require-cuda", action="store_true")
    a = sub.add_parser("figure")
    a.add_argument("stage")
    a.add_argument("--results", type=Path, required=True)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--log", type=Path, required=True)
    args = p.parse_args()
    if args.cmd == "pack":
        unpack(args.pack, args.work)
        return 0
    if args.cmd == "probes":
        return probes(args.out, args.require_cuda)
    print(figure(args.stage, args.results, args.out, args.log).replace("|", "/"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
