"""The suites, one module per claim: each declares its parameters per scale, its grid (cell key ->
the cell's spec per seed) and the analysis that reads the grid's runs into verdicts."""

from lnexp.experiments.reproduce.suites import (
    depth,
    feature_dimension,
    gpt2,
    layouts,
    placebo,
    radam,
    stability_map,
    xiong_init,
    xiong_warmup,
)
from lnexp.experiments.reproduce.suites.common import SUITES, Suite, register

# The order of `all`, of `lnexp reproduce list` and of the index report (a plugin's suites come last).
for module in (xiong_init, xiong_warmup, radam, depth, stability_map, gpt2, layouts, feature_dimension,
               placebo):
    register(module.SUITE)
SUITES.seal()

__all__ = ["SUITES", "Suite", "register"]
