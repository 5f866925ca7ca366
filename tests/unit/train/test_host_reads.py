"""The training step reads no device value on the host between two log lines but one.

On a GPU every read of a tensor's value on the host (``.item()``, ``if tensor:``, ``float()``,
boolean-mask indexing, ``nonzero``, ...) waits for all the queued work: a step that reads several
times runs the GPU dry several times. This oracle runs the real worker loop
(``raydistill.train.loop.run_epoch``) on tiny models on the CPU under a ``TorchFunctionMode``
that records every such call made on the training thread, and fails when a logging window holds
more than one. The batches are collated and counted on a background thread (the prefetch) before
their copy to the device: those host reads are not seen here, as they cost a GPU nothing.

Not counted: the optimizer's own step (torch's AdamW reads its CPU step counters; on a GPU the
fused kernel keeps them on the device), the host RNG state a checkpoint saves, generation
(validation's, and gkd's sampling: each new token is read to stop), and reads inside the models'
own forward in transformers (its attention-mask helpers ask ``padding_mask.all()`` to skip a mask
without padding: four a micro-batch here; they are listed in ``model_reads`` and kept under a
fixed bound below, so that more of them show). On a GPU, tests/gpu runs the same steps under
``torch.cuda.set_sync_debug_mode``.
"""

from __future__ import annotations

import traceback
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from raydistill.config import DistillConfig
from raydistill.data.tokenize import make_collate_fn
from raydistill.distill.step import LossStep, run_needs
from raydistill.models.scratch import new_model
from raydistill.models.student import make_student
from raydistill.train import loop
from raydistill.train.logger import Logger
from raydistill.train.targets import make_targets

# Calls that hand a tensor's value to Python (each waits for the device).
_READS = {"item", "__bool__", "__int__", "__float__", "__index__", "__complex__", "__format__",
          "__repr__", "__contains__", "tolist", "numpy", "nonzero", "argwhere", "masked_select",
          "equal", "allclose", "is_nonzero", "unique", "unique_consecutive", "bincount"}
# Calls that read their index's value when it is a boolean mask (its true positions).
_MASK_INDEXING = {"__getitem__", "__setitem__", "index_put", "index_put_"}


def _has_bool_tensor(index) -> bool:
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _reads_host(func, args, kwargs) -> str | None:
    name = getattr(func, "__name__", "")
    if name in _READS:
        return name
    if name in _MASK_INDEXING and len(args) > 1 and _has_bool_tensor(args[1]):
        return f"{name}[bool mask]"
    if func is torch.where and len(args) + len(kwargs) == 1:
        return "where(condition)"
    if name == "repeat_interleave" and isinstance(args[1] if len(args) > 1 else None, torch.Tensor) \
            and kwargs.get("output_size") is None:
        return "repeat_interleave"
    return None


class HostReads(TorchFunctionMode):
    """Records the host reads of the thread it is entered on, with where they came from."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str]] = []  # ("read", where) or ("log", "")
        self.model_reads: list[str] = []  # inside transformers' forward code
        self.paused = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = None if self.paused else _reads_host(func, args, kwargs)
        if name is not None:
            frames = [f for f in traceback.extract_stack()[:-1]
                      if "/torch/" not in f.filename and f.filename != __file__]
            where = " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
                                for f in frames[::-1][:3])
            if frames and "/transformers/" in frames[-1].filename:
                self.model_reads.append(f"{name} at {where}")
            else:
                self.events.append(("read", f"{name} at {where}"))
        return func(*args, **kwargs)

    def pause(self, fn):
        """``fn`` with recording paused while it runs."""
        def paused(*a, **kw):
            self.paused += 1
            try:
                return fn(*a, **kw)
            finally:
                self.paused -= 1
        return paused

    def windows(self) -> list[list[str]]:
        """The reads between consecutive log lines (the last window ends the run)."""
        out: list[list[str]] = [[]]
        for kind, where in self.events:
            if kind == "log":
                out.append([])
            else:
                out[-1].append(where)
        return out


BASE = dict(data_dir="d", output_dir="o", teacher="t", logger="none", seed=0)
N_BATCHES = 8  # micro-batches; with accumulation 2: 4 optimizer steps, a line every 2


def _rows(tokenizer, n: int) -> dict[str, list]:
    rng = np.random.default_rng(0)
    vocab = len(tokenizer)
    src = [rng.integers(5, vocab, int(rng.integers(3, 12))).astype(np.int32) for _ in range(n)]
    tgt = [np.append(rng.integers(5, vocab, int(rng.integers(2, 8))),
                     tokenizer.eos_token_id).astype(np.int32) for _ in range(n)]
    return {"id": list(range(n)), "input_ids": src, "labels": tgt}


class _Shard:
    """What the worker loop reads of a Ray Data shard: iter_torch_batches, iter_batches."""

    def __init__(self, rows: dict[str, list], batch_size: int) -> None:
        self.rows, self.batch_size = rows, batch_size

    def _numpy(self, a: int, b: int) -> dict[str, np.ndarray]:
        out = {}
        for k, v in self.rows.items():
            col = v[a:b]
            if isinstance(col[0], np.ndarray):
                arr = np.empty(len(col), dtype=object)
                arr[:] = col
                out[k] = arr
            else:
                out[k] = np.asarray(col)
        return out

    def iter_torch_batches(self, *, batch_size, collate_fn, device="auto", **_):
        assert device == "cpu", "the loop counts tokens on the host: batches must stay there"
        n = len(self.rows["id"])
        for a in range(0, n, batch_size):
            yield collate_fn(self._numpy(a, a + batch_size))

    def iter_batches(self, batch_size=None, batch_format="numpy"):
        yield self._numpy(0, len(self.rows["id"]))


def _worker(cfg: DistillConfig, teacher, student, e_ids, d_ids, tokenizer, planned: bool):
    torch.manual_seed(0)
    needs = run_needs(cfg)
    projections = None
    if needs.projections:
        from raydistill.distill.textbrewer import build_projections

        projections = build_projections(needs.tb_config)
    loss_step = LossStep(cfg, [teacher], student, e_ids, d_ids, projections)
    batch_size = cfg.train_batch_size
    rows = _rows(tokenizer, N_BATCHES * batch_size)
    total = N_BATCHES // cfg.gradient_accumulation_steps
    run = {"total_steps": total, "batches_per_epoch": N_BATCHES, "output_dir": "o"}
    optimizer, scheduler = loop.build_optimizer(cfg, student, total, projections,
                                                loss_step.tb_config)
    state = {"global_step": 0, "epoch": 0, "batch_in_epoch": 0, "best_metric": None,
             "history": []}
    shard = _Shard(rows, batch_size)
    collate = make_collate_fn(tokenizer.pad_token_id)
    feed = None
    if planned:
        lengths = np.stack([np.arange(len(rows["id"])),
                            [len(r) for r in rows["input_ids"]], [len(r) for r in rows["labels"]]])
        plan = {"spec": {"mode": "sortish", "num_workers": 1, "seed": 0,
                         "batch_size": batch_size, "max_tokens": None},
                "lengths": lengths, "cached_logits": False}
        feed = loop._PlannedFeed(plan, shard, collate, 0, 1)
    device = torch.device("cpu")
    return loop.Worker(
        cfg=cfg, run=run, rank=0, world=1, device=device, model=student, inner=student,
        tokenizer=tokenizer, loss_step=loss_step,
        targets=make_targets(cfg, needs, loss_step, device, state), projections=projections,
        optimizer=optimizer, scheduler=scheduler, scaler=None, amp_dtype=None, state=state,
        resumed=False, train_shard=shard, val_rows=[], collate=collate, feed=feed,
        logger=Logger(cfg, run), last_val_step=-1)


@pytest.fixture(scope="module")
def models(tiny_tokenizer):
    torch.manual_seed(0)
    teacher = new_model("bart", len(tiny_tokenizer), encoder_layers=2, decoder_layers=2,
                        d_model=32, attn_implementation="eager",
                        pad_token_id=tiny_tokenizer.pad_token_id).eval()
    return teacher


TB_SECTION = {"temperature": 2.0, "hard_label_weight": 0.5, "kd_loss_weight": 1.0,
              "kd_loss_type": "ce",
              "intermediate_matches": [
                  {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse",
                   "weight": 1.0},
                  {"layer_T": 5, "layer_S": 4, "feature": "hidden", "loss": "cos", "weight": 0.5},
              ]}

CASES = {
    "kd": dict(method="kd", alpha_ce=0.5, alpha_mlm=0.3, alpha_hid=0.2, label_smoothing=0.1),
    "tb": dict(method="kd", distillation=TB_SECTION),
    "gkd": dict(method="gkd", gkd={"lmbda": 0.0, "beta": 0.5}),
    # every micro-batch on-policy: sampled targets, counted on the device for tokens/s
    "gkd-sampled": dict(method="gkd", gkd={"lmbda": 1.0, "beta": 0.5, "max_new_tokens": 6}),
}
# transformers' reads per micro-batch: the student's and the teacher's encoder and cross masks
MODEL_READS_PER_MICRO_BATCH = 4


# Each objective once; both feeds (Ray Data's fixed batches, the plan's) with kd.
RUNS = [("kd", False), ("kd", True), ("tb", False), ("gkd", True), ("gkd-sampled", False)]


@pytest.mark.parametrize("case,planned", RUNS,
                         ids=[f"{c}-{'planned' if p else 'fixed'}" for c, p in RUNS])
@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_at_most_one_host_read_per_logging_window(models, tiny_tokenizer, monkeypatch, case,
                                                  planned):
    teacher = models
    student, e_ids, d_ids = make_student(teacher, e=2, d=1)
    cfg = DistillConfig(**BASE, **CASES[case], train_batch_size=4, gradient_accumulation_steps=2,
                        log_every_n_steps=2, max_steps=N_BATCHES // 2)
    w = _worker(cfg, teacher, student, e_ids, d_ids, tiny_tokenizer, planned)
    reads = HostReads()
    validated = []
    monkeypatch.setattr(loop, "_validate", reads.pause(
        lambda *a, **kw: {cfg.val_metric: 0.0}))
    monkeypatch.setattr(loop.ray.train, "report", lambda metrics, checkpoint=None:
                        validated.append(metrics))
    monkeypatch.setattr(loop, "save_training_state", lambda *a, **kw: None)
    monkeypatch.setattr(loop, "rng_state", reads.pause(loop.rng_state))  # host tensors
    w.optimizer.step = reads.pause(w.optimizer.step)
    student.generate = reads.pause(student.generate)
    log_step = w.logger.step

    def step_line(*a, **kw):
        reads.events.append(("log", ""))
        return log_step(*a, **kw)

    w.logger.step = step_line
    with reads:
        loop.run_epoch(w)
    assert w.done and w.state["global_step"] == N_BATCHES // 2
    assert len(validated) == 1 and np.isfinite(validated[0]["train_loss"])
    windows = reads.windows()
    assert len(windows) >= 3  # lines at steps 1, 2 and 4, then the validation
    too_many = [win for win in windows if len(win) > 1]
    assert not too_many, (f"{case}: more than one host read in a logging window:\n"
                          + "\n".join(f"window {i}: " + "\n  ".join(win)
                                      for i, win in enumerate(windows)))
    assert len(reads.model_reads) <= MODEL_READS_PER_MICRO_BATCH * N_BATCHES, reads.model_reads


def test_a_non_finite_loss_stops_the_run_at_the_next_read_naming_its_step(models,
                                                                         tiny_tokenizer):
    """The loss is read once per line, so a NaN is caught there, with the step it came from
    and the components that are NaN; no checkpoint is written before."""
    import copy

    from raydistill.errors import TrainingError

    teacher = copy.deepcopy(models)
    with torch.no_grad():
        teacher.get_input_embeddings().weight[:, 0] = float("nan")
    student, e_ids, d_ids = make_student(models, e=2, d=1)
    cfg = DistillConfig(**BASE, **CASES["kd"], train_batch_size=4, gradient_accumulation_steps=2,
                        log_every_n_steps=2, max_steps=N_BATCHES // 2)
    w = _worker(cfg, teacher, student, e_ids, d_ids, tiny_tokenizer, planned=False)
    with pytest.raises(TrainingError, match=r"loss became nan at step 0 \(component ce_loss"):
        loop.run_epoch(w)
    assert w.state["global_step"] == 1  # caught at the first line, after step 1
