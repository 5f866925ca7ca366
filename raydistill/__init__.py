"""raydistill: distill large seq2seq transformers into small, fast students on Ray."""

__version__ = "0.1.0"
