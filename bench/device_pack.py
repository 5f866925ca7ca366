"""Build ``.device_pack/``: the packages and data bench/gpu_check.sh needs on a GPU machine
that lacks them, small enough to travel with a device call.

    python bench/device_pack.py                  # Ray (pruned), CTranslate2, their needs, data
    python bench/device_pack.py --no-ct2         # without CTranslate2 (24 MiB less)
    python bench/device_pack.py --data-only --lines 200 --out DIR    # data alone (the rehearsal)

The device tool's GPU machines (/work/.library/device/KINDS.md) have Python 3.12, a CUDA 13
torch, transformers, pyarrow and pandas, but no Ray and no CTranslate2, nothing can be fetched
there, and at most 64 MiB travel with a call, the working tree included. What was measured on
2026-12-07 (ray 2.60.0, ctranslate2 4.8.5, cp312 manylinux wheels):

- Ray's wheel is 75.6 MiB (193 MiB unpacked): ``ray/jars`` (Java, 31 MiB compressed), the
  dashboard's web client, RLlib and ``ray.llm`` are not used by any stage; without them the
  wheel is 40.2 MiB, and the same files as a ``tar.xz`` 23.9 MiB. Ray also needs pydantic (Train
  V2's state schema), jsonschema (runtime_env validation) and tensorboardX, absent there.
- CTranslate2's wheel is 40.8 MiB (146 MiB unpacked), 23.6 MiB as ``tar.xz``. Its CUDA build
  loads ``libcublas.so.12``; the machine has CUDA 13's, and cuBLAS 12's wheel (hundreds of MiB)
  cannot travel: on the GPU it falls back to transformers with one warning (what tests/gpu
  checks), while its CPU path works.
- raydistill's summarization metric needs rouge-score (no wheel on PyPI; pure Python, copied
  from this venv) and nltk.

So one ``site.tar.xz`` holds them all (~49 MiB), ``data.tar.xz`` the data the benchmarks read
(scitldr, and en_de's test split with the first ``--lines`` train pairs: ~2 MiB), and
``MANIFEST.json`` their versions and the Python they were built for. Build time here: ~2.5 min
(xz on 2 cores). ``gpu_check.sh``'s pack stage unpacks them on the device (a few seconds).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / ".device_pack"
DEFAULT_CACHE = REPO / "bench" / "results" / "device_pack_wheels"  # ignored; never carried
DEFAULT_DATA = REPO.parent / "shared" / "data"
LIMIT_MIB = 64  # what a device call carries, working tree included
# Distributions with compiled code: cp312 manylinux wheels, the versions of this venv.
BINARY = ("ray", "ctranslate2", "pydantic-core", "rpds-py")
# Pure Python, copied from this venv (with their dist-info: some callers ask their versions).
PURE = ("pydantic", "annotated-types", "typing-inspection", "jsonschema",
        "jsonschema-specifications", "referencing", "tensorboardX", "nltk", "rouge-score")
RAY_PRUNED = ("ray/jars/", "ray/dashboard/client/build/", "ray/rllib/", "ray/llm/")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
DATA_FILES = {"scitldr": None, "en_de": {"train.source", "train.target"}}  # None: every file


def download(dist: str, version: str, python: str, cache: Path) -> Path:
    """The cp``python`` manylinux wheel of ``dist==version`` (pip download, cached)."""
    cache.mkdir(parents=True, exist_ok=True)
    stem = dist.replace("-", "_").lower()
    found = [w for w in cache.glob("*.whl") if w.name.lower().startswith(f"{stem}-{version}-")]
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp", "-d", str(cache)]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    subprocess.run([*cmd, f"{dist}=={version}"], check=True)
    return download(dist, version, python, cache)


def add_wheel(wheel: Path, site: Path, pruned: tuple[str, ...] = ()) -> int:
    """Unzip ``wheel`` into ``site`` without the ``pruned`` prefixes, keeping exec bits.
    Returns the bytes left out."""
    left_out = 0
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.filename.startswith(pruned):
                left_out += info.file_size
                continue
            path = Path(z.extract(info, site))
            mode = info.external_attr >> 16
            if mode & 0o111:
                path.chmod(mode & 0o777)
    return left_out


def add_installed(dist: str, site: Path) -> None:
    """Copy an installed pure-Python distribution (its files as RECORD lists them)."""
    d = md.distribution(dist)
    for f in d.files or []:
        src = Path(d.locate_file(f))
        if src.suffix == ".pyc" or not src.is_file() or ".." in f.parts:
            continue
        dst = site / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def make_archive(src: Path, archive: Path) -> None:
    """``src``'s contents as ``archive`` (tar.xz; the system's multi-threaded xz when there)."""
    if shutil.which("xz") and shutil.which("tar"):
        with open(archive, "wb") as f:
            tar = subprocess.Popen(["tar", "-cf", "-", "-C", str(src), "."],
                                   stdout=subprocess.PIPE)
            subprocess.run(["xz", "-9", "-T0", "-c"], stdin=tar.stdout, stdout=f, check=True)
            if tar.wait() != 0:
                raise RuntimeError(f"tar of {src} failed")
        return
    with tarfile.open(archive, "w:xz", preset=9) as tar:
        tar.add(src, arcname=".")


def build_site(out: Path, python: str, cache: Path, with_ct2: bool) -> dict[str, str]:
    packages = {}
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp)
        for dist in BINARY:
            if dist == "ctranslate2" and not with_ct2:
                continue
            version = md.version(dist)
            wheel = download(dist, version, python, cache)
            left = add_wheel(wheel, site, RAY_PRUNED if dist == "ray" else ())
            packages[dist] = version
            print(f"{dist} {version}: {wheel.stat().st_size / 2**20:.1f} MiB wheel"
                  + (f", {left / 2**20:.0f} MiB unpacked left out ({', '.join(RAY_PRUNED)})"
                     if left else ""), flush=True)
        for dist in PURE:
            add_installed(dist, site)
            packages[dist] = md.version(dist)
        print(f"site: {sum(p.stat().st_size for p in site.rglob('*') if p.is_file()) / 2**20:.0f} "
              "MiB unpacked; compressing (xz -9)...", flush=True)
        make_archive(site, out / "site.tar.xz")
    return packages


def build_data(out: Path, data_root: Path, lines: int) -> None:
    """scitldr whole (a few MiB) and en_de's val/test with its first ``lines`` train pairs (what
    generation.py's stand-in tokenizer reads)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, capped in DATA_FILES.items():
            src = data_root / name
            if not (src / "train.source").is_file():
                raise SystemExit(f"{src} holds no train.source: pass --data-root")
            (Path(tmp) / name).mkdir()
            for f in sorted(src.iterdir()):
                if not f.is_file():
                    continue
                text = f.read_text(encoding="utf-8")
                if capped and f.name in capped:
                    text = "".join(text.splitlines(keepends=True)[:lines])
                (Path(tmp) / name / f.name).write_text(text, encoding="utf-8")
        make_archive(Path(tmp), out / "data.tar.xz")


def tree_bytes() -> int:
    """What travels besides the pack: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    return sum((REPO / p.decode()).stat().st_size for p in listed
               if p and (REPO / p.decode()).is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="the pack folder (default .device_pack: ignored by git; carry it)")
    p.add_argument("--python", default="3.12", help="the device's Python (KINDS.md)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="downloaded wheels")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--lines", type=int, default=20000, help="en_de train pairs kept")
    p.add_argument("--no-ct2", action="store_true", help="leave CTranslate2 out")
    p.add_argument("--data-only", action="store_true", help="the data archive alone")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = {"python": args.python, "packages": {}, "pruned_from_ray": list(RAY_PRUNED)}
    if not args.data_only:
        manifest["packages"] = build_site(args.out, args.python, args.cache, not args.no_ct2)
    else:
        (args.out / "site.tar.xz").unlink(missing_ok=True)
        manifest["python"] = f"{sys.version_info.major}.{sys.version_info.minor}"
    build_data(args.out, args.data_root, args.lines)
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    sizes = {f.name: f.stat().st_size for f in args.out.iterdir() if f.is_file()}
    total = sum(sizes.values()) + tree_bytes()
    for name, size in sorted(sizes.items()):
        print(f"{args.out / name}: {size / 2**20:.1f} MiB")
    print(f"with the working tree: {total / 2**20:.1f} MiB of the {LIMIT_MIB} MiB a device call "
          f"carries ({'fits' if total < LIMIT_MIB * 2**20 else 'TOO LARGE: try --no-ct2'})")
    if total >= LIMIT_MIB * 2**20:
        sys.exit(1)


if __name__ == "__main__":
    main()
