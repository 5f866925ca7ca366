"""Data: read and validate split files, tokenize with Ray Data, plan and pad batches,
and combine data sets (pseudo-labels: raydistill.models.pseudo_label)."""

from raydistill.data.batching import (
    BatchPlan,
    fixed_size_plan,
    padding_fraction,
    shard_batches,
    sortish_batches,
    token_budget_batches,
    token_budget_plan,
)
from raydistill.data.combine import combine_data
from raydistill.data.files import (
    SPLITS,
    SplitData,
    find_split_files,
    read_split,
    split_dataset,
    validate_data_dir,
)
from raydistill.data.plan import PlanSpec, epoch_plan, plan_mode, planned_batches
from raydistill.data.tokenize import (
    IGNORE_INDEX,
    PadCollate,
    Tokenize,
    make_collate_fn,
    pad_batch,
    pad_hidden,
    pad_topk,
    tokenize_dataset,
    tokenized_split,
)

__all__ = [
    "SPLITS",
    "IGNORE_INDEX",
    "BatchPlan",
    "PlanSpec",
    "PadCollate",
    "SplitData",
    "Tokenize",
    "combine_data",
    "epoch_plan",
    "find_split_files",
    "fixed_size_plan",
    "make_collate_fn",
    "pad_batch",
    "pad_hidden",
    "pad_topk",
    "padding_fraction",
    "plan_mode",
    "planned_batches",
    "read_split",
    "shard_batches",
    "sortish_batches",
    "split_dataset",
    "token_budget_batches",
    "token_budget_plan",
    "tokenize_dataset",
    "tokenized_split",
    "validate_data_dir",
]
