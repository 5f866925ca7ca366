"""bench/vocab_trim.py's --keep-shares: the ids a keep_vocab keeps and the share of the train
split's tokens left outside them (the ones that re-segment)."""

from __future__ import annotations


def test_keep_shares_counts_the_train_tokens_outside_the_kept_ids(bench_module, tiny_tokenizer,
                                                                   tiny_data_dir, tmp_path):
    from raydistill.data.files import read_split
    from raydistill.models.vocab import kept_token_ids

    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    keeps = (3, len(tiny_tokenizer))
    shares = bench_module("vocab_trim").keep_shares(str(tmp_path / "tok"), str(tiny_data_dir),
                                                    list(keeps))
    # the oracle: every train token, sources and targets as training tokenizes them
    train = read_split(tiny_data_dir, "train")
    ids = [i for s, t in zip(train.sources, train.targets)
           for i in tiny_tokenizer(s)["input_ids"] + tiny_tokenizer(text_target=t)["input_ids"]]
    for row, n in zip(shares, keeps):
        kept = set(kept_token_ids(tiny_tokenizer, tiny_data_dir, n))
        assert row["kept_ids"] == len(kept) and row["train_tokens"] == len(ids)
        assert row["resegmented_share"] == sum(i not in kept for i in ids) / len(ids)
    assert shares[0]["resegmented_share"] > 0.2  # three tokens kept: most words split
    assert shares[1]["resegmented_share"] == 0.0  # every train token kept
