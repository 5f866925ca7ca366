"""Data: read and validate split files, tokenize with Ray Data, plan and pad batches."""

from raydistill.data.batching import (
    BatchPlan,
    padding_fraction,
    shard_batches,
    sortish_batches,
    token_budget_batches,
    token_budget_plan,
)
from raydistill.data.files import (
    SPLITS,
    SplitData,
    find_split_files,
    read_split,
    split_dataset,
    validate_data_dir,
)
from raydistill.data.tokenize import (
    IGNORE_INDEX,
    PadCollate,
    Tokenize,
    make_collate_fn,
    pad_batch,
    tokenize_dataset,
)

__all__ = [
    "SPLITS",
    "IGNORE_INDEX",
    "BatchPlan",
    "PadCollate",
    "SplitData",
    "Tokenize",
    "find_split_files",
    "make_collate_fn",
    "pad_batch",
    "padding_fraction",
    "read_split",
    "shard_batches",
    "sortish_batches",
    "split_dataset",
    "token_budget_batches",
    "token_budget_plan",
    "tokenize_dataset",
    "validate_data_dir",
]
