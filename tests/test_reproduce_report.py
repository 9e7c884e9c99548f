"""Stored verdicts and every table printed from them: `lnexp reproduce report`, and the docs' tables,
which are that command's output (issue #25 items 2, 3 and 6)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.core.errors import LnexpError
from lnexp.experiments.reproduce.report import StoredSuite, load, markdown, refresh
from lnexp.experiments.reproduce.suites import SUITES
from lnexp.experiments.reproduce.verdicts import GREATER, WITHIN, Claim, Wiring

ROOT = Path(__file__).parent.parent
CLAIM = Claim("Post-LN's gradient does not depend on depth", "exponent b", WITHIN, (-0.25, 0.25),
              "lnexp's choice: the midpoint")
GAIN = Claim("warm-up helps", "loss difference (nats)", GREATER, 0.1, "lnexp's choice: 0.1 nats")
IDENTITY = Wiring("every block ends in a LayerNorm", "RMS² ratio", 0.999, 1.001, "an identity")


def stored(folder: Path) -> Path:
    """A reproduction folder with two suites' verdicts.json: claims, a wiring check, two placebos."""
    suites = [
        StoredSuite("xiong2020-init", "Gradients", "Xiong et al. 2020", "tiny", [
            CLAIM.test([0.01, -0.02, 0.03], [0, 1, 2]), CLAIM.test([0.4, 0.5, 0.45], [0, 1, 2]),
            IDENTITY.check([1.0, 1.0000002, 0.9999998], [0, 1, 2])], runs=10, run_seconds=12.3),
        StoredSuite("placebo", "A against A′", "negative controls", "tiny", [
            GAIN.placebo("Post-LN against Post-LN′").test([0.2, 0.3, 0.25], [3, 4, 5]),
            GAIN.placebo("Pre-LN against Pre-LN′").test([-0.1, 0.05, 0.0], [3, 4, 5])], runs=12,
            run_seconds=40.0),
    ]
    for s in suites:
        (folder / s.suite).mkdir(parents=True)
        (folder / s.suite / "verdicts.json").write_text(json.dumps(s.to_json()))
    return folder


def invoke(*args):
    return CliRunner().invoke(app, ["reproduce", "report", *map(str, args)])


def test_report_prints_the_stored_verdicts_as_markdown_without_training(tmp_path):
    folder = stored(tmp_path / "repro")
    result = invoke(folder, "--markdown")
    assert result.exit_code == 0, result.output
    assert result.stdout == markdown(load(folder, list(SUITES)))
    text = result.stdout
    assert text.index("### xiong2020-init") < text.index("### placebo")  # registry order, then by name
    assert "| Post-LN's gradient does not depend on depth | exponent b | in [-0.25, 0.25] (lnexp's choice: " \
           "the midpoint) | 0: 0.01, 1: -0.02, 2: 0.03 |" in text
    assert "**reproduced**: 95% CI [" in text and "**not reproduced**: 95% CI [" in text
    assert "#### Wiring checks: identities the code must satisfy, not evidence" in text
    assert "#### Placebo comparisons: arm A against arm A′ on disjoint seeds" in text
    # the false-positive rate over every suite's placebos
    assert text.rstrip().endswith('Placebo comparisons: 1 of 2 came out "reproduced": a false-positive '
                                  "rate of 50% (95% CI 1%–99%, Clopper–Pearson; the rule aims at 5% or "
                                  "less).")
    assert not any(p.suffix == ".md" for p in folder.rglob("*"))  # it writes nothing


def test_report_summary_counts_each_suites_verdicts_and_time(tmp_path):
    result = invoke(stored(tmp_path / "repro"), "--summary")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("| xiong") or
            line.startswith("| placebo")]
    assert rows == ["| xiong2020-init | tiny | 1 reproduced, 1 not reproduced | 1 holds | – | 10 | 12 |",
                    "| placebo | tiny | – | – | 1 of 2 (50%) | 12 | 40 |"]


def test_report_in_the_terminal_and_of_one_suite(tmp_path):
    folder = stored(tmp_path / "repro")
    result = invoke(folder / "xiong2020-init")
    assert result.exit_code == 0 and "Post-LN's gradient does not depend" in result.stdout
    assert "every block ends" not in result.stdout  # wiring checks are not verdicts


@pytest.mark.parametrize("setup, needle", [
    (lambda folder: None, "no stored verdicts (<suite>/verdicts.json) there"),
    (lambda folder: (folder / "x").mkdir() or (folder / "x" / "verdicts.json").write_text("[1, 2]"),
     "verdicts.json: not an lnexp verdicts file"),
    (lambda folder: (folder / "x").mkdir() or (folder / "x" / "verdicts.json").write_text("{"),
     "verdicts.json: not an lnexp verdicts file (JSONDecodeError"),
])
def test_a_folder_without_usable_verdicts_is_one_line_and_exit_code_2(tmp_path, setup, needle):
    folder = tmp_path / "repro"
    folder.mkdir()
    setup(folder)
    result = invoke(folder, "--markdown")
    assert result.exit_code == 2 and result.output.count("\n") == 1 and needle in result.output
    assert invoke().exit_code == 2  # neither a folder nor --refresh


def test_report_imports_no_torch(tmp_path):
    folder = stored(tmp_path / "repro")
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom lnexp.cli import app\n"
            f"r = CliRunner().invoke(app, ['reproduce', 'report', {str(folder)!r}, '--markdown'])\n"
            "assert r.exit_code == 0, r.output\nassert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_refresh_rewrites_the_generated_blocks_and_leaves_the_rest(tmp_path):
    folder = stored(tmp_path / "repro")
    page = tmp_path / "page.md"
    page.write_text("intro\n\n<!-- lnexp reproduce report repro --summary -->\nstale\n"
                    "<!-- /lnexp reproduce report -->\n\nmiddle\n"
                    "<!-- lnexp reproduce report repro/placebo -->\n"
                    "<!-- /lnexp reproduce report -->\nend\n")
    text = refresh(page.read_text(), tmp_path)
    assert "stale" not in text and text.startswith("intro\n") and text.endswith("end\n")
    assert markdown(load(folder), summary=True) in text and markdown(load(folder / "placebo")) in text
    assert refresh(text, tmp_path) == text
    with pytest.raises(LnexpError, match="must read `lnexp reproduce report DIR"):
        refresh("<!-- lnexp reproduce report a b -->\n<!-- /lnexp reproduce report -->", tmp_path)
    result = CliRunner().invoke(app, ["reproduce", "report", "--refresh", str(page)])
    assert result.exit_code == 2 and "repro: no stored verdicts" in result.output  # relative to the cwd


@pytest.mark.parametrize("page", ["README.md", "docs/reproduce.md"])
def test_the_docs_verdict_tables_are_what_the_report_command_prints(page):
    """The committed tables equal `lnexp reproduce report docs/results/<scale> ...` for the committed
    verdicts: regenerate them with `lnexp reproduce report --refresh README.md --refresh
    docs/reproduce.md`."""
    text = (ROOT / page).read_text()
    assert "<!-- lnexp reproduce report docs/results/" in text
    assert refresh(text, ROOT, list(SUITES)) == text
