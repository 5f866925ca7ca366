"""Content fingerprints of models, tokenizers and data splits: what derived data is keyed by.

A cache of teacher outputs (top-k logits, pseudo-labels) is valid only for the exact teacher,
tokenizer and data that produced it. Paths and mtimes lie (a copy has new ones; an overwrite in
place keeps the path), so these hash file contents. SHA-256 streams at ~1 GB/s: a 1.6 GB
teacher costs about two seconds, small next to loading it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from raydistill.data.files import find_split_files

WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt",
                   "sentencepiece.bpe.model", "spiece.model", "source.spm", "target.spm",
                   "vocab-src.json", "vocab-tgt.json")  # the last two: FSMT


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def files_fingerprint(paths: list[Path], root: Path | None = None) -> dict[str, dict[str, object]]:
    """``{name: {"sha256", "bytes"}}`` for each file (names relative to ``root``)."""
    out = {}
    for p in sorted(paths):
        name = str(p.relative_to(root)) if root else p.name
        out[name] = {"sha256": file_sha256(p), "bytes": p.stat().st_size}
    return out


def model_fingerprint(model_dir: str | Path) -> dict[str, object]:
    """config.json and the weight files of a saved model."""
    d = Path(model_dir)
    files = [d / "config.json"] + [p for pat in WEIGHT_PATTERNS for p in d.glob(pat)]
    return files_fingerprint([p for p in files if p.is_file()], d)


# Keys save_pretrained writes about where a tokenizer was loaded from, not how it tokenizes:
# a copy (raydistill puts one in output_dir/student) must fingerprint as its original.
_VOLATILE_KEYS = {"is_local", "local_files_only", "name_or_path", "_name_or_path", "_commit_hash"}
# Keys transformers (5.x) adds to tokenizer_config.json on a re-save when tokenizer.json holds a
# truncation or padding block (a tokenizer once called with truncation=True keeps one), at
# these values: defaults, or a max_length that raydistill never relies on (it passes its own
# max_source_length / max_target_length). Dropped at these values only: a left truncation
# side changes the ids, and still counts.
_STATE_DEFAULTS = {"stride": 0, "pad_to_multiple_of": None, "pad_token_type_id": 0,
                   "padding_side": "right", "truncation_side": "right",
                   "truncation_strategy": "longest_first"}


def _tokenizes(name: str, key: str, value: object) -> bool:
    """Whether a key of the tokenizer file ``name`` says how it tokenizes (not where it was
    loaded from, nor a default a re-save wrote)."""
    if key in _VOLATILE_KEYS:
        return False
    if name != "tokenizer_config.json":  # where transformers writes _STATE_DEFAULTS
        return True
    return key != "max_length" and not (key in _STATE_DEFAULTS and _STATE_DEFAULTS[key] == value)


def tokenizer_fingerprint(tokenizer_dir: str | Path) -> dict[str, object]:
    """The tokenizer files of a folder (those present of ``TOKENIZER_FILES``).

    JSON files are hashed as canonical JSON without loading-place keys (``is_local`` ...).
    """
    import json

    d = Path(tokenizer_dir)
    out: dict[str, object] = {}
    for name in TOKENIZER_FILES:
        p = d / name
        if not p.is_file():
            continue
        if p.suffix == ".json":
            data = json.loads(p.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                data = {k: v for k, v in data.items() if _tokenizes(name, k, v)}
            out[name] = {"sha256": hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()}
        else:
            out[name] = {"sha256": file_sha256(p), "bytes": p.stat().st_size}
    return out


def split_fingerprint(data_dir: str | Path, split: str) -> dict[str, object]:
    """The files holding ``split`` (source/target, jsonl or parquet)."""
    files = find_split_files(data_dir, split)
    paths = [files["source"], files["target"]] if files["format"] == "lines" else [files["path"]]
    return {"format": files["format"], "files": files_fingerprint(paths)}


def digest(obj: object) -> str:
    """A short stable hash of a JSON-able object (sorted keys)."""
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


__all__ = ["digest", "file_sha256", "model_fingerprint", "split_fingerprint",
           "tokenizer_fingerprint"]
