"""The feature-dimension estimators (lnexp/run/probes.py) on inputs whose answer is known (issue #26
item 5): TwoNN on points of a known dimension, the kurtosis and max/median of activations built to
have a known value, and a block that is the identity skipped at no cost."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from lnexp.core.config import ModelConfig
from lnexp.core.model import TransformerLM
from lnexp.core.probe_kinds import PROBE_KINDS
from lnexp.run.probes import (
    TWONN_DISCARD,
    Probes,
    angular_distance,
    mean_replace_top_dims,
    mean_replace_top_pcs,
    outlier_stats,
    twonn,
)

AMBIENT = 64


def embedded(z: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Points z (n, k) placed on a random k-dimensional subspace of R^64, off the origin."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(AMBIENT, z.shape[1], generator=generator))[0]
    return z @ basis.T + 3.0


def gaussian(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


# --- TwoNN ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 5, 10])
def test_twonn_recovers_the_dimension_of_a_linear_subspace_within_10_percent(k):
    dim, se = twonn(embedded(gaussian(4096, k, seed=k))).tolist()
    assert dim == pytest.approx(k, rel=0.10)
    assert se == pytest.approx(dim / math.sqrt(math.floor((1 - TWONN_DISCARD) * 4096)), rel=1e-5)


@pytest.mark.parametrize("k", [2, 5])
def test_twonn_recovers_the_dimension_of_a_sphere_within_10_percent(k):
    z = gaussian(4096, k + 1, seed=10 + k)
    dim, _ = twonn(embedded(z / z.norm(dim=1, keepdim=True))).tolist()  # the unit k-sphere in R^(k+1)
    assert dim == pytest.approx(k, rel=0.10)


def test_twonn_is_the_censored_maximum_likelihood_of_its_docstring():
    """Against the formula computed independently: exact neighbours from a k-d tree, in numpy."""
    points = embedded(gaussian(1500, 4, seed=3)).double().numpy()
    r = cKDTree(points).query(points, k=3)[0]  # itself, then the two nearest
    log_mu = np.sort(np.log(r[:, 2] / r[:, 1]))
    n = len(log_mu)
    kept = math.floor((1 - TWONN_DISCARD) * n)
    expected = kept / (log_mu[:kept].sum() + (n - kept) * log_mu[kept - 1])
    dim, se = twonn(torch.from_numpy(points)).tolist()
    assert dim == pytest.approx(expected, rel=1e-5)
    assert se == pytest.approx(expected / math.sqrt(kept), rel=1e-5)


def test_twonn_merges_duplicate_points_instead_of_dividing_by_zero():
    points = embedded(gaussian(1000, 5, seed=4))
    once = twonn(points)
    assert torch.isfinite(once).all()
    assert torch.equal(twonn(torch.cat([points, points, points])), once)  # every point three times
    assert torch.allclose(twonn(torch.cat([points, points + 1e-9])), once)  # copies up to rounding
    assert twonn(torch.ones(100, 8)).tolist() == [0.0, 0.0]  # a single point has no dimension
    assert twonn(torch.tensor([[0.0, 0.0], [1.0, 1.0]]).repeat(10, 1)).tolist() == [0.0, 0.0]


def test_twonn_subsamples_to_at_most_4096_points():
    points = embedded(gaussian(8192, 3, seed=5))
    assert torch.equal(twonn(points), twonn(points[::2]))


# --- outliers: kurtosis of the neuron RMS, max / median --------------------------------------------

def test_kurtosis_is_about_3_when_the_neuron_rms_is_gaussian_and_1_when_every_neuron_is_alike():
    """He et al.'s kurtosis is that of s, the neurons' RMS: mean(s⁴)/mean(s²)² is E[z⁴]/E[z²]² = 3 when
    s is Gaussian-like (|z|, z ~ N(0, 1)), and 1, its least value, when every neuron has the same RMS."""
    generator = torch.Generator().manual_seed(6)
    tokens, width = 4096, 4096
    unit = torch.randn(tokens, width, generator=generator)
    unit = unit / unit.pow(2).mean(0).sqrt()  # every neuron's RMS exactly 1
    scales = torch.randn(width, generator=generator).abs()
    kurtosis, _ = outlier_stats(unit * scales).tolist()
    expected = (scales**4).mean() / (scales**2).mean() ** 2  # the sample's own, near 3
    assert kurtosis == pytest.approx(expected.item(), rel=1e-4) and kurtosis == pytest.approx(3, rel=0.1)
    kurtosis, _ = outlier_stats(unit).tolist()
    assert kurtosis == pytest.approx(1.0, rel=1e-5)


def test_an_injected_outlier_dimension_gives_the_expected_kurtosis_and_max_over_median():
    generator = torch.Generator().manual_seed(7)
    tokens, width, big = 2048, 128, 50.0
    # every entry ±1 (random signs), one dimension ±50: s = 1 except one neuron at 50
    a = torch.randint(0, 2, (tokens, width), generator=generator).float() * 2 - 1
    a[:, 17] *= big
    kurtosis, max_median = outlier_stats(a).tolist()
    s2 = torch.ones(width)
    s2[17] = big**2
    assert kurtosis == pytest.approx(((s2**2).mean() / s2.mean() ** 2).item(), rel=1e-5)
    assert max_median == pytest.approx(big, rel=1e-6)  # max |a| = 50, median |a| = 1
    # one massive activation in a Gaussian stream: max / median ≈ 1000 / 0.6745 (median |N(0, 1)|)
    g = torch.randn(tokens, width, generator=generator)
    g[0, 3] = 1000.0
    assert outlier_stats(g)[1].item() == pytest.approx(1000 / 0.6745, rel=0.02)


def test_outlier_stats_of_a_silent_tensor_are_zero():
    assert outlier_stats(torch.zeros(4, 5, 8)).tolist() == [0.0, 0.0]


# --- layer change: angles and skipping a block ------------------------------------------------------

def test_angular_distance_of_known_pairs():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [0.0, 1.0]])
    # 0, 1/2, 1 and 1/4 of π, averaged
    assert angular_distance(a, b).item() == pytest.approx((0 + 0.5 + 1 + 0.25) / 4, abs=1e-6)


def pre_ln_with_an_identity_block(identity: int) -> TransformerLM:
    """A Pre-LN model whose block `identity` adds zero on both branches: x + 0 + 0 = x."""
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(n_layers=3, d_model=32, n_heads=4, d_ff=64, norm="pre"), 40)
    with torch.no_grad():
        block = model.blocks[identity]
        for linear in (block.attn.out, block.ffn.fc2):
            linear.weight.zero_(), linear.bias.zero_()
    return model


def test_skipping_an_identity_block_changes_the_loss_by_zero():
    model = pre_ln_with_an_identity_block(1)
    batch = (torch.randint(40, (4, 12)), torch.randint(40, (4, 12)))
    reading = Probes(model, ["layer_change"]).evaluate(PROBE_KINDS["layer_change"], batch, step=0)
    got = {(r["layer"], r["param"]): r["value"] for r in reading.rows(reading.values().tolist())}
    assert got[1, "skip_loss_change"] == 0.0 and got[1, "angle"] == pytest.approx(0.0, abs=1e-3)
    assert got[0, "skip_loss_change"] != 0.0 and got[2, "skip_loss_change"] != 0.0
    assert got[0, "angle"] > 0.01 and got[2, "angle"] > 0.01


# --- direction ablation: what is mean-replaced ------------------------------------------------------

def test_mean_replacing_the_top_dims_touches_only_the_largest_rms_dims():
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(3, 50, 16, generator=generator)
    x[..., 5] = x[..., 5] * 10 + 4  # the largest RMS
    x[..., 9] = x[..., 9] * 6  # the second
    out = mean_replace_top_dims(x, 2)
    flat, before = out.reshape(-1, 16), x.reshape(-1, 16)
    for dim in (5, 9):
        assert torch.allclose(flat[:, dim], before[:, dim].mean().expand(150), atol=1e-5)
    rest = [d for d in range(16) if d not in (5, 9)]
    assert torch.equal(flat[:, rest], before[:, rest])


def test_mean_replacing_the_top_pcs_removes_the_variance_along_them_and_keeps_the_rest():
    generator = torch.Generator().manual_seed(9)
    basis = torch.linalg.qr(torch.randn(16, 16, generator=generator))[0]
    spread = torch.tensor([20.0, 10.0] + [1.0] * 14)  # two leading directions
    x = ((torch.randn(400, 16, generator=generator) * spread) @ basis.T + 2.0).double()
    out = mean_replace_top_pcs(x, 2)

    def spectrum(m: torch.Tensor) -> torch.Tensor:
        c = m - m.mean(0)
        return torch.linalg.eigvalsh(c.T @ c)  # ascending

    # the sample's two largest variances are gone, every other one is untouched, the mean is kept
    expected = torch.cat([torch.zeros(2, dtype=x.dtype), spectrum(x)[:-2]])
    assert torch.allclose(spectrum(out), expected, atol=1e-6 * spectrum(x)[-1])
    assert torch.allclose(out.mean(0), x.mean(0))
