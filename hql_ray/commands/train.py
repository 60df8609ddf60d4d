"""`hql-ray train`: the original's flags, `--config FILE`, and `section.key=value` overrides.

    hql-ray train --config configs/demo.yaml
    hql-ray train -bm google/mt5-large -ln "level0", "level1", "level2", "language" -le 1 \\
        -lf language_files/12langs_pthql.csv -sn 12langs_pthql -tm qlora
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hql_ray.config import HANDOFFS, MODES, make_config
from hql_ray.errors import ConfigError
from hql_ray.tree import parse_level_args

DEMO_CONFIG = "configs/demo.yaml"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train every node of a language tree (the main job)",
        description="Train one model per language by walking a language tree (hierarchical QLoRA) on Ray. "
        "With no --config and no flags it runs the demo (configs/demo.yaml).",
    )
    p.add_argument("--config", help="YAML config (see configs/); flags and overrides win over it")
    orig = p.add_argument_group("the original train.py's flags")
    orig.add_argument("-bm", "--base-model", help="hub name, local dir, or 'tiny' (built-in random tiny mT5)")
    orig.add_argument("-tm", "--training-mode", choices=MODES, help="qlora (4-bit base + LoRA), lora, or fft")
    orig.add_argument("-ln", "--level-names", nargs="+", metavar="LEVEL",
                      help='tree columns forming the curriculum, e.g. -ln level0 level1 level2 language '
                           '(the original\'s "level0", "level1", ... spelling works too)')
    orig.add_argument("-le", "--level-epochs", type=float, help="epochs per level")
    orig.add_argument("-lf", "--language-file", help="tree CSV (language_files/...)")
    orig.add_argument("-sn", "--save-name", help="run name: results go to OUTPUT_DIR/SAVE_NAME")
    orig.add_argument("-ls", "--lora-size", type=int, help="LoRA rank r (alpha follows r unless model.lora.alpha is set)")
    orig.add_argument("-bs", "--batch-size", type=int, help="batch size per worker")
    orig.add_argument("-ts", "--train-size", type=int, help="max training examples per language (the paper: 31000)")
    orig.add_argument("-sv", "--validation-size", type=int, help="validation examples sampled per language")
    orig.add_argument("-ge", "--generate-eval", nargs="?", const="true", choices=["true", "false"],
                      help="generate on the test sets and score them after each node (default: true)")
    ours = p.add_argument_group("hql-ray")
    ours.add_argument("--data-dir", help="corpus folder (layout: CORPUS/CODE/CORPUS_CODE_SPLIT.tsv)")
    ours.add_argument("--corpus", nargs="+", help="use only these corpora of the data dir")
    ours.add_argument("--output-dir", help="where runs are written (default: runs)")
    ours.add_argument("--storage-path", help="Ray Train storage: local dir, NFS path or s3:// URI")
    ours.add_argument("--num-gpus", type=int, help="GPU slots to use (default: all the cluster has; 0 = CPU)")
    ours.add_argument("--address", help="Ray cluster to join ('auto' = the running one); default: start a local Ray")
    ours.add_argument("--handoff", choices=HANDOFFS, help="parent -> child: stack (default), merge, continue")
    ours.add_argument("--direction", choices=["amr2text", "text2amr"], help="generation (default) or parsing")
    ours.add_argument("--resume", action="store_true", help="continue a run: finished nodes are kept, the rest retrained")
    ours.add_argument("--simulate", type=float, metavar="SEC_PER_EXAMPLE",
                      help="dry run of the schedule: nodes sleep SEC_PER_EXAMPLE x examples / workers, no model")
    ours.add_argument("--plain", action="store_true", help="plain progress lines even on a terminal")
    ours.add_argument("-v", "--verbose", action="store_true", help="show Ray and worker logs")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. train.learning_rate=1e-4 model.lora.r=64")
    p.set_defaults(run=run)


def flags_to_dict(args: argparse.Namespace) -> dict:
    """Only the flags the user gave, as a nested config dict."""
    mapping = {
        "base_model": ("model", "base"),
        "training_mode": ("model", "mode"),
        "level_epochs": ("train", "epochs"),
        "language_file": ("tree", "file"),
        "save_name": ("run", "name"),
        "batch_size": ("train", "batch_size"),
        "train_size": ("data", "max_train_per_language"),
        "validation_size": ("data", "max_validation_per_language"),
        "data_dir": ("data", "dir"),
        "corpus": ("data", "corpora"),
        "output_dir": ("run", "output_dir"),
        "storage_path": ("run", "storage_path"),
        "num_gpus": ("resources", "num_gpus"),
        "address": ("resources", "address"),
        "handoff": ("model", "handoff"),
        "direction": ("data", "direction"),
    }
    out: dict = {}
    for attr, (section, key) in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.setdefault(section, {})[key] = value
    if args.level_names:
        out.setdefault("tree", {})["levels"] = parse_level_args(args.level_names)
    if args.lora_size is not None:
        out.setdefault("model", {}).setdefault("lora", {})["r"] = args.lora_size
    if args.generate_eval is not None:
        out.setdefault("eval", {})["generate"] = args.generate_eval == "true"
    if args.resume:
        out.setdefault("run", {})["resume"] = True
    return out


def resolve_config(args: argparse.Namespace):
    flags = flags_to_dict(args)
    config_file = args.config
    if config_file is None and not flags and not args.overrides:
        config_file = DEMO_CONFIG
        if not Path(config_file).is_file():
            raise ConfigError(f"no --config given and the demo config {DEMO_CONFIG} is not here; "
                              "run from the hql-ray checkout or pass --config")
        print(f"hql-ray train: no config given, running the demo ({DEMO_CONFIG})", file=sys.stderr)
    return make_config(config_file, flags, args.overrides)


def run(args: argparse.Namespace) -> int:
    from hql_ray.driver import Driver
    from hql_ray.progress import make_reporter

    cfg = resolve_config(args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    simulate = {"seconds_per_example": args.simulate, "epochs": cfg.train.epochs} if args.simulate else None
    driver = Driver(cfg, simulate=simulate)
    reporter = make_reporter(cfg, plain=args.plain, tree=driver.tree)
    driver.on_event = reporter.event
    with reporter:
        manifest = driver.run()
    failed = [n for n, v in manifest.nodes.items() if v.status != "done"]
    run_dir = driver.run_dir
    if failed:
        print(f"{len(failed)} node(s) not done: {', '.join(failed)}. Finished nodes are kept in {run_dir}; "
              f"fix the problem and re-run the same command with --resume.", file=sys.stderr)
        return 1
    if not simulate:
        print(f"done: {run_dir}/results.md, adapters in {run_dir}/final/")
    return 0
