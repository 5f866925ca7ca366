"""What a BPE vocabulary needs to keep so that its kept tokens stay reachable by its merges:
shared by vocabulary trimming (vocab.py) and FSMT's two vocabularies (vocab_fsmt.py)."""

from __future__ import annotations


def merge_parts(vocab: dict[str, int], keep: set[int],
                made_by: dict[str, list[tuple[str, str]]]) -> set[str]:
    """The tokens of ``keep`` and, recursively, both parts of every merge that makes one of
    them (``made_by``: a token -> the merges giving it), where the vocabulary has them."""
    id_to_token = {i: t for t, i in vocab.items()}
    todo = [id_to_token[i] for i in keep if i in id_to_token]
    seen = set(todo)
    while todo:
        for pair in made_by.get(todo.pop(), ()):
            for part in pair:
                if part not in seen and part in vocab:
                    seen.add(part)
                    todo.append(part)
    return seen


__all__ = ["merge_parts"]
