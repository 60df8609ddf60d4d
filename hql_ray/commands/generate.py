"""`hql-ray generate RUN_DIR --lang CODE [FILE] [-o OUT]`: sentences from AMR graphs with a trained language.

    hql-ray generate runs/demo --lang deu_Latn graphs.txt -o german.txt
    echo '(w / want-01 :ARG0 (g / girl))' | hql-ray generate runs/demo --lang German
    hql-ray generate hf://me/hql-demo-deu_Latn --lang German graphs.txt     # a model `hql-ray push` published
    # a language without a model of its own, with its family's (a run with export.nodes=all):
    hql-ray generate runs/demo --node level1.Germanic --lang afr_Latn graphs.txt

FILE (or stdin) holds one single-line graph per line, or multi-line PENMAN blocks with `# ::`
metadata. One output line per input graph. A run trained with --direction text2amr parses instead:
one sentence per line in, one AMR per line out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hql_ray.commands import flags


def add_parser(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate sentences from AMR graphs with a run's exported language model",
        description="Load RUN_DIR/final/CODE (the language's leaf adapter on the run's base model) and generate "
        "one sentence per input graph, prepared as in training (linearization, prompt, max source length). "
        "For a text2amr run, parse one sentence per line into AMRs. With --node, load RUN_DIR/final/nodes/ID "
        "(an inner node's own model) with --lang's name in the prompt; a language without a model says which "
        "node fits.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="a finished run folder (manifest.json, final/<code>/), or a model `hql-ray push` published: its "
                        "Hub id (hf://OWNER/NAME or OWNER/NAME; HF_HUB_OFFLINE=1 reads the local cache only) or a "
                        "local copy of its repository")
    p.add_argument("input", nargs="?", metavar="FILE", help="AMR graphs (or sentences); default or '-': stdin")
    p.add_argument("--lang", help="language code (deu_Latn) or name (German) of the run's tree; with --node, any "
                                  "language (its name goes into the prompt)")
    p.add_argument("--node", help="use this node's own model (final/nodes/ID/, written with export.nodes=all): a "
                                  "family's model for a language without its own; by id (level1.Germanic) or value")
    flags.add_output(p, "write here instead of stdout")
    p.add_argument("--batch-size", type=int, help="inputs per generation batch (default: the run's eval.batch_size)")
    p.add_argument("--max-new-tokens", type=int, help="output length limit (default: the run's eval.max_new_tokens)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    flags.add_verbosity(p)
    p.set_defaults(run=run)
    _allow_intermixed(p)


def _allow_intermixed(parser: argparse.ArgumentParser) -> None:
    """Let FILE come after the options (`RUN_DIR --lang X FILE`): plain argparse would stop at RUN_DIR.

    The top-level parser calls the subparser's parse_known_args; route it once through
    parse_known_intermixed_args (which calls parse_known_args itself, hence the re-entry guard).
    """
    plain = parser.parse_known_args
    state = {"inside": False}

    def parse_known_args(args=None, namespace=None):
        if state["inside"]:
            return plain(args, namespace)
        state["inside"] = True
        try:
            return parser.parse_known_intermixed_args(args, namespace)
        finally:
            state["inside"] = False

    parser.parse_known_args = parse_known_args


MAX_CLIP_WARNINGS = 10


def _quiet_libraries() -> None:
    """stderr is for our warnings: no weight-loading bars or library deprecation notes."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def run(args: argparse.Namespace) -> int:
    from hql_ray.settings.errors import InputError
    from hql_ray.outputs.generate import load_generator, read_inputs

    for flag, value in (("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens)):
        if value is not None and value < 1:
            raise InputError(f"{flag} must be >= 1, got {value}")
    if not args.verbose:
        _quiet_libraries()
    gen = load_generator(args.run_dir, args.lang, device=args.device, node=args.node)
    inputs, name = read_inputs(args.input, gen.direction)
    if gen.tree_note and not args.quiet:
        print(f"hql-ray generate: note: {gen.tree_note}", file=sys.stderr)
    if gen.choice is not None and gen.choice.family and not args.quiet:
        print(f"hql-ray generate: note: node {gen.choice.node}'s model, prompt for {gen.language.name} "
              f"({gen.language.code})", file=sys.stderr)
    if not inputs and not args.quiet:
        print(f"hql-ray generate: warning: {name} holds no input", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        print(f"\rgenerated {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    texts = [x.text for x in inputs]
    result = gen.run(texts, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, path=name,
                     lines=[x.line for x in inputs],
                     on_batch=progress if sys.stderr.isatty() and len(texts) > 1 and not args.quiet else None)
    clipped = [item for item, flag in zip(inputs, result.clipped) if flag and not args.quiet]
    for item in clipped[:MAX_CLIP_WARNINGS]:
        print(f"{name}:{item.line}: warning: input is {gen.token_count(item.text)} tokens, more than the run's "
              f"max source length {gen.max_source_length}; it was clipped (as in training)", file=sys.stderr)
    if len(clipped) > MAX_CLIP_WARNINGS:
        rest = ", ".join(str(item.line) for item in clipped[MAX_CLIP_WARNINGS:])
        print(f"{name}: warning: {len(clipped) - MAX_CLIP_WARNINGS} more input(s) clipped, at line(s) {rest}",
              file=sys.stderr)
    text = "".join(out + "\n" for out in result.outputs)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text, encoding="utf-8")
        if not args.quiet:
            print(f"wrote {len(result.outputs)} line(s) to {args.output} ({gen.language.code}, "
                  f"{sum(result.clipped)} clipped)", file=sys.stderr)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return 0
