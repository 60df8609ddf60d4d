"""`hql-ray train`: the original's flags, `--config FILE`, and `section.key=value` overrides.

    hql-ray train --config configs/demo.yaml
    hql-ray train -bm google/mt5-large -ln "level0", "level1", "level2", "language" -le 1 \\
        -lf language_files/12langs_pthql.csv -sn 12langs_pthql -tm qlora
    # the same run folder again, the root and Germanic not retrained (their adapters are read from it):
    hql-ray train ... -sn 12langs_pthql -sv Indo_European Germanic
    # a tree that adds languages: only the new nodes train, the finished ones are reused as they are
    hql-ray train ... -lf 13langs.csv -sn 13langs --grow runs/12langs_pthql

The original's flags keep the original's meanings: -ts is the validation budget of a node (test_size),
-sv lists node values not to train (skip_values), -ge is the LID-baseline JSON (global_evaluations).
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

from hql_ray.commands import flags
from hql_ray.settings import bundled
from hql_ray.settings.config import MODES, VALIDATION_MODES, make_config
from hql_ray.settings.handoffs import HANDOFFS
from hql_ray.settings.errors import ConfigError
from hql_ray.settings.tree import parse_level_args

DEMO_CONFIG = bundled.DEMO_CONFIG  # in the working directory, else the package's own copy
BATCH_SIZES = [1, 2, 4, 8, 16, 32]  # the original's -bs choices


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train every node of a language tree (the main job)",
        description="Train one model per language by walking a language tree (hierarchical QLoRA) on Ray. "
        "With no --config and no flags it runs the demo (configs/demo.yaml).",
    )
    p.add_argument("--config", help="YAML config (see configs/); flags and overrides win over it")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML (defaults < --config < flags < overrides; "
                        "--config reads it back) and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="check config, tree, data and run folder without Ray, print the plan (per node: "
                        "languages, examples, steps, workers, adapter size, GPU memory) and exit")
    p.add_argument("--memory-activations", action="store_true",
                   help="with --dry-run: the GPU memory column includes the activations' peak, measured on the "
                        "meta device (20-60 s per tree depth for mT5-large)")
    p.add_argument("--slots", type=int, metavar="N",
                   help="with --dry-run: worker slots to plan for (default: --num-gpus, else the GPUs "
                        "visible here, else resources.num_cpu_slots or the CPUs)")
    add_original_flags(p.add_argument_group("the original train.py's flags"))
    add_our_flags(p.add_argument_group("hql-ray"))
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. train.learning_rate=1e-4 model.lora.r=64")
    p.set_defaults(run=run)
    flags.accept_switch_words(p, ["evaluate"])


def add_original_flags(orig) -> None:
    """The original train.py's flags, with its meanings."""
    orig.add_argument("-bm", "--base-model", help="hub name, local dir, or 'tiny' (built-in random tiny mT5)")
    orig.add_argument("-tm", "--training-mode", choices=MODES, help="qlora (4-bit base + LoRA), lora, or fft")
    flags.add_levels(orig, 'tree columns forming the curriculum, e.g. -ln level0 level1 level2 language '
                           '(the original\'s "level0", "level1", ... spelling works too)', "--level-names")
    orig.add_argument("-le", "--level-epochs", type=float, help="epochs per level")
    orig.add_argument("-lf", "--language-file", help="tree CSV (language_files/...)")
    orig.add_argument("-sn", "--save-name", help="run name: results go to OUTPUT_DIR/SAVE_NAME")
    orig.add_argument("-ls", "--lora-size", type=int, help="LoRA rank r (alpha follows r unless model.lora.alpha is set)")
    orig.add_argument("-bs", "--batch-size", type=int, choices=BATCH_SIZES,
                      help="examples per optimizer step, whatever the number of workers (default: 8)")
    orig.add_argument("-ts", "--test-size", type=int, metavar="N",
                      help="a node's validation budget: each corpus of each of its n languages gives its first "
                           "N // n // corpora validation rows (the original's; default: 5000)")
    orig.add_argument("-sv", "--skip-values", nargs="*", metavar="VALUE",
                      help="tree nodes not trained in this run, by value (e.g. -sv Indo_European Germanic); "
                           "a skipped node whose children train must be finished in the run folder already "
                           "(section.key=value words after -sv are still overrides)")
    orig.add_argument("-ge", "--global-evaluations", metavar="PATH",
                      help="JSON of the references' language-ID score per test set and language "
                           "(the original's global_evaluations; computed and written there if missing)")


def add_our_flags(ours) -> None:
    ours.add_argument("--data-dir", help="data folder: ours (CORPUS/CODE/CORPUS_CODE_SPLIT.tsv) or the "
                                         "original's (GoldAMR_SilverText/data/amr3/..., see data/README.md)")
    ours.add_argument("--corpus", nargs="+", help="training corpora, e.g. --corpus amr3 flores (or amr3,flores; "
                                                  "default: the original's, amr3 and flores; in a folder without "
                                                  "them, every corpus in it)")
    ours.add_argument("--max-train-per-corpus", type=cap_value, metavar="N|null",
                      help="training examples per corpus and language, a seeded sample (default: 31000, "
                           "the paper's; null: all, as the original train.py)")
    ours.add_argument("--validation", choices=VALIDATION_MODES,
                      help="first: the original's first rows per corpus (see -ts; default); sample: a seeded "
                           "sample of data.max_validation_per_language per language")
    flags.add_switch(ours, "evaluate", "generate on the test sets and score them after each node (default: on; "
                                       "--evaluate true|false works too)")
    ours.add_argument("--test-sets", nargs="+", metavar="SET",
                      help="test sets scored apart: flores, ldc2020t07 (deu/eng/ita/spa), amr3, or any corpus "
                           "folder's name (its test split) (default: flores ldc2020t07, the original's, when "
                           "flores is trained on; else the training corpora's test splits)")
    flags.add_output(ours, "where runs are written (default: runs)", "--output-dir", metavar="DIR")
    ours.add_argument("--storage-path", help="Ray Train storage: local dir, NFS path or s3:// URI")
    ours.add_argument("--num-gpus", type=int, help="GPU slots to use (default: all the cluster has; 0 = CPU)")
    ours.add_argument("--address", help="Ray cluster to join ('auto' = the running one); default: start a local Ray")
    ours.add_argument("--handoff", choices=list(HANDOFFS), help="parent -> child: "
                      + "; ".join(f"{name}: {mode.help}" for name, mode in HANDOFFS.items()) + " (default stack)")
    ours.add_argument("--direction", choices=["amr2text", "text2amr"], help="generation (default) or parsing")
    ours.add_argument("--resume", action="store_true", help="continue a run: finished nodes are kept, the rest retrained")
    ours.add_argument("--grow", metavar="RUN",
                      help="reuse the finished nodes of the run folder RUN as they are and train only what the tree "
                           "adds (new languages, new families); RUN may be this run's folder (grown in place) or "
                           "another (the new run folder gets links to RUN's files); see docs/trees.md")
    ours.add_argument("--retrain", nargs="+", metavar="NODE",
                      help="with --resume or --grow: train these finished nodes again (by value, id or language "
                           "code, as -sv), and every node below them")
    ours.add_argument("--simulate", type=float, metavar="SEC_PER_EXAMPLE",
                      help="dry run of the schedule: nodes sleep SEC_PER_EXAMPLE x examples / workers, no model")
    ours.add_argument("--simulate-adapters", choices=["tiny", "real"], default="tiny",
                      help="with --simulate: each node returns a token adapter (tiny), or random tensors with the "
                           "real LoRA shapes of model.base and model.lora (real: the driver, object store, "
                           "node adapters and exports move the bytes a real run moves)")
    ours.add_argument("--plain", action="store_true", help="plain progress lines even on a terminal")
    flags.add_verbosity(ours)


NO_CAP = "null"  # --max-train-per-corpus null: every example (the flag's value until flags_to_dict)


def cap_value(text: str) -> int | str:
    """--max-train-per-corpus: a number, or null/none for no cap."""
    if text.strip().lower() in ("null", "none", "~"):
        return NO_CAP
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or null") from None


def flags_to_dict(args: argparse.Namespace) -> dict:
    """Only the flags the user gave, as a nested config dict."""
    mapping = {
        "base_model": ("model", "base"),
        "training_mode": ("model", "mode"),
        "level_epochs": ("train", "epochs"),
        "language_file": ("tree", "file"),
        "save_name": ("run", "name"),
        "batch_size": ("train", "batch_size"),
        "test_size": ("data", "validation_size"),
        "skip_values": ("tree", "skip"),
        "global_evaluations": ("eval", "lid_baseline"),
        "data_dir": ("data", "dir"),
        "max_train_per_corpus": ("data", "max_train_per_corpus"),
        "validation": ("data", "validation"),
        "test_sets": ("eval", "test_sets"),
        "output": ("run", "output_dir"),
        "storage_path": ("run", "storage_path"),
        "num_gpus": ("resources", "num_gpus"),
        "address": ("resources", "address"),
        "handoff": ("model", "handoff"),
        "direction": ("data", "direction"),
        "grow": ("run", "grow"),
        "retrain": ("tree", "retrain"),
    }
    out: dict = {}
    for attr, (section, key) in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.setdefault(section, {})[key] = value
    if getattr(args, "max_train_per_corpus", None) == NO_CAP:
        out.setdefault("data", {})["max_train_per_corpus"] = None
    if args.levels:
        out.setdefault("tree", {})["levels"] = parse_level_args(args.levels)
    if args.corpus:
        out.setdefault("data", {})["corpora"] = flags.words(args.corpus)
    if args.lora_size is not None:
        out.setdefault("model", {}).setdefault("lora", {})["r"] = args.lora_size
    if args.evaluate is not None:
        out.setdefault("eval", {})["generate"] = args.evaluate
    if args.resume:
        out.setdefault("run", {})["resume"] = True
    return out


def resolve_config(args: argparse.Namespace):
    for name in ("skip_values", "retrain"):  # -sv, --retrain take any number of values: overrides typed after
        values = getattr(args, name, None)  # them land there
        if values:
            args.overrides = [v for v in values if "=" in v] + list(args.overrides)
            setattr(args, name, [v for v in values if "=" not in v])
    given = flags_to_dict(args)
    config_file = bundled.locate(args.config)
    if config_file is None and not given and not args.overrides:
        config_file = bundled.locate(DEMO_CONFIG)
        if not Path(config_file).is_file():
            raise ConfigError(f"no --config given and the demo config {DEMO_CONFIG} is neither here nor in the "
                              "installed package; pass --config")
        if not getattr(args, "quiet", False):
            print(f"hql-ray train: no config given, using the demo's ({config_file})", file=sys.stderr)
    cfg = make_config(config_file, given, args.overrides)
    # The shipped tree files and sample, from any folder (a file of that name here wins).
    cfg.tree.file, cfg.data.dir = bundled.locate(cfg.tree.file), bundled.locate(cfg.data.dir)
    return cfg


def quiet_libraries(verbose: bool) -> None:
    """Without -v, no transformers progress bar on the driver (the demo base's 'Writing model shards'); Ray's
    start-up lines are `orchestration.cluster.init_ray`'s."""
    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def run(args: argparse.Namespace) -> int:
    from hql_ray.outputs.run_files import config_yaml

    cfg = resolve_config(args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.print_config:
        sys.stdout.write(config_yaml(cfg))
        return 0
    if args.slots is not None and args.slots < 1:
        raise ConfigError(f"--slots must be >= 1, got {args.slots}")
    if args.dry_run:
        from hql_ray.orchestration import plan

        dry = plan.make_plan(cfg, slots=args.slots, activations=args.memory_activations)
        print(plan.render(dry))
        return 2 if dry.problems else 0
    return train(cfg, args)


def train(cfg, args: argparse.Namespace) -> int:
    from hql_ray.orchestration import run_model
    from hql_ray.settings.tree import load_tree

    # An existing run folder (no --resume) is refused first: before the data check, the demo base's
    # build or Ray.
    tree = load_tree(cfg.tree.file, cfg.tree.levels)
    run_model.check_run_folder(cfg, tree, tree.skip_nodes(cfg.tree.skip))

    from hql_ray.orchestration import stop
    from hql_ray.orchestration.driver import Driver
    from hql_ray.training.simulate import Simulation

    stop.on_sigterm()
    quiet_libraries(args.verbose)
    simulation = None
    if args.simulate is not None:
        simulation = Simulation(args.simulate, cfg.train.epochs, args.simulate_adapters)
    driver = Driver(cfg, simulation=simulation)
    try:
        with reporting(driver, cfg, args):
            manifest = driver.run()
    except stop.Stopped:
        print(f"hql-ray: stopped by SIGTERM; finished nodes are kept in {driver.run_dir}, and the nodes in flight "
              "continue from their latest checkpoint: re-run the same command with --resume", file=sys.stderr)
        return stop.EXIT_CODE
    failed = [n for n, v in manifest.nodes.items() if v.status not in ("done", "skipped")]
    run_dir = driver.run_dir
    if failed:
        print(f"{len(failed)} node(s) not done: {', '.join(failed)}. Finished nodes are kept in {run_dir}; "
              f"fix the problem and re-run the same command with --resume.", file=sys.stderr)
        return 1
    if not simulation:
        print(f"done: {run_dir}/results.md, adapters in {run_dir}/final/")
    return 0


@contextmanager
def reporting(driver, cfg, args: argparse.Namespace):
    """The driver's events to the terminal (the live tree, plain lines with --plain, nothing with -q) and, as
    plain lines, to the run folder's train.log with the log records; -q leaves only errors on the terminal."""
    from hql_ray.outputs.progress import PlainReporter, make_reporter
    from hql_ray.outputs.run_files import RunLog

    run_log = RunLog(driver.run_dir)
    reporters = [PlainReporter(cfg, stream=run_log, tree=driver.tree)]
    if not args.quiet:
        reporters.append(make_reporter(cfg, plain=args.plain, tree=driver.tree))

    def event(e) -> None:
        for reporter in reporters:
            reporter.event(e)

    driver.on_event = event
    consoles = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)
                and getattr(h, "stream", None) in (sys.stderr, sys.stdout)]
    levels = [h.level for h in consoles]
    if args.quiet:
        for handler in consoles:
            handler.setLevel(logging.ERROR)
    try:
        with ExitStack() as stack:
            stack.enter_context(run_log)
            for reporter in reporters:
                stack.enter_context(reporter)
            yield
    finally:
        for handler, level in zip(consoles, levels):
            handler.setLevel(level)
