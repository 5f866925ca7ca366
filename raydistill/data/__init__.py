"""Data: read and validate split files, tokenize with Ray Data, plan and pad batches,
and combine data sets (pseudo-labels: raydistill.models.pseudo_label).
The names below import on first use (raydistill.lazy): reading split files needs no torch."""

from raydistill.lazy import lazy_exports

_EXPORTS = {
    "BatchPlan": "raydistill.data.batching",
    "fixed_size_plan": "raydistill.data.batching",
    "padding_fraction": "raydistill.data.batching",
    "shard_batches": "raydistill.data.batching",
    "sortish_batches": "raydistill.data.batching",
    "token_budget_batches": "raydistill.data.batching",
    "token_budget_plan": "raydistill.data.batching",
    "combine_data": "raydistill.data.combine",
    "SPLITS": "raydistill.data.files",
    "SplitData": "raydistill.data.files",
    "find_split_files": "raydistill.data.files",
    "read_split": "raydistill.data.files",
    "split_dataset": "raydistill.data.files",
    "validate_data_dir": "raydistill.data.files",
    "PlanSpec": "raydistill.data.plan",
    "epoch_plan": "raydistill.data.plan",
    "plan_mode": "raydistill.data.plan",
    "planned_batches": "raydistill.data.plan",
    "IGNORE_INDEX": "raydistill.data.tokenize",
    "PadCollate": "raydistill.data.tokenize",
    "Tokenize": "raydistill.data.tokenize",
    "make_collate_fn": "raydistill.data.tokenize",
    "pad_batch": "raydistill.data.tokenize",
    "pad_hidden": "raydistill.data.tokenize",
    "pad_topk": "raydistill.data.tokenize",
    "tokenize_dataset": "raydistill.data.tokenize",
    "tokenized_split": "raydistill.data.tokenize",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
