"""hql-ray: hierarchical QLoRA (HQL) AMR-to-text training over a language tree, on Ray.

The layers, bottom up; a module imports only from its own layer or those below it:

1. Settings and inputs: `errors`, `records` (the typed records between modules), `config` (every
   setting, typed; `search_space` is its `tune:` section), `tree` (the language tree), `amr`,
   `corpus` (files and layouts).
2. Data: `dataset` (prompts, tokenization cache), `batching` (length-grouped batches), `tensorfile`
   (safetensors written one tensor at a time).
3. Training one node, no Ray: `modeling` (base model, 4-bit), `handoff` (adapters parent -> child,
   persistence), `node` (the node's loop), `context` (what the loop needs from its runner),
   `adafactor`, `losses`, `evaluation`, `metrics`, `flops`, `tracking` (TensorBoard, W&B, MLflow),
   `tiny_pretrain` (the demo's base), `memory` (GPU memory from shapes), `reevaluate` (a trained node
   scored again).
4. Outputs: `manifest` (the run record, written and read), `results` (score tables), `export` +
   `export_modes` (what people ship), `model_card`, `report` + `plots`, `progress` (terminal view),
   `generate` (inference from a run).
5. Orchestration on Ray: `driver` (walks the tree), `cluster` (Ray start, slots), `scheduling`
   (workers per node), `launch` (a node as a Ray Train run: `NodeJob`), `ray_worker` (inside the
   workers), `tune` (a node's trials), `board` + `watch` + `placement` (the runs' life, waits, leaks),
   `keeper` (adapters saved and held on the head, never in the driver), `warm` (long-lived workers that
   run single-worker nodes on a laptop's CPU slots), `preflight`, `simulate`, `plan` (`train --dry-run`).
6. Data preparation and checks: `datacheck` (`hql-ray data`), `translate` and `parse_amr` (on Ray Data,
   with their helpers), `sample` (the bundled corpus's generator, not used by a run).
7. `cli` and `commands/`: one thin module per subcommand.
"""

__version__ = "0.1.0"
