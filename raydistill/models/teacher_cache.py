"""The teacher-logit cache: a Ray Data stage that runs the teacher once over the train split
and writes its top-k logits (and the hidden states the matches read) to Parquet.

With ``is_caching_logits: true`` in the ``distillation:`` section (or ``raydistill
cache-logits``) the teacher runs once over the train set on a Ray Data actor pool. For every
target position of every example the top-k teacher logits are stored in Parquet:

    id: int64, topk_values: list<float16|float32>, topk_indices: list<int32>

each list row-major of shape (tgt_len, k). Values are stored minus the position's largest logit
(softmax does not change under a shift, and float16 is then most precise near 0, where the mass
is). ``manifest.json`` beside the parts holds the key: teacher (config + weight hashes),
tokenizer files, data files, n and max lengths, and the hidden states kept. Any change to one
of them rebuilds the cache.

Hidden-state matches (``intermediate_matches`` with ``feature: hidden``) are cached too: the
teacher's hidden entries they read (TextBrewer's ``layer_T``: encoder embeddings + layers, then
decoder embeddings + layers) are stored per example as ``t_hidden_enc_<i>`` (src_len, d) or
``t_hidden_dec_<i>`` (tgt_len, d), flat, in the cache's dtype. With them the whole GeneralDistiller
objective (KD + hidden matches + hard labels) trains without the teacher; TextBrewer itself
refuses to cache logits once intermediate matches are set. Attention matches still need the
live teacher.

A trimmed student (``vocab_map.json`` beside its tokenizer, models/vocab.py) reads a cache of
the teacher's logits at its kept ids: the teacher reads the rows mapped back to its ids, its
logits are gathered to the kept ids (``topk_indices`` are then the student's ids), and a
``teacher_dropped`` column (tgt_len,) float32 keeps the probability mass outside them for the
step line. The map's fingerprint is in the key, so such a cache serves that map only.

The top-k KD loss these feed is ``raydistill.distill.losses.topk_kd_loss``; the worker-side
in-memory cache (``logit_cache: memory``) is ``raydistill.train.memory_cache``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from raydistill.atomic import recover_dir, replace_dir_atomic
from raydistill.data.fingerprint import (
    digest,
    model_fingerprint,
    split_fingerprint,
    tokenizer_fingerprint,
)
from raydistill.errors import ConfigError
from raydistill.runtime import check_actor_pool, check_writable, init_ray, pool_map_batches

if TYPE_CHECKING:
    import torch

# torch and the tokenize module (which imports torch and Ray Data) are imported where they are
# used: the CLI imports this module to register `cache-logits`, and every command pays for what
# it imports (start-up, issue 19).

DEFAULT_TOP_K = 64
DTYPES = ("float16", "float32")
MANIFEST = "manifest.json"
PARTS = "parts"
FORMAT_VERSION = 1
DROPPED = "teacher_dropped"  # a trimmed student's: mass outside the kept ids (DROPPED_COLUMN)


# ---- what is kept ----------------------------------------------------------------------------

def teacher_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., V) logits -> (values minus the max, indices), each (..., min(k, V)).

    Largest first when k < V. With k >= V (the exact cache) every logit is kept in vocabulary
    order: nothing to select, so no sort (on CPU that sort cost two thirds of a d_model-128
    teacher's forward pass at V = 4,000).
    """
    import torch

    logits = logits.float()
    if k >= logits.size(-1):
        indices = torch.arange(logits.size(-1), device=logits.device).expand_as(logits)
        return logits - logits.amax(-1, keepdim=True), indices
    values, indices = logits.topk(k, dim=-1)
    return values - values[..., :1], indices



def check_cacheable(tb_config: Any) -> None:
    """Raise when a TextBrewer objective needs more of the teacher than its top-k logits."""
    problems = []
    if any(m.feature != "hidden" for m in tb_config.intermediate_matches or ()):
        problems.append("attention intermediate_matches need the teacher's attention maps")
    if tb_config.probability_shift:
        problems.append("probability_shift needs the teacher's logit of every label")
    if tb_config.kd_loss_type != "ce":
        problems.append(f"kd_loss_type {tb_config.kd_loss_type!r} compares whole logit vectors")
    if tb_config.temperature_scheduler not in ("none", "constant"):
        problems.append("a dynamic temperature_scheduler reads the full teacher logits")
    if problems:
        raise ConfigError("distillation.is_caching_logits: true stores only the teacher's top-k "
                          f"logits, but {'; '.join(problems)}; set is_caching_logits: false "
                          "(the live teacher) or drop those options")


def normalize_hidden_layers(indices: Sequence[int], teacher_counts: tuple[int, int],
                            where: str) -> list[int]:
    """Teacher hidden-entry indices (negative count from the end) -> sorted non-negative ones,
    into TextBrewer's ``hidden`` list (encoder embeddings + ``te`` layers, decoder embeddings +
    ``td`` layers); ``where`` names the setting in the error."""
    te, td = teacher_counts
    n = te + 1 + td + 1
    for idx in indices:
        if not -n <= idx < n:
            raise ConfigError(f"{where}={idx} is out of range: the teacher has {n} hidden entries "
                              f"(0..{n - 1}: encoder embeddings + {te} layers, decoder embeddings "
                              f"+ {td} layers)")
    return sorted({idx % n for idx in indices})


def cached_hidden_layers(tb_config: Any, teacher_counts: tuple[int, int]) -> list[int]:
    """The teacher hidden entries the hidden-state matches read (``normalize_hidden_layers``)."""
    out: set[int] = set()
    for i, m in enumerate(tb_config.intermediate_matches or ()):
        if m.feature == "hidden":
            layers = m.layer_T if isinstance(m.layer_T, tuple) else (m.layer_T,)
            out.update(normalize_hidden_layers(
                layers, teacher_counts, f"distillation.intermediate_matches[{i}].layer_T"))
    return sorted(out)


# ---- the key ---------------------------------------------------------------------------------

def cache_key(teachers: list[str], tokenizer_dir: str, data_dir: str, *, split: str = "train",
              n: int | None = None, max_source_length: int, max_target_length: int,
              hidden_layers: Sequence[int] = (), teacher_dtype: str = "fp32",
              vocab_map: Sequence[int] | None = None,
              source_vocab_map: Sequence[int] | None = None) -> dict[str, Any]:
    """Everything the cached logits depend on (content hashes, not paths or mtimes), and the
    teacher hidden entries kept beside them (absent when none, as in caches of logits only).

    A teacher from the Hub cache (a ``models--org--name/snapshots/<commit>`` folder) adds its id
    and commit, so a cache built at one revision is never reused for another; a teacher run in
    another dtype than fp32 (``teacher_dtype``, as ``teacher_dtype_label`` gives it) adds that.
    A trimmed student's ``vocab_map`` adds its fingerprint (and ``source_vocab_map``'s: FSMT).
    Keys of local fp32 teachers for untrimmed students are unchanged.
    """
    from raydistill.hub import snapshot_identity

    key = {
        "format": FORMAT_VERSION,
        "teachers": [model_fingerprint(t) for t in teachers],
        "tokenizer": tokenizer_fingerprint(tokenizer_dir),
        "data": {"split": split, "n": n, **split_fingerprint(data_dir, split)},
        "max_source_length": max_source_length,
        "max_target_length": max_target_length,
    }
    if hidden_layers:
        key["hidden_layers"] = sorted(int(i) for i in hidden_layers)
    hub = [snapshot_identity(t) for t in teachers]
    if any(hub):
        key["teacher_hub"] = [{"id": h[0], "commit": h[1]} if h else None for h in hub]
    if teacher_dtype != "fp32":
        key["teacher_dtype"] = teacher_dtype
    if vocab_map is not None:
        from raydistill.models.vocab import map_fingerprint

        key["vocab_map"] = map_fingerprint(vocab_map)
        key.update({"source_vocab_map": map_fingerprint(source_vocab_map)} if source_vocab_map else {})
    return key


def read_manifest(cache_dir: str | Path) -> dict[str, Any] | None:
    recover_dir(cache_dir)  # a build killed between its two renames left the old cache as .old
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def is_valid(cache_dir: str | Path, key: dict[str, Any], top_k: int | None = None) -> bool:
    """True when ``cache_dir`` holds a finished cache for ``key`` (and ``top_k``, when given)."""
    manifest = read_manifest(cache_dir)
    if manifest is None or manifest.get("key_digest") != digest(key):
        return False
    if top_k is not None and manifest.get("top_k") != top_k:
        return False
    return (Path(cache_dir) / PARTS).is_dir()


# ---- building --------------------------------------------------------------------------------

class TeacherTopK:
    """Ray Data ``map_batches`` class: one teacher (or several, averaged) per actor.

    Input rows: ``id``, ``input_ids``, ``labels`` (tokenized, unpadded). Output rows: ``id``,
    ``topk_values`` and ``topk_indices`` (flat, tgt_len * k), and one ``t_hidden_*`` column
    (flat, len * d) per entry of ``hidden_layers`` (the first teacher's hidden states); with
    ``vocab_map`` (a trimmed student's rows; ``source_vocab_map``: FSMT's input side) the
    top-k of the kept ids and ``teacher_dropped``.
    """

    def __init__(self, teachers: list[str], top_k: int, dtype: str, pad_token_id: int,
                 device: str = "cpu", hidden_layers: Sequence[int] = (),
                 teacher_dtype: str = "fp32", vocab_map: Sequence[int] | None = None,
                 source_vocab_map: Sequence[int] | None = None) -> None:
        import ray
        import torch

        from raydistill.models.layers import load_teacher

        cpus = 1.0
        if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(max(1, int(cpus)))
        self.device = device
        from raydistill.models.layers import layer_counts

        # In teacher_dtype (weights, not autocast); the top-k are taken from fp32 logits.
        self.teachers = [load_teacher(t, teacher_dtype, device) for t in teachers]
        self.top_k, self.dtype, self.pad_token_id = top_k, np.dtype(dtype), pad_token_id
        self.hidden_layers = [int(i) for i in hidden_layers]
        self.encoder_layers = layer_counts(self.teachers[0])[0]
        self.maps = (vocab_map and list(vocab_map), source_vocab_map and list(source_vocab_map))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from raydistill.data.tokenize import pad_batch

        padded = pad_batch(list(batch["input_ids"]), list(batch["labels"]), self.pad_token_id)
        values, indices, hidden, dropped = teacher_outputs_for_batch(
            self.teachers, padded, self.top_k, self.device, self.hidden_layers, *self.maps)
        rows = example_rows(values, indices, hidden, [len(ids) for ids in batch["input_ids"]],
                            [len(labels) for labels in batch["labels"]], self.encoder_layers,
                            self.dtype, dropped)
        flat = {name: [row[name].reshape(-1) for row in rows] for name in rows[0]}
        return topk_table(np.asarray(batch["id"], dtype=np.int64), flat.pop("topk_values"),
                          flat.pop("topk_indices"), flat)


def example_rows(values: np.ndarray, indices: np.ndarray | None, hidden: dict[int, np.ndarray],
                 src_lens: Sequence[int], tgt_lens: Sequence[int], encoder_layers: int,
                 dtype: Any, dropped: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
    """A batch of padded teacher outputs -> what a cache keeps of each example (both stores).

    values / indices: (B, T, k) top-k logits and token ids (indices None: not kept); hidden:
    teacher hidden entry -> (B, L, d). Per example: ``topk_values`` (tgt_len, k) in ``dtype``,
    ``topk_indices`` (tgt_len, k) int32, and one ``t_hidden_*`` (src_len or tgt_len, d) in
    ``dtype`` per entry, and with ``dropped`` (B, T) (a trimmed student's) ``teacher_dropped``
    (tgt_len,) float32; copies, so a row never keeps the batch's arrays alive.
    """
    from raydistill.data.tokenize import hidden_column, hidden_side

    lens = {"enc": src_lens, "dec": tgt_lens}
    rows = []
    for r, n in enumerate(tgt_lens):
        row = {"topk_values": np.array(values[r, :n], dtype=dtype)}
        if indices is not None:
            row["topk_indices"] = np.array(indices[r, :n], dtype=np.int32)
        if dropped is not None:
            row[DROPPED] = np.array(dropped[r, :n], dtype=np.float32)
        for index, states in hidden.items():
            m = lens[hidden_side(index, encoder_layers)][r]
            row[hidden_column(index, encoder_layers)] = np.array(states[r, :m], dtype=dtype)
        rows.append(row)
    return rows


def topk_table(ids: np.ndarray, values: list[np.ndarray], indices: list[np.ndarray],
               hidden: dict[str, list[np.ndarray]] | None = None):
    """The cache's Arrow schema: plain list columns any Parquet reader understands.

    (Returning numpy object columns would make Ray Data store its own tensor extension type.)
    """
    import pyarrow as pa

    v_type = pa.float16() if values and values[0].dtype == np.float16 else pa.float32()

    def lists(arrays: list[np.ndarray], typ) -> pa.ListArray:
        offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        flat = np.concatenate(arrays) if arrays else np.zeros(0)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=typ))

    columns = {"id": pa.array(ids, pa.int64()), "topk_values": lists(values, v_type),
               "topk_indices": lists(indices, pa.int32())}
    for name, rows in (hidden or {}).items():
        columns[name] = lists(rows, pa.float32() if name == DROPPED else v_type)
    return pa.table(columns)


def topk_for_batch(teachers: list[torch.nn.Module], batch: dict[str, torch.Tensor], top_k: int,
                   device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Teacher logits (averaged over teachers) -> top-k (B, T, k) values and indices, numpy."""
    values, indices, _, _ = teacher_outputs_for_batch(teachers, batch, top_k, device)
    return values, indices


def teacher_outputs_for_batch(teachers: list[torch.nn.Module], batch: dict[str, torch.Tensor],
                              top_k: int, device: str = "cpu", hidden_layers: Sequence[int] = (),
                              vocab_map: Sequence[int] | None = None,
                              source_vocab_map: Sequence[int] | None = None,
                              ) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray],
                                         np.ndarray | None]:
    """Top-k of the teachers' mean logits (B, T, k), the first teacher's hidden entries
    ``hidden_layers`` (indices into encoder + decoder hidden states), each (B, L, d) float32,
    and None. With ``vocab_map`` the batch holds a trimmed student's ids: the teachers read it
    in theirs, the top-k are of the logits at the kept ids (indices: the student's ids), and
    the last item is the (B, T) probability mass outside them (FSMT: ``source_vocab_map``)."""
    import torch

    from raydistill.models.adaptor import seq2seq_forward
    from raydistill.models.layers import decoder_inputs

    batch = {k: v.to(device) for k, v in batch.items()}
    new_to_old = None if vocab_map is None else torch.tensor(list(vocab_map), device=device)
    if new_to_old is not None:  # the teacher's ids; labels only build the decoder inputs
        labels = batch["labels"]
        src = torch.tensor(list(source_vocab_map or vocab_map), device=device)  # FSMT: its own
        batch = {**batch, "input_ids": src[batch["input_ids"]],
                 "labels": labels.where(labels.eq(-100), new_to_old[labels.clamp(min=0)])}
    dec_in = decoder_inputs(teachers[0], batch["labels"])
    with torch.no_grad():
        outs = [seq2seq_forward(t, batch, dec_in, hidden=bool(hidden_layers and i == 0))
                for i, t in enumerate(teachers)]
        logits = [o.logits.float() for o in outs]
        mean = torch.stack(logits).mean(0) if len(logits) > 1 else logits[0]
        dropped = None
        if new_to_old is not None:
            from raydistill.models.vocab import gather_kept

            mean, dropped = gather_kept(mean, new_to_old)
            dropped = dropped.cpu().numpy()
        values, indices = teacher_topk(mean, top_k)
        hidden: dict[int, np.ndarray] = {}
        if hidden_layers:
            states = list(outs[0].encoder_hidden_states) + list(outs[0].decoder_hidden_states)
            hidden = {i: states[i].float().cpu().numpy() for i in hidden_layers}
    return values.cpu().numpy(), indices.cpu().numpy(), hidden, dropped


def build_cache(tokenized, cache_dir: str | Path, key: dict[str, Any], *, teachers: list[str],
                pad_token_id: int, top_k: int = DEFAULT_TOP_K, dtype: str = "float16",
                batch_size: int = 16, num_workers: int = 1, num_cpus: float = 1.0,
                num_gpus: float = 0.0, vocab_map: Sequence[int] | None = None,
                source_vocab_map: Sequence[int] | None = None) -> dict[str, Any]:
    """Run the teachers over the tokenized Ray Dataset and write the cache; returns the manifest.

    The teacher hidden entries kept are the key's ``hidden_layers`` (none by default), and the
    teachers run in the key's ``teacher_dtype`` (fp32 by default). ``vocab_map``: the rows are
    a trimmed student's (its fingerprint must be the key's; ``source_vocab_map`` too, FSMT).

    Parts and manifest go to a temporary folder beside ``cache_dir`` that is renamed into place
    when complete, so a killed build never leaves a cache that looks valid. On a cluster,
    ``cache_dir`` must be on storage every node can write (the parts are written by Ray tasks).
    """
    import ray.data

    if top_k < 1:
        raise ConfigError(f"top_k={top_k}: keep at least 1 logit per position (default {DEFAULT_TOP_K})")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: use one of {', '.join(DTYPES)}")
    if (vocab_map is None, source_vocab_map is None) != ("vocab_map" not in key,
                                                         "source_vocab_map" not in key):
        raise ValueError("build_cache: give cache_key and build_cache the same vocab_map(s)")
    cache_dir = Path(cache_dir).resolve()
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.", dir=cache_dir.parent))
    t0 = time.perf_counter()
    try:
        # One block is one actor task: a small set in few blocks would keep the other actors idle.
        # Materialized first: the actor pool starts with the pipeline and would hold the CPUs
        # the repartition tasks wait for.
        check_actor_pool("cache-logits", num_workers, num_cpus, num_gpus)
        if tokenized.num_blocks() < 4 * num_workers:
            tokenized = tokenized.repartition(4 * num_workers).materialize()
        out = pool_map_batches(
            tokenized, TeacherTopK,
            fn_constructor_kwargs=dict(teachers=[str(t) for t in teachers], top_k=top_k, dtype=dtype,
                                       pad_token_id=pad_token_id,
                                       device="cuda" if num_gpus > 0 else "cpu",
                                       hidden_layers=key.get("hidden_layers", []),
                                       teacher_dtype=key.get("teacher_dtype", "fp32"),
                                       vocab_map=vocab_map, source_vocab_map=source_vocab_map),
            compute=ray.data.ActorPoolStrategy(size=num_workers),
            batch_size=batch_size, batch_format="numpy", num_cpus=num_cpus, num_gpus=num_gpus,
        )
        out.write_parquet(str(tmp / PARTS))
        seconds = time.perf_counter() - t0
        parts = sorted((tmp / PARTS).glob("*.parquet"))
        import pyarrow.parquet as pq

        n_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
        manifest = {"key_digest": digest(key), "key": key, "top_k": top_k, "dtype": dtype,
                    "hidden_layers": key.get("hidden_layers", []),
                    "num_examples": n_rows, "build_seconds": round(seconds, 2),
                    "bytes": sum(p.stat().st_size for p in parts),
                    "examples_per_second": round(n_rows / max(seconds, 1e-9), 2),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        replace_dir_atomic(tmp, cache_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def load_cache(cache_dir: str | Path):
    """The cache as a materialized Ray Dataset (id, topk_values, topk_indices).

    Materialized so training workers read it from the object store with no read task (they
    hold every CPU while training).
    """
    import ray.data

    return ray.data.read_parquet(str(Path(cache_dir) / PARTS)).materialize()


def ensure_cache(tokenized, cache_dir: str | Path, key: dict[str, Any], *, teachers: list[str],
                 pad_token_id: int, top_k: int | None = None, **build_kw: Any) -> dict[str, Any]:
    """Reuse ``cache_dir`` when its key matches (any k unless ``top_k`` is given); else build."""
    if is_valid(cache_dir, key, top_k):
        manifest = read_manifest(cache_dir)
        print(f"[raydistill] teacher logits: reusing {cache_dir} (top-{manifest['top_k']}, "
              f"{manifest['num_examples']} examples)", flush=True)
        return manifest  # type: ignore[return-value]
    reason = ("none found" if read_manifest(cache_dir) is None
              else "teacher, data, tokenization or vocabulary map changed")
    print(f"[raydistill] teacher logits: building {cache_dir} ({reason})", flush=True)
    return build_cache(tokenized, cache_dir, key, teachers=teachers, pad_token_id=pad_token_id,
                       top_k=top_k or DEFAULT_TOP_K, **build_kw)



# ---- raydistill cache-logits -------------------------------------------------------------------

def cache_logits(teacher: str | list[str], data_dir: str, out: str, *, top_k: int = DEFAULT_TOP_K,
                 split: str = "train", n: int | None = None, tokenizer: str | None = None,
                 max_source_length: int = 1024, max_target_length: int = 56,
                 dtype: str = "float16", batch_size: int = 16, num_workers: int = 1,
                 num_gpus: float = 0.0, force: bool = False,
                 hidden_layers: Sequence[int] = (), teacher_dtype: str = "auto",
                 model_cache_dir: str | None = None) -> dict[str, Any]:
    """Tokenize ``split`` and cache the teacher's top-k logits in ``out``; returns the manifest.

    ``teacher``: folder(s) or Hub id(s) (resolved here, once; ``model_cache_dir``), run in
    ``teacher_dtype`` (auto: bf16/fp16 on GPU actors, fp32 on CPU). For a kd run to pick the
    cache up, write it to ``<output_dir>/logit_cache`` with the same n_train, max lengths and
    teacher_dtype (the student's tokenizer is a copy of the teacher's) and, for hidden-state
    matches, ``hidden_layers`` = the matches' ``layer_T``. A ``tokenizer`` folder with a
    ``vocab_map.json`` (a trimmed student's) caches the teacher's logits at its kept ids.
    """
    from transformers import AutoTokenizer

    from raydistill.data.files import read_split, validate_data_dir
    from raydistill.data.tokenize import tokenized_split
    from raydistill.hub import resolve_path
    from raydistill.models.layers import teacher_dtype_label, teacher_torch_dtype

    teacher_torch_dtype(teacher_dtype)  # a bad name fails here, not in an actor
    check_writable(Path(out).resolve().parent, "--out's folder")
    refs = [teacher] if isinstance(teacher, str) else list(teacher)
    teachers = [resolve_path(t, "teacher" if len(refs) == 1 else f"teacher[{i}]", model_cache_dir)
                for i, t in enumerate(refs)]
    validate_data_dir(data_dir, (split,))
    tok_dir = tokenizer or teachers[0]
    from raydistill.models.vocab import vocab_maps

    maps = vocab_maps(tok_dir)  # none unless tok_dir is a trimmed student's
    if hidden_layers:  # negative layer_T counts from the end, as in intermediate_matches
        from transformers import AutoConfig

        from raydistill.models.layers import layer_counts

        hidden_layers = normalize_hidden_layers(
            hidden_layers, layer_counts(AutoConfig.from_pretrained(teachers[0])), "--hidden-layers")
    key = cache_key(teachers, tok_dir, data_dir, split=split, n=n,
                    max_source_length=max_source_length, max_target_length=max_target_length,
                    hidden_layers=hidden_layers,
                    teacher_dtype=teacher_dtype_label(teacher_dtype, num_gpus > 0),
                    **maps)
    if not force and is_valid(out, key, top_k):
        print(f"{out} already holds these logits (same teacher, data, tokenization and k)")
        return read_manifest(out)  # type: ignore[return-value]
    pad_id = AutoTokenizer.from_pretrained(tok_dir).pad_token_id
    init_ray()
    ds = tokenized_split(read_split(data_dir, split, n), tok_dir, max_source_length,
                         max_target_length)
    return build_cache(ds, out, key, teachers=teachers, pad_token_id=pad_id, top_k=top_k,
                       dtype=dtype, batch_size=batch_size, num_workers=num_workers,
                       num_gpus=num_gpus, **maps)


__all__ = ["DEFAULT_TOP_K", "DTYPES", "TeacherTopK", "build_cache", "cache_key", "cache_logits",
           "cached_hidden_layers", "check_cacheable", "ensure_cache", "example_rows", "is_valid",
           "load_cache", "normalize_hidden_layers", "read_manifest",
           "teacher_outputs_for_batch", "teacher_topk", "topk_for_batch", "topk_table"]
