"""Tokenizers and models built from nothing: no hub download is ever needed.

Used by the demo (a teacher trained from scratch), the translation benchmark (a Marian teacher
with a tokenizer trained on the train split) and the tests (tiny models of every architecture).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]  # BART's order: bos=0, pad=1, eos=2, unk=3
ARCHITECTURES = ("bart", "mbart", "marian", "pegasus", "fsmt", "t5", "bert2bert")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (like BART's) on ``texts``; it appends ``</s>`` to inputs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=1024,
    )


def train_unigram_tokenizer(texts: Iterable[str], vocab_size: int = 200, kind: str = "t5"):
    """Train a SentencePiece-style Unigram tokenizer on ``texts`` and return it as a
    ``T5Tokenizer`` (pad 0, eos 1, unk 2, two sentinels) or, ``kind="mbart"``, an
    ``MBartTokenizer`` (bos 0, pad 1, eos 2, unk 3; its language codes come after the pieces)."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    specials = {"t5": ["<pad>", "</s>", "<unk>"], "mbart": SPECIAL_TOKENS}[kind]
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(texts, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>", show_progress=False))
    vocab = [tuple(piece) for piece in json.loads(tok.to_str())["model"]["vocab"]]
    if kind == "t5":
        return tf.T5Tokenizer(vocab=vocab, extra_ids=2)
    return tf.MBartTokenizer(vocab=vocab, src_lang="en_XX", tgt_lang="ro_RO")


def train_marian_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 200):
    """Train a SentencePiece model on ``texts`` and return a ``MarianTokenizer`` over it
    (``source.spm`` = ``target.spm``, ``vocab.json`` with ``</s>`` 0, ``<unk>`` 1, ``<pad>``
    last, as OPUS-MT orders them), saved in ``out_dir``."""
    import io

    import sentencepiece as spm
    from transformers import MarianTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(list(texts)), model_writer=buf,
                                   vocab_size=vocab_size, eos_id=0, unk_id=1, bos_id=-1,
                                   pad_id=-1, hard_vocab_limit=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())] + ["<pad>"]
    for name in ("source.spm", "target.spm"):
        (out_dir / name).write_bytes(buf.getvalue())
    (out_dir / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}))
    tok = MarianTokenizer(*(str(out_dir / n) for n in ("source.spm", "target.spm", "vocab.json")))
    tok.save_pretrained(out_dir)
    return tok


def train_fsmt_tokenizer(sources: Iterable[str], targets: Iterable[str], out_dir: str | Path,
                         vocab_size: int = 260, langs: tuple[str, str] = ("en", "de")):
    """Learn BPE merges (subword-nmt's form: ``</w>`` ends a word) on Moses-tokenized ``sources``
    (``langs[0]``) and ``targets`` (``langs[1]``) and return an ``FSMTTokenizer`` over them,
    saved in ``out_dir``. Both vocabularies hold every piece, in another order on each side
    (the same piece has other ids in source and target, as in fairseq's WMT19 dictionaries)."""
    from sacremoses import MosesTokenizer
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import FSMTTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    corpus = [" ".join(MosesTokenizer(lang=lang).tokenize(t, aggressive_dash_splits=True,
                                                          escape=True))
              for lang, texts in zip(langs, (sources, targets)) for t in texts]
    bpe = Tokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, end_of_word_suffix="</w>",
        show_progress=False))
    model = json.loads(bpe.to_str())["model"]
    pieces = [t for t in sorted(model["vocab"], key=model["vocab"].get) if t not in specials]
    files = {"vocab-src.json": specials + pieces, "vocab-tgt.json": specials + pieces[::-1]}
    for name, tokens in files.items():
        (out_dir / name).write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (out_dir / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")
    tok = FSMTTokenizer(langs=list(langs), src_vocab_file=str(out_dir / "vocab-src.json"),
                        tgt_vocab_file=str(out_dir / "vocab-tgt.json"),
                        merges_file=str(out_dir / "merges.txt"))
    tok.save_pretrained(out_dir)
    return tok


def new_model(
    arch: str,
    vocab_size: int,
    *,
    d_model: int = 64,
    encoder_layers: int = 2,
    decoder_layers: int = 2,
    ffn_dim: int = 128,
    heads: int = 4,
    max_positions: int = 512,
    pad_token_id: int = 1,
    bos_token_id: int = 0,
    eos_token_id: int = 2,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """A randomly initialised seq2seq model of ``arch`` (one of ``ARCHITECTURES``)."""
    import transformers as tf

    ids = dict(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if arch in ("bart", "mbart", "marian", "pegasus"):
        cfg_cls, model_cls = {
            "bart": (tf.BartConfig, tf.BartForConditionalGeneration),
            "mbart": (tf.MBartConfig, tf.MBartForConditionalGeneration),
            "marian": (tf.MarianConfig, tf.MarianMTModel),
            "pegasus": (tf.PegasusConfig, tf.PegasusForConditionalGeneration),
        }[arch]
        # Marian: scale token embeddings by sqrt(d_model), as every OPUS-MT checkpoint does
        # (MarianConfig's default is off). Without it the sinusoidal positions (rms ~0.7) drown
        # the 0.02-std token embeddings, and a from-scratch translator learns several times
        # slower (en_de, d128 6-6, 5 min: loss 6.85 / greedy BLEU 0.1 off, 6.22 / 1.0 on).
        extra = {"decoder_vocab_size": vocab_size, "scale_embedding": True} \
            if arch == "marian" else {}
        cfg = cfg_cls(
            vocab_size=vocab_size, d_model=d_model, encoder_layers=encoder_layers,
            decoder_layers=decoder_layers, encoder_ffn_dim=ffn_dim, decoder_ffn_dim=ffn_dim,
            encoder_attention_heads=heads, decoder_attention_heads=heads,
            max_position_embeddings=max_positions, decoder_start_token_id=eos_token_id
            if arch != "marian" else pad_token_id, forced_eos_token_id=eos_token_id,
            **ids, **extra,
        )
        return model_cls._from_config(cfg, **kw)
    if arch == "fsmt":
        cfg = tf.FSMTConfig(
            langs=["en", "xx"], src_vocab_size=vocab_size, tgt_vocab_size=vocab_size,
            d_model=d_model, encoder_layers=encoder_layers, decoder_layers=decoder_layers,
            encoder_ffn_dim=ffn_dim, decoder_ffn_dim=ffn_dim, encoder_attention_heads=heads,
            decoder_attention_heads=heads, max_position_embeddings=max_positions,
            decoder_start_token_id=eos_token_id, tie_word_embeddings=False, **ids,
        )
        return tf.FSMTForConditionalGeneration._from_config(cfg, **kw)
    if arch == "t5":
        cfg = tf.T5Config(
            vocab_size=vocab_size, d_model=d_model, d_kv=d_model // heads, d_ff=ffn_dim,
            num_layers=encoder_layers, num_decoder_layers=decoder_layers, num_heads=heads,
            decoder_start_token_id=pad_token_id, pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
        )
        return tf.T5ForConditionalGeneration._from_config(cfg, **kw)
    if arch == "bert2bert":
        def bert(layers: int, decoder: bool) -> tf.BertConfig:
            return tf.BertConfig(
                vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=layers,
                num_attention_heads=heads, intermediate_size=ffn_dim,
                max_position_embeddings=max_positions, pad_token_id=pad_token_id,
                is_decoder=decoder, add_cross_attention=decoder,
            )
        cfg = tf.EncoderDecoderConfig.from_encoder_decoder_configs(
            bert(encoder_layers, False), bert(decoder_layers, True)
        )
        cfg.decoder_start_token_id = bos_token_id
        cfg.pad_token_id = pad_token_id
        cfg.eos_token_id = eos_token_id
        model = tf.EncoderDecoderModel(config=cfg)
        model.generation_config.decoder_start_token_id = bos_token_id
        model.generation_config.pad_token_id = pad_token_id
        model.generation_config.eos_token_id = eos_token_id
        return model
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def save_model_and_tokenizer(model: PreTrainedModel, tokenizer, path: str | Path) -> Path:
    """``save_pretrained`` both (safetensors) into ``path``."""
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
