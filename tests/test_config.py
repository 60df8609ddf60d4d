"""Config: defaults are the paper's, precedence file < flags < overrides, errors name the key."""

from __future__ import annotations

import pytest

from hql_ray.cli import build_parser
from hql_ray.commands.train import flags_to_dict, resolve_config
from hql_ray.settings.config import Config, apply_override, make_config
from hql_ray.settings.errors import ConfigError


def test_defaults_are_the_papers():
    cfg = Config().validate()
    assert cfg.model.base == "google/mt5-large"
    assert cfg.model.mode == "qlora" and cfg.model.handoff == "stack"
    assert cfg.model.lora.r == 256 and cfg.model.lora.lora_alpha == 256 and cfg.model.lora.use_rslora
    assert cfg.model.lora.dropout == 0.05
    assert cfg.model.lora.target_modules == ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]
    assert cfg.train.learning_rate == 5e-5 and cfg.train.batch_size == 8 and cfg.train.warmup_steps == 0
    assert cfg.data.max_train_per_corpus == 31000 and cfg.data.max_source_length is None
    assert cfg.eval.max_new_tokens == 128


def test_round_trip_through_plain_dict():
    cfg = make_config(overrides=["model.lora.r=8", "train.epochs=2"])
    again = Config.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.model.lora.r == 8 and again.train.epochs == 2.0


def test_precedence_file_flags_overrides(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("train:\n  batch_size: 4\n  learning_rate: 1.0e-4\nmodel:\n  base: tiny\n")
    cfg = make_config(path, {"train": {"batch_size": 16}}, ["train.learning_rate=2e-4"])
    assert cfg.train.batch_size == 16
    assert cfg.train.learning_rate == 2e-4
    assert cfg.model.base == "tiny"


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  learnin_rate: 1\n")
    with pytest.raises(ConfigError) as err:
        make_config(path)
    assert "bad.yaml" in str(err.value) and "train.learnin_rate" in str(err.value)


def test_bad_yaml_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  batch_size: 4\n   oops: [\n")
    with pytest.raises(ConfigError) as err:
        make_config(path)
    assert "broken.yaml:" in str(err.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.mode=int8", "model.mode must be one of qlora, lora, fft"),
        ("model.handoff=graft", "model.handoff must be one of stack, merge, continue"),
        ("train.batch_size=0", "train.batch_size must be >= 1"),
        ("train.batch_size=abc", "train.batch_size must be an integer"),
        ("train.epochs=-1", "train.epochs (-le) must be > 0"),
        ("train.optimizer=adam", "train.optimizer must be one of adafactor_foreach, adafactor_hf"),
        ("train.chunked_loss=-1", "train.chunked_loss must be >= 0"),
        ("nosection.key=1", "unknown key 'nosection'"),
        ("train", "is not of the form section.key=value"),
    ],
)
def test_bad_values(override, message):
    with pytest.raises(ConfigError) as err:
        make_config(overrides=[override])
    assert message in str(err.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found"):
        make_config("nope/missing.yaml")


def test_override_parses_yaml_values():
    data: dict = {}
    apply_override(data, "tree.levels=[level0, language]")
    apply_override(data, "run.storage_path=null")
    assert data == {"tree": {"levels": ["level0", "language"]}, "run": {"storage_path": None}}


def parse_train(argv):
    return build_parser().parse_args(["train", *argv])


def test_original_flags_with_commas_and_the_originals_meanings():
    # The seed README's spelling: -ln "level0", "level1", "level2", "language" reaches us with commas.
    # -ts, -sv and -ge mean what the original's dest names say: test_size (the validation budget),
    # skip_values (nodes not trained), global_evaluations (a JSON path).
    args = parse_train(
        ["-bm", "google/mt5-large", "-ln", "level0,", "level1,", "level2,", "language", "-le", "1",
         "-lf", "language_files/12langs_pthql.csv", "-sn", "12langs_pthql", "-tm", "qlora",
         "-ls", "64", "-bs", "4", "-ts", "1000", "-ge", "global_evaluations.json", "-sv", "Indo_European", "Germanic"]
    )
    cfg = resolve_config(args)
    assert cfg.tree.levels == ["level0", "level1", "level2", "language"]
    assert cfg.model.base == "google/mt5-large" and cfg.model.mode == "qlora"
    assert cfg.run_name == "12langs_pthql"
    assert cfg.model.lora.r == 64 and cfg.model.lora.lora_alpha == 64
    assert cfg.train.batch_size == 4
    assert cfg.data.validation_size == 1000 and cfg.data.validation == "first"
    assert cfg.tree.skip == ["Indo_European", "Germanic"]
    assert cfg.eval.lid_baseline == "global_evaluations.json" and cfg.eval.generate is True
    assert cfg.data.max_train_per_corpus == 31000  # untouched by -ts


def test_our_long_flags():
    cfg = resolve_config(parse_train(["--max-train-per-corpus", "500", "--validation", "sample", "--evaluate", "false",
                                      "--test-sets", "flores", "amr3", "--corpus", "amr3"]))
    assert cfg.data.max_train_per_corpus == 500 and cfg.data.validation == "sample"
    assert cfg.eval.generate is False and cfg.eval.test_sets == ["flores", "amr3"] and cfg.data.corpora == ["amr3"]


def test_skip_values_then_overrides():
    """-sv takes any number of values; key=value overrides typed after it are still overrides."""
    cfg = resolve_config(parse_train(["-sv", "Germanic", "train.epochs=2"]))
    assert cfg.tree.skip == ["Germanic"] and cfg.train.epochs == 2
    assert resolve_config(parse_train(["-sv", "-le", "2"])).tree.skip == []


@pytest.mark.parametrize("argv, problem", [
    (["-bs", "3"], "invalid choice: 3 (choose from 1, 2, 4, 8, 16, 32)"),
    (["-ts", "many"], "invalid int value: 'many'"),
    (["--validation", "random"], "invalid choice: 'random'"),
    (["--max-train-per-corpus", "all"], "--max-train-per-corpus: 'all' is not a number or null"),
])
def test_original_flag_values_are_checked(argv, problem, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_train(argv)
    assert exc.value.code == 2 and problem in capsys.readouterr().err


def test_max_train_per_corpus_null_restores_no_cap():
    """The documented way back to the original train.py (no cap) parses, as a flag and as an override."""
    assert resolve_config(parse_train(["--max-train-per-corpus", "null"])).data.max_train_per_corpus is None
    assert resolve_config(parse_train(["--max-train-per-corpus", "None"])).data.max_train_per_corpus is None
    assert resolve_config(parse_train(["--max-train-per-corpus", "500"])).data.max_train_per_corpus == 500
    assert resolve_config(parse_train(["-le", "2"])).data.max_train_per_corpus == 31000  # the default
    assert make_config(overrides=["data.max_train_per_corpus=null"]).data.max_train_per_corpus is None


def test_test_sets_are_any_corpus_name():
    """--test-sets takes any corpus folder's name (checked against the data folder before Ray starts);
    names that cannot be folder names, a repeated name, or none at all are refused at once."""
    assert resolve_config(parse_train(["--test-sets", "qald9", "flores"])).eval.test_sets == ["qald9", "flores"]
    assert resolve_config(parse_train(["-le", "2"])).eval.test_sets is None  # left to the data
    for bad, problem in (("[a/b]", "'a/b' is not a test set name"), ("[flores, flores]", "twice"),
                         ("[]", "eval.test_sets is empty")):
        with pytest.raises(ConfigError) as err:
            make_config(overrides=[f"eval.test_sets={bad}"])
        assert problem in err.value.problem


def test_old_key_max_train_per_language_still_read():
    cfg = make_config(overrides=["data.max_train_per_language=7"])
    assert cfg.data.max_train_per_corpus == 7
    with pytest.raises(ConfigError):
        make_config(overrides=["data.validation_size=0"])


def test_run_name_defaults_to_tree_stem():
    cfg = resolve_config(parse_train(["-lf", "language_files/ast.csv", "-ln", "language"]))
    assert cfg.run_name == "ast"


def test_no_flags_runs_the_demo_config():
    cfg = resolve_config(parse_train([]))
    assert cfg.model.base == "tiny-pretrained" and cfg.data.dir == "data/sample" and cfg.run_name == "demo"


def test_bad_flag_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_train(["-tm", "int4"])
    assert exc.value.code == 2
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_flags_only_include_given_values():
    assert flags_to_dict(parse_train(["--num-gpus", "2"])) == {"resources": {"num_gpus": 2}}
