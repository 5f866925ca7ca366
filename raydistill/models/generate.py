"""Batched generation: in-process (validation inside a training worker) or over a Ray Data actor pool.

Both sort sources by length so a batch holds similar lengths (little padding), and both hand the
predictions back in input order. The actor pool and ``measure_latency`` generate with
transformers or, with ``backend="ctranslate2"``, with CTranslate2 (``raydistill.models.ct2``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from raydistill.runtime import Progress, actor_threads, check_actor_pool, init_ray, pool_map_batches
from raydistill.models.ct2 import (
    Backend,
    CT2Generator,
    TOKENIZER_SAMPLES,
    add_predictions,
    generate_ct2,
    load_translator,
    prepare_backend,
)


def generate_local(
    model: torch.nn.Module,
    tokenizer: Any,
    sources: Sequence[str],
    *,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    max_length: int = 64,
    batch_size: int = 16,
    max_source_length: int = 512,
    device: str | torch.device = "cpu",
    return_scores: bool = False,
    synced: bool = False,
) -> list[str] | tuple[list[str], list[float]]:
    """Generate for ``sources`` in batches; returns stripped texts in input order (no Ray).

    ``return_scores=True`` also returns each sequence's score: the sum of its token
    log-probabilities (as generate scores them, after its logits processors: a forced ``</s>``
    counts 0) divided by ``length ** length_penalty``; beam search's ``sequences_scores``,
    computed the same way for greedy decoding.

    ``synced``: a model sharded over the workers (FSDP2), called on every rank with as many
    sources: generate's ``synced_gpus`` keeps every rank stepping until all are done, and no
    inference mode (the gathered weights are reused by training after).
    """
    model = getattr(model, "module", model)  # a DDP-wrapped model generates through its module
    gen_kw: dict[str, Any] = {"num_beams": num_beams, "max_length": max_length}
    if num_beams > 1:  # length_penalty only acts in beam search; greedy would warn about it
        gen_kw["length_penalty"] = length_penalty
    if return_scores:
        gen_kw.update(output_scores=True, return_dict_in_generate=True)
    if synced:
        gen_kw["synced_gpus"] = True
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    preds: list[str] = [""] * len(sources)
    scores: list[float] = [0.0] * len(sources)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad() if synced else torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                enc = tokenizer([sources[i] for i in idx], max_length=max_source_length,
                                truncation=True, padding=True, return_tensors="pt")
                # Only ids and mask: BERT tokenizers add token_type_ids that generate() rejects.
                out = model.generate(input_ids=enc["input_ids"].to(device),
                                     attention_mask=enc["attention_mask"].to(device), **gen_kw)
                seqs = out.sequences if return_scores else out
                texts = tokenizer.batch_decode(seqs, skip_special_tokens=True)
                for i, text in zip(idx, texts):
                    preds[i] = text.strip()
                if return_scores:
                    for i, sc in zip(idx, _sequence_scores(model, out, num_beams, length_penalty)):
                        scores[i] = sc
    finally:
        model.train(was_training)
    return (preds, scores) if return_scores else preds


def past_first_eos(tokens: torch.Tensor, eos_token_id: int | list[int] | None) -> torch.Tensor:
    """(B, L) generated ids -> (B, L) True at the positions after each row's first EOS (any of
    the ids in ``eos_token_id``); all False without an EOS id."""
    if eos_token_id is None:
        return torch.zeros_like(tokens, dtype=torch.bool)
    ids = eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
    is_eos = torch.isin(tokens, torch.tensor(ids, device=tokens.device))
    return (is_eos.long().cumsum(1) - is_eos.long()) > 0


def _sequence_scores(model, out, num_beams: int, length_penalty: float) -> list[float]:
    """Length-normalized log-probability per sequence (greedy: as beam search reports it)."""
    if num_beams > 1 and getattr(out, "sequences_scores", None) is not None:
        return out.sequences_scores.float().cpu().tolist()
    logp = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    gen = out.sequences[:, -logp.size(1):]
    keep = ~past_first_eos(gen, model.generation_config.eos_token_id) & torch.isfinite(logp)
    length = keep.sum(1).clamp(min=1).float()
    return ((logp.float() * keep).sum(1) / length ** length_penalty).cpu().tolist()


class Generator:
    """A Ray Data ``map_batches`` callable: loads the model once per actor, adds "prediction".

    With a ctranslate2 ``backend`` the object made is a ``CT2Generator`` (an actor pool gets
    that class itself, ``generator_class``, so that its actors need not import torch).
    """

    def __new__(cls, *args: Any, backend: Backend | None = None, **kwargs: Any):
        impl = generator_class(backend)
        return super().__new__(cls) if impl is cls else impl(*args, backend=backend, **kwargs)

    def __init__(self, model_dir: str, num_beams: int = 4, length_penalty: float = 1.0,
                 max_length: int = 64, max_source_length: int = 512, batch_size: int = 16,
                 device: str = "cpu", return_scores: bool = False,
                 teacher_dtype: str | None = None, backend: Backend | None = None) -> None:
        """``teacher_dtype`` (auto | bf16 | fp16 | fp32): load the model as a frozen teacher in
        that dtype (``load_teacher``: the weights themselves); None: as saved, for evaluation."""
        # The CPUs Ray gave this actor, not every core of the node (actors share the node).
        torch.set_num_threads(actor_threads())
        from transformers import AutoTokenizer

        from raydistill.models.layers import load_seq2seq, load_teacher

        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.kw = dict(num_beams=num_beams, length_penalty=length_penalty, max_length=max_length,
                       max_source_length=max_source_length, batch_size=batch_size)
        self.return_scores = return_scores
        self.model = (load_teacher(model_dir, teacher_dtype, device) if teacher_dtype
                      else load_seq2seq(model_dir).to(device).eval())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Adds "prediction" (and "score", the sequence score, when asked for)."""
        t0 = time.perf_counter()
        out = generate_local(self.model, self.tokenizer, [str(s) for s in batch["source"]],
                             device=self.device, return_scores=self.return_scores, **self.kw)
        preds, scores = out if self.return_scores else (out, None)
        return add_predictions(batch, preds, scores, time.perf_counter() - t0)


def generator_class(backend: Backend | None) -> type:
    """The ``map_batches`` class for ``backend``: ``CT2Generator`` for ctranslate2 (its actors
    import no torch), else ``Generator``."""
    return CT2Generator if backend is not None and backend.name == "ctranslate2" else Generator


def generate_parallel(
    model_dir: str | os.PathLike,
    sources: Sequence[str],
    *,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    max_length: int = 64,
    max_source_length: int = 512,
    batch_size: int = 16,
    num_workers: int = 1,
    num_gpus: float = 0.0,
    num_cpus: float = 1.0,
    backend: str | Backend = "transformers",
    compute_type: str = "float32",
    ct2_cache_dir: str | os.PathLike | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[list[str], float]:
    """Generate over ``num_workers`` Ray actors; returns (predictions in input order, seconds).

    The seconds are wall clock of the whole Ray Data run, actor start and model loading included.
    ``num_gpus`` is per actor (a fraction shares one GPU); each actor runs ``num_cpus`` threads.
    ``backend`` is a name (converted here, on the driver, with ``compute_type`` into
    ``ct2_cache_dir``) or a ``prepare_backend`` result. ``timings``, when given, receives
    ``wall_s``, ``first_batch_s`` (start-up: until the first batch is back) and ``busy_s``
    (generation time summed over the actors). Connects to Ray (``RAY_ADDRESS`` if set, else a
    local instance) when the driver has not already.
    """
    import ray

    if not sources:
        return [], 0.0
    if isinstance(backend, str):
        backend = prepare_backend(model_dir, backend, compute_type, ct2_cache_dir,
                                  device="cuda" if num_gpus > 0 else "cpu",
                                  samples=sources[:TOKENIZER_SAMPLES], num_gpus=num_gpus)
    init_ray()
    check_actor_pool("generation", num_workers, num_cpus, num_gpus)
    # Sorting on the driver costs nothing next to generation and avoids a Ray Data sort
    # (a shuffle stage). One block per batch keeps each batch's lengths alike.
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    ds = ray.data.from_items([{"idx": i, "source": sources[i]} for i in order],
                             override_num_blocks=math.ceil(len(sources) / batch_size))
    ds = pool_map_batches(
        ds, generator_class(backend),
        fn_constructor_kwargs=dict(model_dir=str(model_dir), num_beams=num_beams,
                                   length_penalty=length_penalty, max_length=max_length,
                                   max_source_length=max_source_length, batch_size=batch_size,
                                   device="cuda" if num_gpus > 0 else "cpu", backend=backend),
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
    start = time.perf_counter()
    first = None
    preds: list[str | None] = [None] * len(sources)
    busy = 0.0
    progress = Progress("generation", len(sources))
    # No select_columns: it adds a task stage that waits for a CPU the actors hold.
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        first = first if first is not None else time.perf_counter() - start
        busy += float(batch["gen_seconds"].sum())
        for i, pred in zip(batch["idx"], batch["prediction"]):
            preds[int(i)] = str(pred)
        progress.add(len(batch["idx"]))
    seconds = time.perf_counter() - start
    if timings is not None:
        timings.update(wall_s=seconds, first_batch_s=first or 0.0, busy_s=busy)
    missing = [i for i, p in enumerate(preds) if p is None]
    if missing:
        raise RuntimeError(f"Ray Data returned no prediction for {len(missing)} of "
                           f"{len(sources)} sources (first index {missing[0]})")
    return preds, seconds  # type: ignore[return-value]


def measure_latency(
    model_dir: str,
    sources: list[str],
    *,
    num_beams: int = 1,
    max_length: int = 64,
    max_source_length: int = 512,
    n: int = 32,
    device: str = "cpu",
    batch_size: int = 1,
    backend: str = "transformers",
    compute_type: str = "float32",
    ct2_cache_dir: str | os.PathLike | None = None,
) -> dict[str, float]:
    """Generation time per example at ``batch_size`` (1: latency, as the DistilBART table;
    larger: throughput, batches padded to their longest source).

    Loads the model once (with ``backend="ctranslate2"``: converts it, cached, and times
    CTranslate2 in ``compute_type`` with this process's torch thread count), warms up on one
    batch, then times ``n`` examples in this process. Returns ``ms_per_example``,
    ``examples_per_s`` and ``parameters`` (of the transformers model).
    """
    from transformers import AutoConfig, AutoTokenizer

    from raydistill.models.layers import load_seq2seq

    prepared = prepare_backend(model_dir, backend, compute_type, ct2_cache_dir, device=device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    picked = sources[:n]
    kw = dict(num_beams=num_beams, length_penalty=1.0, max_length=max_length,
              batch_size=batch_size, max_source_length=max_source_length)
    if prepared.name == "ctranslate2":
        translator = load_translator(prepared.ct2_dir, device, compute_type,
                                     torch.get_num_threads())
        gen_cfg = prepared.generation_config()
        parameters = _count_parameters(AutoConfig.from_pretrained(model_dir))

        def run(texts):
            return generate_ct2(translator, tokenizer, texts, generation_config=gen_cfg, **kw)
    else:
        model = load_seq2seq(model_dir).to(device).eval()
        parameters = sum(p.numel() for p in model.parameters())

        def run(texts):
            return generate_local(model, tokenizer, texts, device=device, **kw)
    run(picked[:batch_size])  # warm-up: first-call allocations
    t0 = time.perf_counter()
    run(picked)
    seconds = time.perf_counter() - t0
    return {"ms_per_example": 1000 * seconds / max(len(picked), 1),
            "examples_per_s": len(picked) / max(seconds, 1e-9),
            "parameters": parameters}


def _count_parameters(config) -> int:
    """Parameters of the model ``config`` describes, counted on the meta device (no weights)."""
    from transformers import AutoModelForSeq2SeqLM

    with torch.device("meta"):
        model = AutoModelForSeq2SeqLM.from_config(config)
    return sum(p.numel() for p in model.parameters())
