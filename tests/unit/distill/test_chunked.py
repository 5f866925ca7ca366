"""The chunked KD loss against each KD loss's own (unchunked) code, float64, and its switch.

Every case runs the same call twice: with the chunked path forced off (``CHUNKED_MIN_VOCAB``
above V: the loss's unchanged code) and forced on with a given chunk size (``CHUNK_ELEMENTS`` =
chunk x V). Loss and gradients (student and teacher logits) must agree to 1e-10.
"""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch

from raydistill.distill import chunked
from raydistill.distill.chunked import CHUNKED_MIN_VOCAB, chunked_kd_loss, use_chunked
from raydistill.models.teacher_cache import teacher_topk
from raydistill.distill.losses import topk_kd_loss
from raydistill.distill.losses import kd_ce_loss
from raydistill.distill.objective import kd_kl_loss
from raydistill.distill.textbrewer import DistillationConfig, textbrewer_loss

ATOL = 1e-10


@contextlib.contextmanager
def forced(on: bool, chunk: int = 1, vocab: int = 1):
    """The chunked path on (``chunk`` positions per chunk at vocabulary ``vocab``) or off."""
    saved = chunked.CHUNKED_MIN_VOCAB, chunked.CHUNK_ELEMENTS
    chunked.CHUNKED_MIN_VOCAB = 0 if on else sys.maxsize
    chunked.CHUNK_ELEMENTS = chunk * vocab
    try:
        yield
    finally:
        chunked.CHUNKED_MIN_VOCAB, chunked.CHUNK_ELEMENTS = saved


def _case(seed: int, per_position: bool, all_masked: bool = False):
    """Random shapes, logits, a mask (some positions kept) and a temperature, float64."""
    g = torch.Generator().manual_seed(seed)
    b, t, v = (int(torch.randint(low, high, (), generator=g)) for low, high in ((1, 5), (1, 7), (5, 40)))
    s_logits = 3 * torch.randn(b, t, v, generator=g, dtype=torch.float64)
    t_logits = 3 * torch.randn(b, t, v, generator=g, dtype=torch.float64)
    mask = torch.rand(b, t, generator=g) < 0.7
    mask.view(-1)[0] = True  # at least one position
    if all_masked:
        mask[:] = False
    temp = (0.5 + 4 * torch.rand(b, t, generator=g, dtype=torch.float64) if per_position
            else float(0.5 + 4 * torch.rand((), generator=g)))
    return s_logits, t_logits, mask, temp


def _loss_and_grads(fn, *inputs):
    """fn(*leaves) and the gradients of every float64 input."""
    leaves = [x.clone().requires_grad_(True) if torch.is_tensor(x) and x.is_floating_point()
              and x.dim() >= 2 else x for x in inputs]
    loss = fn(*leaves)
    wrt = [x for x in leaves if torch.is_tensor(x) and x.requires_grad]
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    return loss.detach(), [torch.zeros_like(x) if g is None else g for x, g in zip(wrt, grads)]


def _select(temp, mask):
    return temp[mask] if torch.is_tensor(temp) else temp


def _k(v: int) -> int:
    return max(1, v // 3)


LOSSES = {
    # kd_kl_loss: SummarizationDistiller's KD term
    "kd_kl_loss": lambda s, t, mask, T, v: kd_kl_loss(s, t, mask, T),
    # TextBrewer's kd_ce_loss as GeneralDistiller calls it: on the selected positions
    "kd_ce_loss": lambda s, t, mask, T, v: kd_ce_loss(s[mask], t[mask], _select(T, mask)),
    "kd_ce_loss_mask": lambda s, t, mask, T, v: kd_ce_loss(s, t, T, mask=mask),
    # the top-k cache, teacher values from its logits (indices fixed: no gradient)
    "topk_ce": lambda s, t, mask, T, v: topk_kd_loss(s, *_topk(t, _k(v)), mask, T, "ce"),
    "topk_kl": lambda s, t, mask, T, v: topk_kd_loss(s, *_topk(t, _k(v)), mask, T, "kl"),
    "exact_cache_kl": lambda s, t, mask, T, v: topk_kd_loss(s, t, None, mask, T, "kl"),
}


def _topk(t, k):
    values, indices = torch.topk(t.detach(), k, dim=-1)
    # values from t itself (not its detached copy) so the teacher-side gradient is compared too
    return t.gather(-1, indices), indices


def _compare(name, s, t, mask, temp, chunk):
    v = s.size(-1)
    fn = LOSSES[name]
    with forced(False):
        ref, ref_grads = _loss_and_grads(lambda a, b: fn(a, b, mask, temp, v), s, t)
    with forced(True, chunk, v):
        got, got_grads = _loss_and_grads(lambda a, b: fn(a, b, mask, temp, v), s, t)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    for g_got, g_ref in zip(got_grads, ref_grads):
        torch.testing.assert_close(g_got, g_ref, atol=ATOL, rtol=0)
    return ref, got


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("per_position", [False, True], ids=["scalar_T", "per_position_T"])
@pytest.mark.parametrize("seed", range(4))
def test_chunked_equals_unchunked(name, per_position, seed):
    s, t, mask, temp = _case(seed, per_position)
    n = int(mask.sum())
    for chunk in (1, 2, max(1, n - 1), n, n + 7):  # n + 7: one chunk larger than N
        _compare(name, s, t, mask, temp, chunk)


@pytest.mark.parametrize("name", list(LOSSES))
def test_all_masked_batch_gives_zero_and_zero_grads(name):
    s, t, mask, temp = _case(0, per_position=True, all_masked=True)
    ref, got = _compare(name, s, t, mask, temp, chunk=3)
    assert float(got) == 0.0 == float(ref)
    with forced(True, 3, s.size(-1)):
        loss, grads = _loss_and_grads(lambda a, b: LOSSES[name](a, b, mask, temp, s.size(-1)), s, t)
    assert float(loss) == 0.0 and all(float(g.abs().sum()) == 0.0 for g in grads)


def test_no_mask_and_unselected_rows():
    s, t, _, temp = _case(5, per_position=True)
    for chunk in (1, 4, 100):  # every position counts: rows read in place (slices)
        _compare("kd_ce_loss_mask", s, t, None, temp, chunk)
    every_other = torch.arange(s[..., 0].numel()).reshape(s.shape[:-1]) % 2 == 0
    with forced(True, 2, s.size(-1)):
        _, (grad_s, _) = _loss_and_grads(lambda a, b: kd_kl_loss(a, b, every_other, 2.0), s, t)
    assert float(grad_s[~every_other].abs().sum()) == 0.0  # unselected rows get 0
    assert bool((grad_s[every_other].abs().sum(-1) > 0).all())


@pytest.mark.parametrize("seed", range(3))
def test_textbrewer_loss_reads_the_mask_in_place(seed):
    """textbrewer_loss hands kd_ce_loss the mask when the chunked path runs: same loss, same grads."""
    s, t, mask, _ = _case(seed, per_position=False)
    config = DistillationConfig(temperature=3, kd_loss_type="ce")

    def run(a, b):
        loss, _ = textbrewer_loss(config, {"logits": a, "logits_mask": mask},
                                  {"logits": b, "logits_mask": mask.clone()}, step=0, total_steps=1)
        return loss

    with forced(False):
        ref, ref_grads = _loss_and_grads(run, s, t)
    with forced(True, 2, s.size(-1)):
        got, got_grads = _loss_and_grads(run, s, t)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_large_vocabularies_take_the_chunked_path():
    """The switch, at its real threshold (tiny tensors: 2 positions)."""
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[True, False]])

    def grad_fns(vocab):
        s = torch.randn(1, 2, vocab, generator=g, requires_grad=True)
        t = torch.randn(1, 2, vocab, generator=g)
        values, indices = teacher_topk(t, 4)
        losses = [kd_kl_loss(s, t, mask, 2.0), kd_ce_loss(s[mask], t[mask], 2.0),
                  kd_ce_loss(s, t, torch.tensor([[2.0, 3.0]]), mask=mask),
                  topk_kd_loss(s, values, indices, mask, 2.0, "ce"),
                  topk_kd_loss(s, values, indices, mask, 2.0, "kl")]
        return {type(loss.grad_fn).__name__ for loss in losses}

    assert grad_fns(CHUNKED_MIN_VOCAB) == {"_ChunkedKDBackward"}
    assert "_ChunkedKDBackward" not in grad_fns(CHUNKED_MIN_VOCAB - 1)
    assert use_chunked(CHUNKED_MIN_VOCAB, torch.tensor(2.0))
    # a temperature that wants a gradient keeps the unchunked code (which differentiates it)
    assert not use_chunked(CHUNKED_MIN_VOCAB, torch.tensor(2.0, requires_grad=True))


def test_half_precision_logits_get_a_gradient_of_their_dtype():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 50, generator=g).bfloat16().requires_grad_(True)
    t = torch.randn(2, 3, 50, generator=g).bfloat16()
    mask = torch.tensor([[True, True, False], [True, False, True]])
    with forced(False):
        ref = kd_kl_loss(s, t, mask, 2.0)
        (ref_grad,) = torch.autograd.grad(ref, s)
    with forced(True, 2, 50):
        got = kd_kl_loss(s, t, mask, 2.0)
        (got_grad,) = torch.autograd.grad(got, s)
    assert got.dtype == ref.dtype == torch.float32 and got_grad.dtype == torch.bfloat16
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(got_grad, ref_grad)


def test_peak_memory_is_one_gradient_and_a_chunk():
    """Beyond the logits, forward + backward hold the student's gradient and chunk temporaries."""
    profiler = pytest.importorskip("torch.profiler")
    try:
        from torch._C._profiler import _EventType
    except ImportError:
        pytest.skip("torch._C._profiler._EventType is gone: update the allocation walk")
    n, v, chunk = 64, 2048, 4
    s = torch.randn(n, v, requires_grad=True)
    t = torch.randn(n, v)
    mask = torch.ones(n, dtype=torch.bool)
    mask[::5] = False
    peaks = {}
    for on in (False, True):
        with forced(on, chunk, v), profiler.profile(activities=[profiler.ProfilerActivity.CPU],
                                                    profile_memory=True) as prof:
            kd_kl_loss(s, t, mask, 2.0).backward()
        s.grad = None
        events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            event = stack.pop()
            stack.extend(event.children)
            if event.tag == _EventType.Allocation:
                events.append((event.start_time_ns, event.extra_fields.alloc_size))
        total = peak = 0
        for _, size in sorted(events):
            total += size
            peak = max(peak, total)
        peaks[on] = peak
    one, chunk_bytes = n * v * 4, chunk * v * 4
    assert peaks[True] <= one + 8 * chunk_bytes  # measured: one + 5 chunks
    assert peaks[False] >= 4 * one  # measured: 5.6 x one


def test_errors_say_what_to_pass():
    s, t = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="kind='mse'"):
        chunked_kd_loss(s, t, 2.0, kind="mse")
    with pytest.raises(ValueError, match="same positions"):
        chunked_kd_loss(s, t[:, :2], 2.0)
    with pytest.raises(ValueError, match="need t_indices"):
        chunked_kd_loss(s, t[..., :4], 2.0)
    with pytest.raises(ValueError, match="mask"):
        chunked_kd_loss(s, t, 2.0, mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="constant"):
        chunked_kd_loss(s, t, torch.tensor(2.0, requires_grad=True))
