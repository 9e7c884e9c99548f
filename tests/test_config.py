from pathlib import Path

import pytest
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.core.config import ConfigError, load_config

runner = CliRunner()


def error_of(path: Path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "c.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_yaml_types_are_coerced_by_the_schema(tmp_path):
    # PyYAML reads 1e-3 as a string; the schema makes it a float.
    cfg = load_config(write(tmp_path, "optim:\n  lr: 1e-3\n  betas: ['0.9', 0.999]\ntrain:\n  steps: '50'\n"))
    assert cfg.optim.lr == 1e-3 and cfg.optim.betas == (0.9, 0.999) and cfg.train.steps == 50


def test_defaults_fill_what_the_user_leaves_out(tmp_path):
    cfg = load_config(write(tmp_path, "model:\n  norm: pre\n"))
    assert cfg.model.norm == "pre" and cfg.optim.name == "adam" and cfg.schedule.warmup_steps == 0


@pytest.mark.parametrize("text, expected", [
    ("optim:\n  lr: -1\n", "c.yaml: optim.lr: must be > 0.0, got -1"),
    ("optim:\n  lr: on\n", "c.yaml: optim.lr: must be a number, got true"),
    ("model:\n  norm: on\n",
     "c.yaml: model.norm: must be one of 'post', 'pre', 'sandwich', 'deepnorm', 'admin', 'mix', "
     "'reordered', 'peri_ln', 'lns', got true"),
    ("optim:\n  lrr: 1\n", "c.yaml: optim.lrr: unknown key (did you mean 'lr'?)"),
    ("modle:\n  n_layers: 2\n", "c.yaml: modle: unknown key (did you mean 'model'?)"),
    ("train:\n  steps: 1.5\n", "c.yaml: train.steps: must be an integer, got 1.5"),
    ("train:\n  steps: 0\n", "c.yaml: train.steps: must be >= 1, got 0"),
    ("optim:\n  lr: .nan\n", "c.yaml: optim.lr: must be a finite number"),
    ("model:\n  d_model: 30\n  n_heads: 4\n", "c.yaml: model.n_heads: must divide model.d_model (30)"),
    ("train:\n  seq_len: 512\n", "c.yaml: train.seq_len: must be <= model.max_seq_len (256)"),
    ("data:\n  source: text\n", "c.yaml: data.path: required when data.source is text"),
    ("run:\n  name: ../escape\n", "c.yaml: run.name: must be a plain folder name"),
    ("model: 3\n", "c.yaml: model: must be a mapping of keys, got 3"),
    ("optim:\n  lr: [1\n", "c.yaml: bad YAML at line"),
    ("", "c.yaml: the config is empty"),
    ("- 1\n- 2\n", "c.yaml: the top level must be a mapping"),
    (b"\xff\xfe\x00bad", "c.yaml: not UTF-8 text"),
])
def test_bad_config_is_one_line_naming_file_and_key(tmp_path, text, expected):
    message = error_of(write(tmp_path, text)).replace(f"{tmp_path}/", "")
    assert message.startswith(expected) and "\n" not in message


def test_missing_file(tmp_path):
    assert error_of(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: no such file"


def test_overrides_are_typed_and_validated_like_the_file(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 1.0e-3\n")
    cfg = load_config(path, ["optim.lr=3e-3", "model.norm=pre", "optim.clip_grad_norm=null",
                             "optim.betas=[0.9, 0.999]"])
    assert cfg.optim.lr == 3e-3 and cfg.model.norm == "pre" and cfg.optim.betas == (0.9, 0.999)
    assert error_of(path, "optim.lr=-2") == "--set optim.lr: must be > 0.0, got -2"
    assert error_of(path, "optim.lrr=1") == "--set optim.lrr: unknown key (did you mean 'lr'?)"
    assert error_of(path, "optim.lr") == "--set optim.lr: expected KEY=VALUE, e.g. optim.lr=3e-3"
    assert error_of(path, "optim.lr.x=1").startswith("--set optim.lr.x: optim.lr is not a section")


def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, write_config):
    path = write_config(optim={"lr": -1})
    result = runner.invoke(app, ["train", str(path), "--quiet"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {path}: optim.lr: must be > 0.0, got -1"]
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_cli_data_file_missing_names_the_key(tmp_path, write_config):
    path = write_config(data={"source": "text", "path": str(tmp_path / "none.txt")})
    result = runner.invoke(app, ["train", str(path), "--quiet"])
    assert result.exit_code == 2 and "data.path: no such file" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_cli_data_shorter_than_one_sequence(tmp_path, write_config):
    (tmp_path / "short.txt").write_text("tiny")
    path = write_config(data={"source": "text", "path": str(tmp_path / "short.txt")})
    result = runner.invoke(app, ["train", str(path), "--quiet"])
    assert result.exit_code == 2 and "fewer than one sequence" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_config_extends_base_files_merged_in_order_and_errors_name_the_file_that_set_the_key(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "model.yaml").write_text("model: {n_layers: 2, d_model: 30, n_heads: 4}\n")
    (tmp_path / "base" / "optim.yaml").write_text("extends: model.yaml\noptim: {lr: 1e-2, name: adamw}\n")
    top = tmp_path / "exp.yaml"
    top.write_text("extends: [base/optim.yaml]\nmodel: {d_model: 32}\noptim: {lr: 3e-3}\n")
    cfg = load_config(top)
    assert (cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads) == (2, 32, 4)  # merged key by key
    assert (cfg.optim.lr, cfg.optim.name) == (3e-3, "adamw")  # the file over its base
    top.write_text("extends: base/optim.yaml\nmodel: {}\n")  # an empty mapping keeps the base's keys
    assert load_config(top, ["model.d_model=32"]).model.n_layers == 2
    top.write_text("extends: [base/optim.yaml]\noptim: {lr: 3e-3}\n")
    assert error_of(top) == \
        f"{tmp_path}/base/model.yaml: model.n_heads: must divide model.d_model (30), got 4"
    assert error_of(top, "model.d_model=32", "optim.lr=-1") == "--set optim.lr: must be > 0.0, got -1"
    (tmp_path / "base" / "model.yaml").write_text("extends: ../exp.yaml\n")
    assert "extends: a cycle" in error_of(top)
    top.write_text("extends: {a: 1}\n")
    assert error_of(top) == f"{top}: extends: must be a config file or a list of them"
    top.write_text("extends: nothere.yaml\n")
    assert error_of(top) == f"{tmp_path}/nothere.yaml: no such file"


def test_a_data_fault_names_the_set_that_caused_it(tmp_path, write_config):
    import numpy as np

    from lnexp.run.train import prepare

    path = write_config()
    cfg = load_config(path, ["data.source=text", "data.path=nofile.txt"])
    with pytest.raises(ConfigError) as info:
        prepare(cfg, str(path))
    assert str(info.value) == "--set data.path: no such file: nofile.txt"
    np.arange(300, dtype=np.uint16).tofile(tmp_path / "ids.bin")
    ids = str(tmp_path / "ids.bin")
    tokens = write_config("tok", data={"source": "tokens", "path": ids, "vocab_size": 512})
    cfg = load_config(tokens, ["data.vocab_size=100"])
    with pytest.raises(ConfigError) as info:
        prepare(cfg, str(tokens))
    assert str(info.value) == (f"--set data.vocab_size=100: data.path: {tmp_path / 'ids.bin'} holds id 299, "
                               "outside data.vocab_size (100)")
    # the same fault from the file is the file's
    with pytest.raises(ConfigError) as info:
        prepare(load_config(write_config("tok2", data={"source": "tokens", "path": ids, "vocab_size": 100})),
                "tok2.yaml")
    assert str(info.value).startswith(f"{tmp_path / 'tok2.yaml'}: data.path: ")


def test_print_config_and_bare_overrides(tmp_path, write_config):
    import yaml

    path = write_config()
    result = runner.invoke(app, ["train", str(path), "optim.lr=0.02", "--set", "model.norm=pre",
                                 "--print-config"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    assert printed["optim"]["lr"] == 0.02 and printed["model"]["norm"] == "pre"
    assert printed == load_config(path, ["optim.lr=0.02", "model.norm=pre"]).to_dict()
    assert not (tmp_path / "runs").exists()  # nothing trained
    bad = runner.invoke(app, ["train", str(path), "optim.lr=-1", "--quiet"])
    assert bad.exit_code == 2 and bad.stderr.strip() == "error: --set optim.lr: must be > 0.0, got -1"
    bad = runner.invoke(app, ["train", str(path), "other.yaml"])
    assert bad.exit_code == 2 and "other.yaml: expected KEY=VALUE after CONFIG" in bad.stderr
    assert not (tmp_path / "runs").exists()
