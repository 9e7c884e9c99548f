"""The command line itself: sub-commands, the one-line errors, the shared option declarations."""

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.cli._groups import with_default
from lnexp.cli._options import (
    DecodeStrategy,
    ExportFormat,
    LauncherKind,
    LauncherOptions,
    Metric,
    Scale,
    Unit,
)

runner = CliRunner()


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


AT_LEAST_1 = "Input should be greater than or equal to 1"


@pytest.mark.parametrize("args,needle", [
    (["generate", "R", "--prompt", "a", "--threads", "0"], f"'--threads': {AT_LEAST_1}"),
    (["decode-stats", "R", "--threads", "0"], f"'--threads': {AT_LEAST_1}"),
    (["translate", "R", "--text", "a", "--threads", "0"], "'--threads'"),
    (["translate", "R", "--eval", "--n", "0"], f"'--n': {AT_LEAST_1}"),
    (["generate", "R", "--prompt", "a", "--threads", "many"], "'--threads'"),
    (["compare", "R", "R", "--metric", "perplexity"], "'perplexity' is not one of 'loss', 'bleu'"),
    (["compare", "R", "R", "--plot", "FIG.gif"], "FIG.gif must end in .png, .svg or .pdf"),
    (["decode-stats", "R", "--plot", "FIG.jpg"], "must end in .png, .svg or .pdf"),
    (["plot", "R", "--format", "gif"], "'gif' is not one of 'png', 'svg', 'pdf'"),
    (["export", "R", "--to", "csv"], "'csv' is not one of 'tensorboard'"),
    (["sweep", "C.yaml", "--jobs", "0"], "'--jobs'"),
    (["sweep", "run", "C.yaml", "--launcher", "pbs"], "'pbs' is not one of 'local', 'slurm'"),
    (["reproduce", "radam", "--scale", "huge"], "'huge' is not one of 'tiny', 'cpu', 'small'"),
    (["reproduce", "run", "nope"], "unknown suite 'nope'"),
    (["train", "--bogus"], "No such option: --bogus"),
    (["trian"], "No such command 'trian'"),
    (["sweep", "status"], "Missing argument 'name'"),
    (["sweep"], "Missing argument 'config'"),
    (["reproduce"], "Missing argument 'suite'"),
])
def test_a_bad_command_line_ends_in_one_line_and_writes_nothing(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(runner.invoke(app, args))
    assert needle in line, line
    assert list(tmp_path.iterdir()) == []


def test_lnexp_alone_prints_the_help_as_a_usage_error():
    result = runner.invoke(app, [])
    assert result.exit_code == 2 and "Commands:" in result.stderr and result.stdout == ""


def test_ctrl_c_in_any_command_ends_in_one_line(monkeypatch, tmp_path):
    from lnexp.report import compare

    def interrupted(directory):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare, "find_runs", interrupted)
    assert one_line_error(runner.invoke(app, ["runs", str(tmp_path)]), 130) == "error: interrupted"


def test_typer_raises_its_public_exception_for_a_bad_command_line():
    """The one handler catches typer.TyperException (public since typer 0.27.2), not a class of the
    click that typer vendors privately: this fails if typer's parser stops raising it."""
    for args in (["--bogus"], ["train", "--bogus"], ["generate", "R", "--prompt", "a", "--threads", "0"]):
        result = runner.invoke(app, args, standalone_mode=False)
        assert isinstance(result.exception, typer.TyperException), (args, result.exception)


def test_sweep_and_reproduce_are_groups_whose_default_command_keeps_the_short_spelling(write_config):
    config = str(write_config())
    short = runner.invoke(app, ["sweep", config, "--grid", "optim.lr=1e-3,2e-3", "--dry-run"])
    spelled = runner.invoke(app, ["sweep", "run", config, "--grid", "optim.lr=1e-3,2e-3", "--dry-run"])
    assert short.exit_code == spelled.exit_code == 0 and short.stdout == spelled.stdout
    assert "optim.lr=2e-3" in short.stdout
    options_first = runner.invoke(app, ["sweep", "--grid", "optim.lr=1e-3,2e-3", "--dry-run", config])
    assert options_first.stdout == short.stdout

    from lnexp.experiments.reproduce import SUITES

    listed = runner.invoke(app, ["reproduce", "list"])
    assert listed.exit_code == 0
    assert [line.split(":")[0] for line in listed.stdout.splitlines()] == list(SUITES)
    for group, commands in (("sweep", ("run", "status")), ("reproduce", ("run", "list"))):
        helped = runner.invoke(app, [group, "--help"])
        assert helped.exit_code == 0
        listed_commands = helped.stdout.split("Commands:")[1]
        assert all(re.search(rf"^  {c} ", listed_commands, re.M) for c in commands), helped.stdout
        assert "--grid" not in helped.stdout and "--scale" not in helped.stdout  # those are run's


def test_a_group_with_a_default_command_takes_another_sub_command_in_a_few_lines(tmp_path):
    group = typer.Typer(cls=with_default("run"))
    seen = []

    @group.command()
    def run(suite: str) -> None:
        seen.append(("run", suite))

    @group.command()
    def report(folder: Path, markdown: bool = False) -> None:
        seen.append(("report", folder.name, markdown))

    runner.invoke(group, ["radam"])
    runner.invoke(group, ["run", "depth"])
    runner.invoke(group, ["report", str(tmp_path / "out"), "--markdown"])
    assert seen == [("run", "radam"), ("run", "depth"), ("report", "out", True)]


def test_sweep_and_reproduce_declare_the_same_launcher_options():
    launcher_options = ["--" + f.replace("_", "-") for f in LauncherOptions.__dataclass_fields__]

    def options(*command: str) -> list[str]:
        helped = runner.invoke(app, [*command, "--help"])
        assert helped.exit_code == 0
        return re.findall(r"^  (--[a-z-]+)", helped.stdout, re.M)

    sweep, reproduce = options("sweep", "run"), options("reproduce", "run")
    for declared in (sweep, reproduce):
        start = declared.index("--launcher")
        assert declared[start:start + len(launcher_options)] == launcher_options
    assert LauncherOptions().load() is None  # nothing given: the local pool
    slurm = LauncherOptions(launcher=LauncherKind.slurm, partition="gpu", time="1:30", slurm=["qos=high"])
    launcher = slurm.load()
    assert (launcher.kind, launcher.partition, launcher.time, launcher.slurm) == ("slurm", "gpu", 90,
                                                                                  {"qos": "high"})


def test_the_choices_are_the_library_s():
    """The Enums repeat names the library keeps beside torch or pydantic, which `lnexp --help` must not
    import: they must say the same."""
    from lnexp.decode.search import STRATEGIES
    from lnexp.experiments.reproduce.engine import SCALES
    from lnexp.experiments.sweep.slurm import Launcher
    from lnexp.report.plots import SCORES
    from lnexp.report.units import BPB, NATS
    from lnexp.run.sinks import EXPORTS

    assert [s.value for s in DecodeStrategy] == list(STRATEGIES)
    assert [s.value for s in Scale] == list(SCALES)
    assert [k.value for k in LauncherKind] == list(typing.get_args(Launcher.model_fields["kind"].annotation))
    assert [m.value for m in Metric] == ["loss", *SCORES]
    assert [f.value for f in ExportFormat] == list(EXPORTS)
    assert [u.value for u in Unit] == [NATS, BPB]


def test_help_imports_neither_torch_nor_the_config_schema():
    """`lnexp --help` stays fast: the commands import the heavy modules (torch, pydantic's schema, the
    experiments) when they run, not when the command line is built."""
    code = ("import sys, runpy; sys.argv = ['lnexp', '--help']\n"
            "try:\n    runpy.run_module('lnexp', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'pydantic', 'lnexp.core.config', 'lnexp.experiments.sweep')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
