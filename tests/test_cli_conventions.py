"""CLI conventions: bare `hql-ray` lists the commands, --version, `train --print-config` (read back by
--config), `train --dry-run` (every check without Ray, and the plan), and an existing run folder refused
before anything starts. Fast: no Ray, no training."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from hql_ray.orchestration import plan, preflight
from hql_ray.orchestration.run_model import RunModel
from hql_ray.cli import build_parser, main
from hql_ray.commands import train as train_cmd
from hql_ray.commands.train import resolve_config
from hql_ray.settings.config import make_config
from hql_ray.outputs.manifest import Manifest
from hql_ray.settings.tree import load_tree

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _in_checkout(monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs name language_files/... and data/sample relative to the checkout


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    """One verdict cache for the module's dry runs: the sample is parsed once."""
    return f"data.cache_dir={tmp_path_factory.mktemp('cache')}"


def test_bare_hql_ray_lists_the_commands_and_trains_nothing(monkeypatch, capsys):
    monkeypatch.setattr(train_cmd, "run", lambda args: pytest.fail("bare hql-ray must not train"))
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("train", "tree", "data", "report", "generate", "push", "translate", "parse"):
        assert command in out
    assert "hql-ray train" in out  # where the demo went


def test_version_is_the_installed_packages(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"hql-ray {version('hql-ray')}"


@pytest.mark.parametrize("argv", [
    [],  # the demo's config
    ["--config", "configs/tune_demo.yaml", "-le", "2", "-ls", "8", "-sv", "Germanic", "train.learning_rate=1e-4",
     "data.max_source_length=null", "eval.test_sets=[flores, amr3]"],
    ["-bm", "tiny", "--data-dir", "data/sample", "--num-gpus", "0", "run.name=x", "tracking.wandb=true"],
])
def test_print_config_is_read_back_to_the_same_config(argv, tmp_path, capsys):
    assert main(["train", *argv, "--print-config"]) == 0
    printed = capsys.readouterr().out
    path = tmp_path / "resolved.yaml"
    path.write_text(printed, encoding="utf-8")
    resolved = resolve_config(build_parser().parse_args(["train", *argv]))
    assert make_config(path).to_dict() == resolved.to_dict()
    if "-le" in argv:  # the flags and overrides are in it, over the file's values
        again = make_config(path)
        assert (again.train.epochs, again.model.lora.r, again.train.learning_rate) == (2.0, 8, 1e-4)
        assert again.tree.skip == ["Germanic"] and again.tune == make_config("configs/tune_demo.yaml").tune


def _dry(argv, capsys) -> tuple[int, str]:
    rc = main(["train", "--dry-run", *argv])
    return rc, capsys.readouterr().out


def test_dry_run_plans_the_demo(tmp_path, capsys, cache):
    argv = ["--config", "configs/demo.yaml", f"run.output_dir={tmp_path}", cache]
    rc, out = _dry(argv, capsys)
    assert rc == 0, out
    assert "2 CPU slot(s)" in out and "nothing started (no Ray)" in out
    cfg = make_config("configs/demo.yaml", overrides=argv[2:])
    tree = load_tree(cfg.tree.file, cfg.tree.levels)
    shown = [line.split()[0] for line in out.splitlines()[3:3 + len(tree.nodes)]]
    assert shown == list(tree.nodes)  # one row per node, parents first
    sizes = preflight.check(cfg, tree)
    nodes = {n.id: n for n in plan.make_plan(cfg).nodes}
    root, leaf = nodes["level0.Indo_European"], nodes["language.German"]
    assert (root.examples, root.steps, root.workers) == (sizes[root.id], -(-sizes[root.id] // 8), 2)
    assert (leaf.examples, leaf.steps, leaf.workers) == (sizes[leaf.id], -(-sizes[leaf.id] // 8), 1)
    assert root.languages == [lang.code for lang in tree.languages]
    # the tiny mT5's r=16 LoRA on every linear layer, as a node's adapter holds it (simulate.lora_shapes)
    from hql_ray.training.simulate import lora_shapes

    shapes = lora_shapes("tiny", tuple((k, tuple(v) if isinstance(v, list) else v)
                                       for k, v in sorted(cfg.model.lora.to_state().items())))
    params = sum(a * b for a, b in shapes.values())
    assert root.adapter == {"params": params, "bytes": 4 * params}
    if plan.memory_estimator() is not None:  # hql_ray.training.memory: more frozen ancestors, more memory
        assert 0 < root.memory["total"] < leaf.memory["total"]
        assert "GPU memory" in out.splitlines()[2]


def test_dry_run_of_pthql_reports_missing_data_and_still_plans(capsys):
    rc, out = _dry(["--config", "configs/pthql.yaml", "--num-gpus", "4"], capsys)
    assert rc == 2
    assert "problem: data: no corpus in the data directory" in out  # the folder named
    assert "4 GPU slot(s)" in out
    assert "level0.Indo_European" in out and "language.Haitian_Creole" in out
    assert "292.55M params, 1.17 GB" in out  # mt5-large's r=256 LoRA: 292,552,704 fp32 parameters


def test_dry_run_of_pthql_starts_no_ray(tmp_path, cache):
    """In a fresh interpreter: the plan of the real config (on the sample) never imports Ray."""
    code = ("import sys; from hql_ray.cli import main; "
            "rc = main(['train', '--dry-run', '--config', 'configs/pthql.yaml', 'data.dir=data/sample', "
            "'eval.test_sets=[flores]', 'run.output_dir=' + sys.argv[1], sys.argv[2], '--slots', '8']); "
            "print('RAY', 'ray' in sys.modules, rc)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), cache], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert "RAY False 0" in out.stdout, out.stdout + out.stderr
    assert "8 GPU slot(s)" in out.stdout


def _existing_run(tmp_path, cache) -> list[str]:
    cfg = make_config("configs/demo.yaml", overrides=[f"run.output_dir={tmp_path}"])
    manifest = Manifest.create(cfg.run_dir / "manifest.json", load_tree(cfg.tree.file, cfg.tree.levels), cfg.to_dict(),
                               cfg.run_name)
    manifest.set_run_status("running")  # a run that started (a start that failed before any node does not block)
    return ["--config", "configs/demo.yaml", f"run.output_dir={tmp_path}", cache]


def test_an_existing_run_folder_is_refused_before_anything_starts(tmp_path, monkeypatch, capsys, cache):
    argv = _existing_run(tmp_path, cache)
    rc, out = _dry(argv, capsys)
    assert rc == 2 and "problem: run folder" in out and "add --resume" in out
    rc, out = _dry([*argv, "--resume"], capsys)  # --resume: allowed
    assert "problem: run folder" not in out
    # The real run: refused before the data check (which comes before the base's build and Ray).
    monkeypatch.setattr(preflight, "check", lambda *a, **k: pytest.fail("the data check ran first"))
    assert main(["train", *argv]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_schedule_and_steps_follow_the_driver():
    cfg = make_config("configs/demo.yaml")
    tree = load_tree(cfg.tree.file, cfg.tree.levels)
    sizes = {n: 1000 for n in tree.nodes}
    model = RunModel(cfg, tree)  # what the driver walks with
    workers = model.replay(sizes, 4, finished=set())
    assert workers["level0.Indo_European"] == [4]  # alone: the whole cluster
    assert workers["level1.Germanic"] == [2] and workers["level1.Romance"] == [2]
    assert set(workers) == set(tree.nodes)
    assert model.batch_plan(1000, 4).total_steps == 125  # a global batch of 8 whatever the workers
    cfg.train.batch_per_worker = True
    assert model.batch_plan(1000, 4).total_steps == 32
    cfg.train.max_steps = 10
    assert model.batch_plan(1000, 4).total_steps == 10
    cfg.train.batch_tokens = 4096  # steps follow token counts the dry run does not have: unknown, not guessed
    assert model.batch_plan(1000, 4).total_steps is None
    assert model.frozen_ranks("language.German") == [16, 16, 16]


def test_unknown_base_says_unknown(tmp_path, capsys, cache):
    rc, out = _dry(["--config", "configs/demo.yaml", f"run.output_dir={tmp_path}", cache,
                    "model.base=nobody/no-such-model"], capsys)
    assert rc == 0 and "adapter size unknown" in out and out.splitlines()[3].endswith("unknown")


def test_dry_run_and_real_start_agree_on_a_skip_that_cannot_be_honoured(tmp_path, monkeypatch, capsys, cache):
    """-sv names nodes whose children train, on a new run name: nothing to reuse. The dry run says so, the real
    start refuses with the same words before Ray starts and leaves nothing that blocks the corrected command."""
    argv = ["--config", "configs/demo.yaml", f"run.output_dir={tmp_path}", cache, "-sv", "Indo_European", "Germanic"]
    rc, out = _dry(argv, capsys)
    problem = next(line for line in out.splitlines() if line.startswith("problem: "))
    assert rc == 2 and "tree.skip (-sv): node level0.Indo_European is skipped" in problem
    monkeypatch.setattr("hql_ray.orchestration.driver.init_ray", lambda *a, **k: pytest.fail("Ray started"))
    assert main(["train", *argv]) == 2
    assert problem.removeprefix("problem: ") in capsys.readouterr().err
    assert not [p.name for p in (tmp_path / "demo").glob("*")]  # no manifest, config.yaml or train.log
    rc, out = _dry(argv[:4], capsys)  # the corrected command: no problem left
    assert rc == 0 and "0 problem(s)" in out


def test_a_start_that_failed_before_any_node_does_not_block_the_next(tmp_path, cache, capsys):
    cfg = make_config("configs/demo.yaml", overrides=[f"run.output_dir={tmp_path}"])
    Manifest.create(cfg.run_dir / "manifest.json", load_tree(cfg.tree.file, cfg.tree.levels), cfg.to_dict(),
                    cfg.run_name)  # status "starting", every node pending: Ray never came up
    rc, out = _dry(["--config", "configs/demo.yaml", f"run.output_dir={tmp_path}", cache], capsys)
    assert rc == 0 and "problem: run folder" not in out


# ---- one flag vocabulary (issue 26): today's spellings, and the older ones still accepted ------------------------
def parsed(*argv):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("argv, expected", [
    (["-o", "out"], "out"), (["--output", "out"], "out"), (["--output-dir", "out"], "out"),
])
def test_train_writes_where_output_says_in_every_spelling(argv, expected):
    assert resolve_config(parsed("train", *argv)).run.output_dir == expected


def test_levels_corpora_and_languages_read_the_same_in_every_spelling():
    levels = [resolve_config(parsed("train", flag, *value)).tree.levels
              for flag, value in (("-ln", ["level0", "language"]), ("--levels", ["level0,language"]),
                                  ("--level-names", ['"level0",', '"language"']))]
    assert levels == [["level0", "language"]] * 3
    assert resolve_config(parsed("train", "--corpus", "amr3,flores")).data.corpora == ["amr3", "flores"]
    assert resolve_config(parsed("train", "--corpus", "amr3", "flores")).data.corpora == ["amr3", "flores"]
    from hql_ray.commands.flags import words

    for command in ("translate", "parse"):
        first = ["REL", "-o", "x"] if command == "translate" else ["FLORES", "--parser", "p", "-o", "x"]
        assert words(parsed(command, *first, "--langs", "deu_Latn", "ita_Latn").langs) == \
            words(parsed(command, *first, "--langs", "deu_Latn,ita_Latn").langs) == ["deu_Latn", "ita_Latn"]
    assert parsed("report", "r", "--out", "d").output == parsed("report", "r", "-o", "d").output == "d"
    assert parsed("data", "d", "-lf", "t", "--levels", "a,b").levels == ["a,b"]  # read by parse_level_args


@pytest.mark.parametrize("argv, generate", [
    (["--evaluate"], True), (["--no-evaluate"], False), (["--evaluate", "true"], True),
    (["--evaluate", "false"], False), (["--evaluate=false"], False), (["--evaluate", "False"], False),
    ([], True),
])
def test_evaluate_is_an_on_off_switch_and_the_old_true_false_still_works(argv, generate):
    args = parsed("train", *argv, "train.learning_rate=1e-4")
    assert args.overrides == ["train.learning_rate=1e-4"]  # an override after the switch stays an override
    cfg = resolve_config(args)
    assert cfg.eval.generate is generate and cfg.train.learning_rate == 1e-4


def test_a_bad_switch_value_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        parsed("train", "--evaluate", "maybe")
    assert exit_.value.code == 2 and "--evaluate takes true or false" in capsys.readouterr().err


def test_quiet_and_verbose_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        parsed("train", "-q", "-v")
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["train", "--print-config", "-q"]) == 0
    assert capsys.readouterr().err == ""  # not even the "no config given" note


def test_quiet_leaves_errors_on_the_terminal_and_everything_in_train_log(tmp_path, capsys):
    """`reporting` (what train runs under): -q shows no progress and no warning, train.log gets both, and the
    terminal's handler is given back as it was."""
    import logging
    import sys
    from types import SimpleNamespace

    from hql_ray.commands.train import reporting
    from hql_ray.outputs.run_files import LOG_FILE, open_run_files
    from hql_ray.settings.records import NodeStarted, RunFinished

    cfg = make_config("configs/demo.yaml", overrides=[f"run.output_dir={tmp_path}"])
    driver = SimpleNamespace(run_dir=cfg.run_dir, tree=load_tree(cfg.tree.file, cfg.tree.levels), on_event=None)
    console = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(console)
    log = logging.getLogger("hql_ray.test")
    try:
        with reporting(driver, cfg, parsed("train", "-q")):
            log.warning("before the folder is opened")
            assert console.level == logging.ERROR
            open_run_files(cfg, cfg.run_dir)
            driver.on_event(NodeStarted("level0.Indo_European", 2, "ray-train"))
            log.warning("a warning while training")
            log.error("an error")
            driver.on_event(RunFinished([], []))
        assert console.level == logging.NOTSET
    finally:
        root.removeHandler(console)
    err = capsys.readouterr().err
    assert "an error" in err and "warning" not in err and "started" not in err
    text = (cfg.run_dir / LOG_FILE).read_text()
    lines = text.splitlines()
    assert lines[0].startswith("==== ") and "run demo started" in lines[0]
    for expected in ("WARNING hql_ray.test: before the folder is opened", "level0.Indo_European: started on 2 worker(s)",
                     "WARNING hql_ray.test: a warning while training", "ERROR hql_ray.test: an error", "run finished"):
        assert sum(expected in line for line in lines) == 1, (expected, text)


def test_ray_and_transformers_start_quietly_unless_verbose():
    """In a fresh interpreter: init_ray without -v prints none of Ray's start-up lines (its INFO lines, the
    token-auth notice), with -v it does; and train turns transformers' progress bars off without -v."""
    code = ("import sys; from hql_ray.orchestration.cluster import init_ray; from hql_ray.settings.config import "
            "make_config; init_ray(make_config(overrides=['resources.num_gpus=0']), verbose=sys.argv[1] == 'v'); "
            "from hql_ray.commands.train import quiet_libraries; quiet_libraries(sys.argv[1] == 'v'); "
            "from transformers.utils import logging; print('BAR', logging.is_progress_bar_enabled())")
    outputs = {}
    for verbose in ("q", "v"):
        done = subprocess.run([sys.executable, "-c", code, verbose], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        outputs[verbose] = done.stdout + done.stderr
    assert "Started a local Ray instance" not in outputs["q"] and "Token authentication" not in outputs["q"]
    assert "BAR False" in outputs["q"] and "BAR True" in outputs["v"]
    assert "Started a local Ray instance" in outputs["v"]


@pytest.mark.slow  # 50-140 s: the default suite stays under 15 min
def test_a_run_folder_keeps_its_resolved_config_and_its_log(demo_like_run):
    from hql_ray.outputs.manifest import read_manifest

    config = demo_like_run / "config.yaml"
    assert make_config(config).to_dict() == read_manifest(demo_like_run).data["config"]  # --config reads it back
    log = (demo_like_run / "train.log").read_text()
    assert "hql-ray 0.1.0: run demo_like started (config: config.yaml)" in log.splitlines()[0]
    for line in ("level0.Germanic: started on", "language.German: done (", "exported deu_Latn", "run finished"):
        assert line in log
