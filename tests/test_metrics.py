"""Disentanglement metrics on codes whose answers are known: the factors themselves, pure
noise, permuted and rotated codes, and tiny examples worked by hand (numbers written out)."""

import math

import pytest
import torch

from vae_lightning.metrics import code_metrics
from vae_lightning.metrics.dci import LASSO_ALPHA, completeness, dci, disentanglement, lasso
from vae_lightning.metrics.factor_vae import factor_vae_score
from vae_lightning.metrics.mig import mig
from vae_lightning.metrics.sap import sap, sap_from_matrix, sap_matrix
from vae_lightning.metrics.unsupervised import gaussian_total_correlation, total_correlation

# At most 20 classes per factor, so 20 histogram bins keep every class apart (MIG exactly 1).
SIZES = (3, 6, 10, 16, 20)
N = 10000
FACTOR_METRICS = ["mig", "dci", "sap", "factorvae"]


@pytest.fixture(scope="module")
def factors() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.stack([torch.randint(size, (N,), generator=g) for size in SIZES], dim=1)


def standardised(factors: torch.Tensor) -> torch.Tensor:
    values = factors.double()
    return ((values - values.mean(0)) / values.std(0)).float()


def test_a_code_equal_to_the_factors_scores_perfectly(factors):
    result = code_metrics(FACTOR_METRICS, factors.float(), factors)
    # Not exactly 1: the plug-in mutual information of the runner-up dimension, independent
    # of the factor, is biased up by about (bins - 1)(classes - 1) / 2N nats.
    assert result["mig"] == pytest.approx(1.0, abs=0.01)
    assert result["dci_disentanglement"] == pytest.approx(1.0, abs=1e-9)
    assert result["dci_completeness"] == pytest.approx(1.0, abs=1e-9)
    assert (
        result["dci_informativeness"] > 0.99
    )  # linear in the class index: R^2 = 1, less shrinkage
    assert result["factorvae_score"] == 1.0
    # Each factor: its own dimension is always right (1), the best other one is near chance.
    assert result["sap"] > 0.6


def test_independent_noise_scores_nothing_and_factorvae_is_at_chance(factors):
    noise = torch.randn(N, len(SIZES), generator=torch.Generator().manual_seed(2))
    result = code_metrics(FACTOR_METRICS, noise, factors)
    assert result["mig"] < 0.01
    assert result["dci_disentanglement"] == 0.0  # the Lasso keeps no weight at all
    assert result["dci_completeness"] == 0.0
    assert result["dci_informativeness"] == 0.0
    assert result["sap"] < 0.02
    # The vote never depends on the factor: any classifier is right 1/K of the time.
    assert result["factorvae_score"] == pytest.approx(1 / len(SIZES), abs=0.03)


def test_permuting_the_code_dimensions_changes_no_value(factors):
    codes = standardised(factors) + 0.3 * torch.randn(N, len(SIZES))
    permuted = codes[:, [3, 0, 4, 2, 1]]
    # The same numbers, up to the order of floating-point sums.
    assert code_metrics(FACTOR_METRICS, permuted, factors) == pytest.approx(
        code_metrics(FACTOR_METRICS, codes, factors), rel=1e-12
    )


def test_a_constant_factor_is_left_out(factors):
    codes = standardised(factors) + 0.3 * torch.randn(N, len(SIZES))
    with_colour = torch.cat([torch.zeros(N, 1, dtype=torch.long), factors], dim=1)
    assert code_metrics(FACTOR_METRICS, codes, with_colour) == pytest.approx(
        code_metrics(FACTOR_METRICS, codes, factors), rel=1e-12
    )


def test_rotating_two_factors_into_two_dimensions_lowers_the_scores(factors):
    """Dimensions 0 and 1 hold (f0 + f1)/sqrt 2 and (f0 - f1)/sqrt 2 of the standardised
    factors: each knows half of two factors. Numbers measured on these 10,000 rows."""
    z = standardised(factors).double()
    rotated = z.clone()
    rotated[:, 0] = (z[:, 0] + z[:, 1]) / math.sqrt(2)
    rotated[:, 1] = (z[:, 0] - z[:, 1]) / math.sqrt(2)
    result = code_metrics(FACTOR_METRICS, rotated.float(), factors)
    # DCI in closed form: the rotated dimensions are orthonormal, so the Lasso weight of each
    # on f0 and f1 is 1/sqrt 2 - alpha and that of each other dimension on its factor 1 - alpha.
    # A rotated dimension spreads evenly over 2 of the 5 factors: 1 - log 2 / log 5.
    half, whole = 1 / math.sqrt(2) - LASSO_ALPHA, 1 - LASSO_ALPHA
    spread = 1 - math.log(2) / math.log(5)
    expected = (4 * half * spread + 3 * whole) / (4 * half + 3 * whole)  # 0.7933
    assert result["dci_disentanglement"] == pytest.approx(expected, abs=0.01)
    assert result["dci_completeness"] == pytest.approx(expected, abs=0.01)  # the same by symmetry
    assert result["dci_informativeness"] > 0.99  # a rotation loses no linear information
    # The others drop for the two mixed factors only (3 of 5 keep their perfect share).
    identity = code_metrics(FACTOR_METRICS, z.float(), factors)
    for name in ("mig", "sap", "factorvae_score"):
        assert result[name] < identity[name] - 0.1, name
    assert result["factorvae_score"] >= 0.6 - 0.01  # 3 factors right, the mixed two half


def test_mig_worked_by_hand():
    """One factor v = (0, 0, 1, 1); c0 = (0, 0, 0, 1) lands in bins (0, 0, 0, 19), c1 =
    (0, 1, 0, 1) is independent of v. H(v) = ln 2, I(c1; v) = 0, and
    I(c0; v) = H(v) - H(v | c0) = ln 2 - 3/4 (ln 3 - 2/3 ln 2) (c0 = 0 on 3 images, v 2:1).
    MIG = I(c0; v) / ln 2 = 3/2 - 3/4 log2 3 = 0.311278."""
    factors = torch.tensor([[0], [0], [1], [1]])
    codes = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    expected = 1.5 - 0.75 * math.log2(3)
    assert expected == pytest.approx(0.311278, abs=1e-6)
    assert mig(codes, factors) == pytest.approx(expected, abs=1e-12)


def test_sap_worked_by_hand():
    """Factor v: train (0, 0, 1, 1), test (0, 0, 1, 1).
    c0: train (0, 1, 2, 3), class means 0.5 and 2.5, midpoint 1.5; test (0, 1.6, 2, 3)
        -> predicted (0, 1, 1, 1): 3 of 4 right, 0.75.
    c1: train (0, 2, 1, 0), class means 1 and 0.5, midpoint 0.75; test (0, 1, 0, 2)
        -> predicted (1, 0, 1, 0): 2 of 4 right, 0.5.
    SAP = 0.75 - 0.5 = 0.25."""
    train_codes = torch.tensor([[0.0, 0.0], [1.0, 2.0], [2.0, 1.0], [3.0, 0.0]])
    test_codes = torch.tensor([[0.0, 0.0], [1.6, 1.0], [2.0, 0.0], [3.0, 2.0]])
    labels = torch.tensor([[0], [0], [1], [1]])
    scores = sap_matrix(train_codes, labels, test_codes, labels)
    assert scores.squeeze(1).tolist() == [0.75, 0.5]
    assert sap_from_matrix(scores) == 0.25


def test_sap_matches_its_matrix_on_drawn_rows(factors):
    codes = standardised(factors) + torch.randn(N, len(SIZES))
    value = sap(codes, factors, num_train=6000, num_test=4000)
    assert 0 < value < 1


def test_dci_of_hand_made_importance_matrices():
    assert disentanglement(torch.eye(3)) == 1.0 and completeness(torch.eye(3)) == 1.0
    # One dimension holds both factors equally, the other nothing: not disentangled
    # (entropy log 2 / log 2 = 1), but complete (each factor lives in one dimension).
    both = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert disentanglement(both) == pytest.approx(0.0, abs=1e-12)
    assert completeness(both) == pytest.approx(1.0, abs=1e-12)
    # Rows weighted by their share: row 0 (weight 3/4) is 1 - H(2/3, 1/3)/ln 2, row 1 (1/4)
    # is 1.
    mixed = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)) / math.log(2)
    assert disentanglement(mixed) == pytest.approx(0.75 * (1 - h) + 0.25, abs=1e-12)


def test_lasso_without_penalty_is_least_squares_and_with_it_meets_its_optimality_conditions():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(500, 6, generator=g, dtype=torch.float64)
    x[:, 1] += 0.8 * x[:, 0]  # correlated columns: coordinate descent must iterate
    x -= x.mean(0)
    y = x @ torch.randn(6, 2, generator=g, dtype=torch.float64) + torch.randn(
        500, 2, generator=g, dtype=torch.float64
    )
    y -= y.mean(0)
    least_squares = torch.linalg.lstsq(x, y).solution
    assert torch.allclose(lasso(x, y, 0.0), least_squares, atol=1e-7)
    alpha = 0.3
    w = lasso(x, y, alpha)
    gradient = x.T @ (y - x @ w) / len(x)  # KKT: = alpha sign(w) where w != 0, |.| <= alpha
    active = w != 0
    assert (~active).any() and active.any()
    assert torch.allclose(gradient[active], alpha * w[active].sign(), atol=1e-7)
    assert (gradient[~active].abs() <= alpha + 1e-9).all()


def test_factorvae_prunes_collapsed_dimensions_and_scores_0_when_all_are(factors):
    codes = torch.cat([factors.float(), 0.01 * torch.randn(N, 2)], dim=1)  # std 0.01 < 0.05
    assert factor_vae_score(codes, factors) == 1.0
    assert factor_vae_score(0.01 * torch.randn(N, 4), factors) == 0.0


def test_gaussian_total_correlation_closed_form_and_estimate():
    rho = 0.6
    covariance = torch.tensor([[1.0, rho], [rho, 1.0]])
    assert gaussian_total_correlation(covariance) == pytest.approx(-0.5 * math.log(1 - rho**2))
    assert gaussian_total_correlation(torch.diag(torch.tensor([2.0, 0.5, 3.0]))) == 0.0
    g = torch.Generator().manual_seed(4)
    samples = torch.randn(N, 2, generator=g) @ torch.linalg.cholesky(covariance).T
    codes = torch.cat([samples, torch.zeros(N, 1)], dim=1)  # a constant dimension: left out
    assert total_correlation(codes) == pytest.approx(-0.5 * math.log(1 - rho**2), abs=0.02)


def test_dci_returns_three_figures_between_0_and_1(factors):
    codes = standardised(factors) @ torch.randn(len(SIZES), 7) + torch.randn(N, 7)
    figures = dci(codes, factors, num_train=3000, num_test=1000)
    assert all(0 <= value <= 1 for value in figures)


def test_unknown_or_unsupplied_metrics_are_value_errors(factors):
    with pytest.raises(ValueError, match="unknown metric 'beta'"):
        code_metrics(["beta"], factors.float(), factors)
    with pytest.raises(ValueError, match="needs the ground-truth factors"):
        code_metrics(["mig"], factors.float())
