"""bench/vocab_trim.py's --keep-shares: the ids a keep_vocab keeps and the share of the train
split's tokens left outside them (the ones that re-segment)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from raydistill.models.scratch import train_tokenizer

BENCH = Path(__file__).resolve().parents[2] / "bench"
TRAIN = [("the cat sat on the mat .", "die katze sass auf der matte ."),
         ("a dog ran in the park .", "ein hund lief im park ."),
         ("the dog looked at the cat .", "der hund sah die katze an .")]


def load_vocab_trim():
    sys.path.insert(0, str(BENCH))  # vocab_trim.py imports its sibling common
    try:
        spec = importlib.util.spec_from_file_location("bench_vocab_trim", BENCH / "vocab_trim.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_keep_shares_counts_the_train_tokens_outside_the_kept_ids(tmp_path):
    from raydistill.models.vocab import kept_token_ids

    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val", "test"):
        (data / f"{split}.source").write_text("".join(s + "\n" for s, _ in TRAIN))
        (data / f"{split}.target").write_text("".join(t + "\n" for _, t in TRAIN))
    tok = train_tokenizer([s for pair in TRAIN for s in pair] * 3, vocab_size=300)
    tok.save_pretrained(tmp_path / "tok")
    shares = load_vocab_trim().keep_shares(str(tmp_path / "tok"), str(data), [3, 10_000])
    # the oracle: every train token, sources and targets as training tokenizes them
    ids = [i for s, t in TRAIN for i in tok(s)["input_ids"] + tok(text_target=t)["input_ids"]]
    for row, n in zip(shares, (3, 10_000)):
        kept = set(kept_token_ids(tok, data, n))
        assert row["kept_ids"] == len(kept) and row["train_tokens"] == len(ids)
        assert row["resegmented_share"] == sum(i not in kept for i in ids) / len(ids)
    assert shares[0]["resegmented_share"] > 0.2  # three tokens kept: most words split
    assert shares[1]["resegmented_share"] == 0.0  # every train token kept
