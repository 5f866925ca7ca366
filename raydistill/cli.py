"""``raydistill`` command line: one subcommand per pipeline stage.

Input errors print one line on stderr (the traceback only with ``--debug``) and exit with 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

from raydistill.errors import RaydistillError

# HF_HUB_OFFLINE is the user's to set: a Hub id downloads unless it is (raydistill.hub).
# Weight-loading and download bars would bury the one-line errors and the summaries; the
# variable turns them off without importing transformers here (1-2 s of start-up).
for _k, _v in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
               "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}.items():
    os.environ.setdefault(_k, _v)


def _layer_list(text: str) -> list[int]:
    """``0,2,5`` or fire's ``[0,2,5]`` (the seq2seq-distillation script's spelling)."""
    try:
        return [int(x) for x in text.strip("[] ").split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give layer indices as 0,2,5") from None


def _make_student(args: argparse.Namespace) -> int:
    from raydistill.models.student import make_student

    student, e_ids, d_ids = make_student(args.teacher, e=args.e, d=args.d, save_path=args.save_path,
                                         model_cache_dir=args.model_cache_dir,
                                         copy_first_teacher_layers=args.copy_first_teacher_layers,
                                         e_layers_to_copy=args.e_layers_to_copy,
                                         d_layers_to_copy=args.d_layers_to_copy,
                                         trim_vocab=args.trim_vocab, keep_vocab=args.keep_vocab)
    n = sum(p.numel() for p in student.parameters())
    print(f"student saved to {args.save_path}: {n / 1e6:.2f}M parameters; copied encoder layers "
          f"{e_ids if e_ids is not None else 'all'}, decoder layers {d_ids if d_ids is not None else 'all'}")
    chosen = {"encoder": (args.e, args.e_layers_to_copy),
              "decoder": (args.d, args.d_layers_to_copy)}
    for side, (n_layers, given) in chosen.items():
        if n_layers == 1 and given is None and not args.copy_first_teacher_layers:
            print(f"one {side} layer: the teacher's last, where seq2seq-distillation's table "
                  f"copies its first (--{side[0]}-layers-to-copy 0 for that; docs/methods.md)")
    if args.trim_vocab:
        print(f"vocabulary: {student.config.vocab_size} of {student.config.original_vocab_size} "
              f"tokens kept (map in {Path(args.save_path) / 'vocab_map.json'})"
              + (f"; source vocabulary: {student.config.src_vocab_size} of "
                 f"{student.config.original_src_vocab_size}"
                 if hasattr(student.config, "original_src_vocab_size") else "")
              + (f"; --keep-vocab {args.keep_vocab} bounds the data tokens chosen by frequency, "
                 "the rest are special tokens, characters and merge intermediates"
                 if args.keep_vocab else ""))
    return 0


def _distill(args: argparse.Namespace) -> int:
    from raydistill.config import load_config
    from raydistill.pipeline import run_distill

    cfg, _ = load_config(args.config, args.overrides)
    summary = run_distill(cfg, overwrite=args.overwrite, resume=args.resume, address=args.address)
    _print_summary(cfg, summary)
    return 0


def _print_summary(cfg, summary: dict) -> None:
    print(f"\nbest validation {cfg.val_metric}: {summary['best'][cfg.val_metric]:.4f}")
    test = summary.get("test")
    if test:
        shown = test["scores"]
        print("test: " + "  ".join(f"{k}={v:.4g}" for k, v in shown.items()))
    print(f"outputs in {cfg.output_dir}: best_tfmr/ student/ metrics.json hparams.json "
          "test_generations.txt test_results.txt tensorboard/")


def _evaluate(args: argparse.Namespace) -> int:
    from raydistill.eval.evaluate import run_evaluate_cli

    return run_evaluate_cli(args)


def _serve(args: argparse.Namespace) -> int:
    from raydistill import serve

    # The server's children run their command lines with this module's main: serve imports no
    # CLI, so cli -> serve is the only direction.
    return serve.stop() if args.stop else serve.serve(main)


def _report(args: argparse.Namespace) -> int:
    from raydistill.report import write_report

    page = write_report(args.run_dirs, args.out, n_examples=args.examples)
    print(f"report of {len(args.run_dirs)} folder(s): {page}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from raydistill.export import run_export_cli

    return run_export_cli(args)


def _demo(args: argparse.Namespace) -> int:
    from raydistill.demo import run_demo

    run_demo(args.workdir, fresh=args.fresh)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raydistill", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    parser.add_argument("--verbose", action="store_true", help="show every line Ray and Ray "
                        "Data print (by default they go to a log file; the first line says where)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-student", help="copy alternating teacher layers into a smaller student")
    p.add_argument("teacher", help="teacher: a model folder (save_pretrained) or a Hub id "
                   "(org/name, org/name@revision)")
    p.add_argument("--save-path", "--save_path", required=True, help="where to write the student")
    p.add_argument("-e", type=int, default=None, help="student encoder layers (default: all)")
    p.add_argument("-d", type=int, default=None, help="student decoder layers (default: all)")
    for side in ("e", "d"):
        p.add_argument(f"--{side}-layers-to-copy", f"--{side}_layers_to_copy", type=_layer_list,
                       default=None, metavar="I,J,...", help="teacher "
                       f"{'encoder' if side == 'e' else 'decoder'} layers to copy, one per student "
                       f"layer (0,2,5 or [0,2,5]; default: seq2seq-distillation's table)")
    p.add_argument("--copy-first-teacher-layers", "--copy_first_teacher_layers",
                   action="store_true", help="copy the teacher's first layers instead of the "
                   "table's alternating ones")
    p.add_argument("--model-cache-dir", default=None, help="where a Hub id is downloaded "
                   "(default: $HF_HUB_CACHE, else Hugging Face's cache)")
    p.add_argument("--trim-vocab", default=None, metavar="DATA_DIR", help="keep only the "
                   "vocabulary the teacher's tokenizer gives this data folder's train split "
                   "(plus special tokens); the trimmed tokenizer is saved with the student")
    p.add_argument("--keep-vocab", type=int, default=None, metavar="N", help="with "
                   "--trim-vocab: of the train split's tokens, only the N most frequent (FSMT: "
                   "on each side); the "
                   "kept vocabulary also holds the special tokens, the single-character pieces "
                   "of the split's characters and, for BPE, the merge intermediates of the kept "
                   "tokens (and the 256 bytes of a byte-level BPE), so it is larger than N")
    p.set_defaults(func=_make_student)

    p = sub.add_parser("distill", help="train a student (sft, kd, pl or gkd; stages: chains them) on Ray Train")
    p.add_argument("config", help="YAML config (examples in jobs/configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. learning_rate=1e-4")
    p.add_argument("--overwrite", action="store_true", help="start over in a non-empty output_dir")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, "
                   "else a local Ray)")
    p.set_defaults(func=_distill)

    from raydistill.eval.evaluate import add_evaluate_args

    p = sub.add_parser("evaluate", help="generate in parallel with Ray Data and score")
    add_evaluate_args(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("report", help="one HTML page comparing runs: table, curves, "
                       "quality-speed plot, test examples, configs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a distill run's output_dir, "
                   "an evaluate output folder, or a tune sweep's output_dir")
    p.add_argument("--out", default="report.html", help="the page to write")
    p.add_argument("--examples", type=int, default=10, help="test examples shown")
    p.set_defaults(func=_report)

    from raydistill.export import add_export_args

    p = sub.add_parser("export", help="the student as a CTranslate2 model with its tokenizer")
    add_export_args(p)
    p.set_defaults(func=_export)

    p = sub.add_parser("serve", help="keep the imports warm: later commands run in a fork of "
                       "this process (no torch/transformers/Ray imports to wait for)")
    p.add_argument("--stop", action="store_true", help="stop the server that is running")
    p.set_defaults(func=_serve)

    p = sub.add_parser("demo", help="the whole pipeline on a generated data set, no download")
    p.add_argument("--workdir", default="demo_runs", help="where the demo writes (cached)")
    p.add_argument("--fresh", action="store_true", help="ignore the cached teacher")
    p.set_defaults(func=_demo)

    for register in _extra_commands():
        register(sub)
    sub.choices["tune"].set_defaults(after_sweep=_sweep_report)
    return parser


def _sweep_report(out: str | Path) -> Path:
    """A finished sweep's results page (``raydistill report`` of its folder), path printed."""
    from raydistill.report import write_report

    page = write_report([out], Path(out) / "report.html")
    print(f"report: {page}")
    return page


def _extra_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """The later stages' subcommands (tune, pseudo-label, combine-data, cache-logits), each
    defined beside its stage. Imported when the parser is built, not with this module: a
    command handed to `raydistill serve` imports nothing of them."""
    from raydistill.data.combine import register_cli as register_combine
    from raydistill.models.pseudo_label import register_cli as register_pseudo_label
    from raydistill.models.cache_cli import register_cli as register_cache_logits
    from raydistill.tune.cli import register as register_tune

    return [register_tune, register_pseudo_label, register_combine, register_cache_logits]


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] != ["serve"]:  # the command itself, not a call from Python
        from raydistill.serve import hand_over

        handed = hand_over(sys.argv[1:])  # a `raydistill serve` running? it runs this, warm
        if handed is not None:
            return handed
    parser = build_parser()
    args = parser.parse_args(argv)
    from raydistill.console import one_line_warnings, set_verbose

    one_line_warnings()
    if args.verbose:
        set_verbose(True)
    if "transformers" in sys.modules and os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1":
        # imported before the variable was set (main() called from Python): the same, by call
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        return args.func(args)
    except RaydistillError as err:
        if args.debug:
            raise
        print(f"raydistill {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a folder that became unwritable, ...
        if args.debug or not _is_storage_error(err):
            raise
        from raydistill.runtime import first_line

        where = f" {err.filename}" if getattr(err, "filename", None) else ""
        fix = ("free space there, or write elsewhere" if _no_space(err) else
               "choose a folder you can write to")
        print(f"raydistill {args.command}: error: cannot write{where}: "
              f"{first_line(err)}; {fix} (files written before stay as they were)",
              file=sys.stderr)
        return 2


STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                  errno.ENOTDIR)


def _no_space(err: OSError) -> bool:
    return err.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(err)


def _is_storage_error(err: OSError) -> bool:
    """A write the user's storage refused (pyarrow raises these without an errno)."""
    return err.errno in STORAGE_ERRNOS or _no_space(err) or "Permission denied" in str(err)



if __name__ == "__main__":
    sys.exit(main())
