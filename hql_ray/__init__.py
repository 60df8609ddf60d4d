"""hql-ray: hierarchical QLoRA (HQL) AMR-to-text training over a language tree, on Ray.

The package is in layers, one sub-package each, bottom up; a module imports only from its own layer or
those below it (`tests/test_layout.py` reads the folders and keeps it so):

1. `settings`: errors, the typed records that cross modules and Ray, the config (with its `tune:`
   search space), the language tree.
2. `data`: AMR reading, corpus layouts, prompts and the tokenization cache, batches, the sample.
3. `scoring`: metrics as the paper names them; a node's generation and scoring on its test sets.
4. `training`: one node without Ray: base model, hand-off, the node's recipe, optimizer, loss, tracking.
5. `outputs`: the manifest, score tables, exports and model cards, reports, plots, the terminal view,
   inference from a finished run.
6. `orchestration`: Ray. The run model shared with `--dry-run`, the driver's walk, launches (Ray Train,
   warm workers, Tune trials), the adapter keeper, the cluster. Ray is imported only here and above.
7. `serving` and `prep`: Ray Serve for finished runs; data preparation on Ray Data (never in a run).
8. `commands` and `cli`: one thin module per subcommand.
"""

__version__ = "0.1.0"

# The layer folders, bottom up (the docstring above says what each holds).
LAYERS = ("settings", "data", "scoring", "training", "outputs", "orchestration", ("serving", "prep"), "commands")
