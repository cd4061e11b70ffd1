"""Tests for model.py: the mixture-density loss, sampling, the attention window and the networks.

Every expected value is computed independently of model.py: the bivariate normal mixture and the
Bernoulli end-of-stroke term in float64 numpy straight from Graves' eqs. 23-26 (and, for the
extreme cases, from a log-space form derived separately below), the window from eqs. 46-51 by
hand, and the networks against themselves run a different way (whole sequence vs step by step,
padded batch vs lines alone).
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import (HandwritingModel, Mixture, ModelConfig, adapted, draw_noise, gaussian_log_density, point_nll,
                   sample_mixture, sequence_nll, split_mixture, window_weights)


# ----------------------------------------------------------------------------- numpy references

def np_logsumexp(a, axis=-1):
    m = np.max(a, axis=axis, keepdims=True)
    return (m + np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True))).squeeze(axis)


def np_log_softmax(a):
    return a - np_logsumexp(a)[..., None]


def ref_log_density_direct(dx, dy, mu_x, mu_y, sx, sy, rho):
    """log N(x | mu, sigma, rho) from Graves eqs. 24-25 (float64, moderate values):
    N = exp(-Z / (2 (1 - rho^2))) / (2 pi sx sy sqrt(1 - rho^2))."""
    z = ((dx - mu_x) / sx) ** 2 + ((dy - mu_y) / sy) ** 2 \
        - 2 * rho * (dx - mu_x) * (dy - mu_y) / (sx * sy)
    return -z / (2 * (1 - rho ** 2)) - np.log(2 * np.pi * sx * sy * np.sqrt(1 - rho ** 2))


def ref_density_direct(*args):
    return np.exp(ref_log_density_direct(*args))


def ref_eos_nll(eos_logit, e):
    """-log Bernoulli(e | sigmoid(l)): -log sigmoid(l) = log(1 + exp(-l)), stable via logaddexp."""
    return np.where(e > 0.5, np.logaddexp(0.0, -eos_logit), np.logaddexp(0.0, eos_logit))


def ref_nll_direct(weight_logits, mu_x, mu_y, log_sx, log_sy, rho_logit, eos_logit, targets):
    """Per-point NLL from the plain density formula (float64; only for moderate parameters)."""
    e, dx, dy = (targets[..., i:i + 1] for i in range(3))
    w = np.exp(weight_logits - weight_logits.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    p = (w * ref_density_direct(dx, dy, mu_x, mu_y, np.exp(log_sx), np.exp(log_sy),
                                np.tanh(rho_logit))).sum(-1)
    return -np.log(p) + ref_eos_nll(eos_logit, e[..., 0])


def ref_log_density_logspace(dx, dy, mu_x, mu_y, log_sx, log_sy, rho_logit):
    """log N in float64, exact also where tanh(r) rounds to +-1 even in float64 (|r| >~ 19).

    With s = sign(r) and d = 1 - |rho| = 1 - tanh|r| = 2 e^{-2|r|} / (1 + e^{-2|r|}) (no
    cancellation), 1 - rho^2 = d (2 - d) and x - rho y = (x - s y) + s d y. Then
    Z / (1 - rho^2) = (zx - rho zy)^2 / (1 - rho^2) + zy^2   (expand the square to check).
    """
    zx = (dx - mu_x) * np.exp(-log_sx)
    zy = (dy - mu_y) * np.exp(-log_sy)
    s, a = np.sign(rho_logit), np.abs(rho_logit)
    q = np.exp(-2 * a)
    d = 2 * q / (1 + q)
    log_one_minus_rho2 = np.log(d) + np.log(2 - d)
    diff = (zx - s * zy) + s * d * zy
    quad = diff ** 2 * np.exp(-log_one_minus_rho2) + zy ** 2
    return -np.log(2 * np.pi) - log_sx - log_sy - 0.5 * log_one_minus_rho2 - 0.5 * quad


def ref_nll_logspace(weight_logits, mu_x, mu_y, log_sx, log_sy, rho_logit, eos_logit, targets):
    e, dx, dy = (targets[..., i:i + 1] for i in range(3))
    log_n = ref_log_density_logspace(dx, dy, mu_x, mu_y, log_sx, log_sy, rho_logit)
    return -np_logsumexp(np_log_softmax(weight_logits) + log_n) + ref_eos_nll(eos_logit, e[..., 0])


def torch_mixture(weight_logits, mu_x, mu_y, log_sx, log_sy, rho_logit, eos_logit,
                  dtype=torch.float32, requires_grad=False):
    t = lambda a: torch.tensor(a, dtype=dtype, requires_grad=requires_grad)
    parts = [t(a) for a in (weight_logits, mu_x, mu_y, log_sx, log_sy, rho_logit, eos_logit)]
    mix = Mixture(F.log_softmax(parts[0], -1), *parts[1:])
    return mix, parts


def random_params(rng, shape, M):
    return dict(weight_logits=rng.normal(0, 2, shape + (M,)), mu_x=rng.normal(0, 1, shape + (M,)),
                mu_y=rng.normal(0, 1, shape + (M,)), log_sx=rng.normal(0, 0.7, shape + (M,)),
                log_sy=rng.normal(0, 0.7, shape + (M,)), rho_logit=rng.normal(0, 1, shape + (M,)),
                eos_logit=rng.normal(0, 2, shape))


def random_targets(rng, shape):
    return np.concatenate([rng.integers(0, 2, shape + (1,)), rng.normal(0, 1.5, shape + (2,))], -1)


# ----------------------------------------------------------------------------- the loss

def test_reference_forms_agree():
    # the two independent references must agree where both are valid: guards the references
    rng = np.random.default_rng(0)
    p, x = random_params(rng, (50,), 4), random_targets(rng, (50,))
    np.testing.assert_allclose(ref_nll_logspace(**p, targets=x), ref_nll_direct(**p, targets=x),
                               rtol=1e-10, atol=1e-10)


def test_point_nll_matches_the_formula_on_random_parameters():
    rng = np.random.default_rng(1)
    p, x = random_params(rng, (7, 9), 5), random_targets(rng, (7, 9))
    expected = ref_nll_direct(**p, targets=x)
    for dtype, tol in [(torch.float64, 1e-10), (torch.float32, 2e-5)]:
        mix, _ = torch_mixture(**p, dtype=dtype)
        got = point_nll(mix, torch.tensor(x, dtype=dtype))
        assert got.shape == (7, 9) and got.dtype == dtype
        np.testing.assert_allclose(got.numpy(), expected, rtol=tol, atol=tol)


def test_gaussian_log_density_per_component():
    rng = np.random.default_rng(2)
    p, x = random_params(rng, (30,), 3), random_targets(rng, (30,))
    mix, _ = torch_mixture(**p, dtype=torch.float64)
    got = gaussian_log_density(mix, torch.tensor(x[:, 1]), torch.tensor(x[:, 2]))
    expected = ref_log_density_direct(x[:, 1:2], x[:, 2:3], p["mu_x"], p["mu_y"], np.exp(p["log_sx"]),
                                      np.exp(p["log_sy"]), np.tanh(p["rho_logit"]))
    assert got.shape == (30, 3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)


def test_point_nll_hand_value():
    # one standard normal component at the origin, point (1, 0), e = 1 with logit 0:
    # -log N = log(2 pi) + 1/2, -log sigmoid(0) = log 2
    mix = Mixture(*(torch.zeros(1, 1) for _ in range(6)), torch.zeros(1))
    got = point_nll(mix, torch.tensor([[1.0, 1.0, 0.0]]))
    assert got.item() == pytest.approx(math.log(2 * math.pi) + 0.5 + math.log(2), rel=1e-6)


def extreme_cases():
    """(params, targets) rows with saturated correlations, tiny sigmas, far points, eos +-50.

    Where tanh(r) is 1 in float32 (|r| >= 9), the loss is ill-conditioned: an input error of one
    float32 ulp in zx - rho zy is multiplied by cosh(r)^2 (~6e34 at |r| = 40). Those rows therefore
    use inputs that are exact in float32 (sigma = 1, dyadic means and points), so float32 and the
    float64 reference see the same numbers; the tiny-sigma / far-point rows use moderate r.
    Points sit on, near, and off the line zx = sign(r) zy, keeping the true NLL below ~1e35.
    """
    rows = []  # (r, log_sigma, dx - mu_x, dy - mu_y, eos_logit, e)
    for r in [8.0, -8.0, 15.0, -15.0, 40.0, -40.0]:
        s = math.copysign(1.0, r)
        for zx, zy in [(0.75, s * 0.75), (1.5, s * 1.5 + 2.0 ** -10), (-2.0, -s * 2.0 - 0.5), (0.0, 0.0)]:
            for eos_logit, e in [(50.0, 1.0), (-50.0, 1.0), (50.0, 0.0), (-50.0, 0.0)]:
                rows.append((r, 0.0, zx, zy, eos_logit, e))
    for r in [0.5, -3.0, 8.0]:
        for log_s, ox, oy in [(-10.0, 50.0, -20.0), (-10.0, -3.0, 1e-3), (-10.0, 1e-4, 1e-4),
                              (0.0, 1e3, -5e2), (2.0, -40.0, 30.0), (-10.0, 0.0, 0.0)]:
            rows.append((r, log_s, ox, oy, -50.0, 0.0))
    n = len(rows)
    r, log_s, ox, oy, eos_logit, e = (np.array(c, np.float64) for c in zip(*rows))
    mu_x, mu_y = np.full(n, 0.25), np.full(n, -0.5)
    f32 = lambda a: a.astype(np.float32).astype(np.float64)  # exactly the model's inputs
    one = lambda a: f32(a)[:, None]
    params = dict(weight_logits=np.zeros((n, 1)), mu_x=one(mu_x), mu_y=one(mu_y), log_sx=one(log_s),
                  log_sy=one(log_s), rho_logit=one(r), eos_logit=f32(eos_logit))
    return params, np.stack([e, f32(mu_x + ox), f32(mu_y + oy)], -1)


def test_point_nll_extreme_single_component_matches_float64_and_has_finite_gradients():
    params, targets = extreme_cases()
    expected = ref_nll_logspace(**params, targets=targets)
    assert np.all(np.isfinite(expected)) and np.all(np.abs(expected) < 1e36)
    mix, leaves = torch_mixture(**params, requires_grad=True)
    got = point_nll(mix, torch.tensor(targets, dtype=torch.float32))
    assert torch.isfinite(got).all()
    # float32: ~1e-7 relative on each term; the largest terms here are ~1e24 (tiny sigma, far
    # point) and |log(1-rho^2)| ~ 80 (|r| = 40), so 2e-5 relative + 1e-4 absolute is ample
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=2e-5, atol=1e-4)
    got.sum().backward()
    for leaf in leaves:
        assert torch.isfinite(leaf.grad).all()


def test_point_nll_extreme_mixture():
    # mix the extreme components of several rows into a 4-component mixture per point, with
    # weights from softmax logits far apart (one component all but switched off)
    params, targets = extreme_cases()
    rng = np.random.default_rng(3)
    n = len(targets)
    pick = np.stack([np.arange(n), *(rng.integers(0, n, n) for _ in range(3))], -1)  # (n, 4)
    p = {k: (v[:, 0][pick] if k != "eos_logit" else v) for k, v in params.items()}
    p["weight_logits"] = np.tile([0.0, -30.0, 2.0, 5.0], (n, 1))
    # the other components are centred on their own rows' points: evaluate at this row's target
    expected = ref_nll_logspace(**p, targets=targets)
    ok = np.abs(expected) < 1e30
    mix, leaves = torch_mixture(**p, requires_grad=True)
    got = point_nll(mix, torch.tensor(targets, dtype=torch.float32))
    assert ok.sum() > n // 2
    np.testing.assert_allclose(got.detach().numpy()[ok], expected[ok], rtol=2e-5, atol=1e-4)
    got[torch.tensor(ok)].sum().backward()
    for leaf in leaves:
        assert torch.isfinite(leaf.grad).all()


def test_eos_term_with_saturated_logits():
    # with the offsets fixed, the eos term is exactly softplus(-l) for e = 1 and softplus(l) for
    # e = 0: 50, ~2e-22, etc. Compare differences so the offset part cancels.
    mix = lambda l: Mixture(*(torch.zeros(4, 1) for _ in range(6)), torch.tensor(l))
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    got = point_nll(mix([50.0, 50.0, -50.0, -50.0]), x) - point_nll(mix([0.0] * 4), x)
    expected = np.array([math.log1p(math.exp(-50)), 50.0, 50.0, math.log1p(math.exp(-50))]) - math.log(2)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- split_mixture

def test_split_mixture_shapes_and_bias():
    M = 20
    torch.manual_seed(0)
    y = torch.randn(2, 5, 6 * M + 1, dtype=torch.float64) * 2
    mix0 = split_mixture(y)
    for name in ["log_weights", "mu_x", "mu_y", "log_sigma_x", "log_sigma_y", "rho_logit"]:
        assert getattr(mix0, name).shape == (2, 5, M)
    assert mix0.eos_logit.shape == (2, 5)
    torch.testing.assert_close(mix0.log_weights.exp().sum(-1), torch.ones(2, 5, dtype=torch.float64))
    # all 121 activations are used exactly once (no component reads another's slot)
    used = torch.cat([getattr(mix0, n) for n in ["mu_x", "mu_y", "log_sigma_x", "log_sigma_y",
                                                  "rho_logit"]] + [mix0.eos_logit[..., None]], -1)
    assert used.shape[-1] == 5 * M + 1
    others = set(y[0, 0].tolist()) - set(used[0, 0].tolist())
    assert len(others) == M  # the weight logits
    for b in [0.5, 2.0]:
        mix = split_mixture(y, bias=b)
        # the logits are log_weights at b = 0 up to a constant, which log_softmax ignores
        torch.testing.assert_close(mix.log_weights, torch.log_softmax((1 + b) * mix0.log_weights, -1))
        torch.testing.assert_close(mix.log_sigma_x.exp(), mix0.log_sigma_x.exp() * math.exp(-b))
        torch.testing.assert_close(mix.log_sigma_y.exp(), mix0.log_sigma_y.exp() * math.exp(-b))
        for name in ["mu_x", "mu_y", "rho_logit", "eos_logit"]:
            assert torch.equal(getattr(mix, name), getattr(mix0, name))
        # sharper: the largest weight grows
        assert (mix.log_weights.max(-1).values >= mix0.log_weights.max(-1).values).all()


# ----------------------------------------------------------------------------- sampling

def test_sample_mixture_moments_single_component():
    N = 200_000
    mu, sigma, rho, eos_logit = (1.0, -2.0), (0.5, 2.0), 0.6, 0.7
    full = lambda v: torch.full((N, 1), v, dtype=torch.float64)
    mix = Mixture(full(0.0), full(mu[0]), full(mu[1]), full(math.log(sigma[0])), full(math.log(sigma[1])),
                  full(math.atanh(rho)), torch.full((N,), eos_logit, dtype=torch.float64))
    x = sample_mixture(mix, torch.Generator().manual_seed(0)).numpy()
    assert x.shape == (N, 3)
    # standard errors: mean sigma/sqrt(N) (<= 0.0045), variance ~ sigma^2 sqrt(2/N) (<= 0.013),
    # covariance ~ sigma_x sigma_y sqrt((1+rho^2)/N) (~0.0026), frequency sqrt(p(1-p)/N) (~0.001):
    # 5 standard errors each
    np.testing.assert_allclose(x[:, 1:].mean(0), mu, atol=5 * max(sigma) / math.sqrt(N))
    cov = np.cov(x[:, 1:].T)
    expected = np.array([[sigma[0] ** 2, rho * sigma[0] * sigma[1]], [rho * sigma[0] * sigma[1], sigma[1] ** 2]])
    se = np.array([[sigma[0] ** 2, sigma[0] * sigma[1] * math.sqrt(1 + rho ** 2)],
                   [sigma[0] * sigma[1] * math.sqrt(1 + rho ** 2), sigma[1] ** 2 * math.sqrt(2)]]) / math.sqrt(N)
    assert np.all(np.abs(cov - expected) < 5 * np.maximum(se, sigma[0] ** 2 * math.sqrt(2 / N)))
    p = 1 / (1 + math.exp(-eos_logit))
    assert set(np.unique(x[:, 0])) == {0.0, 1.0}
    assert abs(x[:, 0].mean() - p) < 5 * math.sqrt(p * (1 - p) / N)


def test_sample_mixture_component_frequencies_and_determinism():
    N = 100_000
    weights = np.array([0.2, 0.5, 0.3])
    rep = lambda v: torch.tensor(v, dtype=torch.float64).repeat(N, 1)
    # well separated components with tiny sigmas: each draw is recognisable by its mean
    mix = Mixture(rep(np.log(weights)), rep([-10.0, 0.0, 10.0]), rep([5.0, 5.0, 5.0]),
                  rep([-6.0] * 3), rep([-6.0] * 3), rep([0.0] * 3), torch.zeros(N, dtype=torch.float64))
    x = sample_mixture(mix, torch.Generator().manual_seed(1)).numpy()
    which = np.round(x[:, 1] / 10).astype(int) + 1
    assert np.all(np.abs(x[:, 1] - 10 * (which - 1)) < 0.05) and np.all(np.abs(x[:, 2] - 5) < 0.05)
    freq = np.bincount(which, minlength=3) / N
    assert np.all(np.abs(freq - weights) < 5 * np.sqrt(weights * (1 - weights) / N))
    again = sample_mixture(mix, torch.Generator().manual_seed(1)).numpy()
    assert np.array_equal(x, again)


def test_sample_mixture_with_saturated_rho_stays_finite():
    mix = Mixture(torch.zeros(1000, 1), torch.zeros(1000, 1), torch.zeros(1000, 1), torch.zeros(1000, 1),
                  torch.zeros(1000, 1), torch.full((1000, 1), 40.0), torch.full((1000,), 50.0))
    x = sample_mixture(mix, torch.Generator().manual_seed(2))
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x[:, 1], x[:, 2])  # rho = 1: dy = dx exactly
    assert (x[:, 0] == 1).all()


def test_sample_mixture_draws_the_component_and_offset_that_the_uniforms_give():
    """Four uniforms a point, by hand: the component by the inverse CDF of the weights at u_component;
    Box-Muller normals n = r (cos 2 pi u_2, sin 2 pi u_2) with r = sqrt(-2 ln(1 - u_1)), so
    u_1 = 1 - exp(-r^2 / 2) gives radius r; dx = mu_x + sigma_x n_x,
    dy = mu_y + sigma_y (rho n_x + sqrt(1 - rho^2) n_y); the pen lifts where u_end_of_stroke < sigmoid(0) = 0.5."""
    # weights (0.2, 0.5, 0.3): cumulative 0.2, 0.7, 1.0, so u = 0.1, 0.65, 0.71, 0.999 pick 0, 1, 2, 2
    row = lambda v: torch.tensor(v, dtype=torch.float64).repeat(4, 1)
    mix = Mixture(row(np.log([0.2, 0.5, 0.3])), row([1.0, 2.0, 3.0]), row([-1.0, -2.0, -3.0]),
                  row(np.log([0.5, 1.0, 2.0])), row(np.log([0.25, 0.5, 4.0])), row(np.arctanh([0.0, 0.6, -0.8])),
                  torch.zeros(4, dtype=torch.float64))
    radius_1, radius_2 = 1 - math.exp(-0.5), 1 - math.exp(-2.0)
    noise = torch.tensor([[0.1, 0.3, radius_1, 0.0],        # n = (1, 0)
                          [0.65, 0.7, radius_2, 0.5],       # n = (-2, 0)
                          [0.71, 0.49, radius_1, 0.25],     # n = (0, 1)
                          [0.999, 0.51, radius_2, 0.125]],  # n = (sqrt 2, sqrt 2)
                         dtype=torch.float64)
    x = sample_mixture(mix, noise=noise).numpy()
    r2 = math.sqrt(2)
    expected = [[1, 1 + 0.5 * 1, -1 + 0.25 * (0 * 1 + 1 * 0)],
                [0, 2 + 1.0 * -2, -2 + 0.5 * (0.6 * -2 + 0.8 * 0)],
                [1, 3 + 2.0 * 0, -3 + 4.0 * (-0.8 * 0 + 0.6 * 1)],
                [0, 3 + 2.0 * r2, -3 + 4.0 * (-0.8 * r2 + 0.6 * r2)]]
    np.testing.assert_allclose(x, expected, rtol=1e-12, atol=1e-12)


def test_standard_normals_of_uniforms_are_standard_normal_and_independent():
    from model import standard_normals
    u = torch.rand(2, 200_000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    n_x, n_y = standard_normals(u[0], u[1])
    # 200,000 draws: standard errors of a mean 0.0022, of a variance 0.0032, of a correlation 0.0022
    for n in (n_x, n_y):
        assert abs(n.mean()) < 0.011 and abs(n.var() - 1) < 0.016
        assert abs((n.abs() < 1).double().mean() - 0.682689) < 0.005  # the normal's mass within one sigma
    assert abs(torch.corrcoef(torch.stack([n_x, n_y]))[0, 1]) < 0.011
    zero = torch.zeros(1, dtype=torch.float64)
    assert standard_normals(zero, zero)[0].item() == 0.0  # u_1 = 0: radius 0, no log of 0


def test_draw_noise_is_four_seeded_uniforms_a_point():
    noise = draw_noise(500, 40, torch.Generator().manual_seed(0))
    assert noise.shape == (500, 40, 4)
    assert (noise >= 0).all() and (noise < 1).all()
    assert (abs(noise.mean((0, 1)) - 0.5) < 5 * (1 / 12) ** 0.5 / 141).all()  # 20,000 draws each: se 0.002
    assert torch.equal(noise, draw_noise(500, 40, torch.Generator().manual_seed(0)))
    assert torch.equal(noise, torch.rand(500, 40, 4, generator=torch.Generator().manual_seed(0)))


# ----------------------------------------------------------------------------- attention window

def test_window_weights_hand_computed():
    # K = 2, U = 4: alpha = (1, 0.5), beta = (1, 2), kappa_prev = (0.5, 1), exp(kappa_hat) = (1, 0.5)
    # -> kappa = (1.5, 1.5); eq. 46: phi(u) = sum_k alpha_k exp(-beta_k (kappa_k - u)^2), with the
    # characters at u = 0, 1, 2, 3 (the code's 0-based positions; Graves counts from 1)
    alpha_hat = torch.log(torch.tensor([[1.0, 0.5]], dtype=torch.float64))
    beta_hat = torch.log(torch.tensor([[1.0, 2.0]], dtype=torch.float64))
    kappa_hat = torch.log(torch.tensor([[1.0, 0.5]], dtype=torch.float64))
    kappa_prev = torch.tensor([[0.5, 1.0]], dtype=torch.float64)
    text_mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    phi, kappa = window_weights(alpha_hat, beta_hat, kappa_hat, kappa_prev, text_mask)
    e = math.exp
    expected_phi = [e(-2.25) + 0.5 * e(-4.5), e(-0.25) + 0.5 * e(-0.5), e(-0.25) + 0.5 * e(-0.5), 0.0]
    np.testing.assert_allclose(kappa.numpy(), [[1.5, 1.5]], rtol=1e-14)
    np.testing.assert_allclose(phi.numpy(), [expected_phi], rtol=1e-12, atol=0)
    assert phi[0, 3].item() == 0.0


def test_window_weights_shapes_monotone_kappa_and_padding():
    torch.manual_seed(0)
    B, K, U = 3, 4, 9
    text_mask = torch.ones(B, U)
    text_mask[1, 6:] = 0
    text_mask[2, 2:] = 0
    kappa = torch.zeros(B, K)
    for _ in range(20):
        a, b, k = torch.randn(3, B, K) * 3
        phi, new_kappa = window_weights(a, b, k, kappa, text_mask)
        assert phi.shape == (B, U) and new_kappa.shape == (B, K)
        assert (new_kappa > kappa).all()
        assert (phi[text_mask == 0] == 0).all() and (phi[text_mask == 1] >= 0).all()
        kappa = new_kappa


def test_window_peaks_at_kappa():
    U = 7
    for u0 in range(U):
        # alpha = 1, beta = e^3 ~ 20, kappa = u0 exactly (kappa_prev = u0 - 1, exp(0) = 1)
        phi, _ = window_weights(torch.zeros(1, 1), torch.full((1, 1), 3.0), torch.zeros(1, 1),
                                torch.full((1, 1), u0 - 1.0), torch.ones(1, U))
        assert phi.argmax().item() == u0
        assert phi[0, u0].item() == pytest.approx(1.0, abs=1e-6)
        assert phi.sum().item() == pytest.approx(1.0, abs=1e-6)  # neighbours get exp(-20)


def test_window_weights_gradcheck():
    torch.manual_seed(1)
    B, K = 2, 3
    args = [torch.randn(B, K, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    kappa_prev = (torch.rand(B, K, dtype=torch.float64) * 4).requires_grad_()
    text_mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, k, kp: window_weights(a, b, k, kp, text_mask),
                                    (*args, kappa_prev))


def test_window_floor_changes_nothing_a_float_holds():
    """window_exp floors exp's argument at EXP_FLOOR. phi of windows far from most of the text
    (exponents down past -1,000, some in float32's denormal range) against Graves' eq. 46 with
    the plain exp, both in float32: the same but for terms under 1e-36, and so the gradients with
    respect to the window's parameters."""
    from model import EXP_FLOOR, window_exp
    x = torch.tensor([0.0, -5.0, EXP_FLOOR, EXP_FLOOR - 1, -95.0, -200.0])
    assert torch.equal(window_exp(x[:3]), torch.exp(x[:3]))
    assert (window_exp(x[3:]) <= torch.exp(torch.tensor(EXP_FLOOR))).all()
    torch.manual_seed(2)
    B, K, U = 4, 10, 64
    leaves = [torch.randn(B, K) * 0.5, torch.randn(B, K), torch.randn(B, K), torch.rand(B, K) * U]
    text_mask = torch.ones(B, U)
    inputs = [t.clone().requires_grad_() for t in leaves]
    phi, _ = window_weights(*inputs, text_mask)
    phi.pow(2).sum().backward()
    plain = [t.clone().requires_grad_() for t in leaves]
    alpha, beta, kappa = plain[0].exp(), plain[1].exp(), plain[3] + plain[2].exp()
    exponents = -beta[..., None] * (kappa[..., None] - torch.arange(U, dtype=torch.float32)) ** 2
    expected = (alpha[..., None] * torch.exp(exponents)).sum(1)
    expected.pow(2).sum().backward()
    assert exponents.min() < -1000 and ((exponents < EXP_FLOOR) & (exponents > -104)).any()
    torch.testing.assert_close(phi, expected.detach(), rtol=1e-6, atol=1e-36)
    for got, want in zip(inputs, plain):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-6, atol=1e-36)


# ----------------------------------------------------------------------------- the networks

def tiny(task, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(task=task, cell_size=16, num_clusters=3, K=2, alphabet_size=7)
    return HandwritingModel(config).to(dtype)


def batch(B=3, T=12, U=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randn(B, T, 3, generator=g, dtype=dtype)
    offsets[..., 0] = (torch.rand(B, T, generator=g) < 0.2).to(dtype)
    text = torch.randint(0, 7, (B, U), generator=g)
    text_mask = torch.ones(B, U, dtype=dtype)
    text_mask[1, U - 2:] = 0
    text_mask[2, 2:] = 0
    text[text_mask == 0] = 0
    return offsets, text, text_mask


@pytest.mark.parametrize("task", ["rand_write", "synthesis"])
def test_output_shapes(task):
    model = tiny(task, torch.float32)
    offsets, text, text_mask = batch(dtype=torch.float32)
    y, state, phi = model(offsets, text, text_mask)
    assert y.shape == (3, 12, 6 * 3 + 1) and phi is None
    assert state.h1.shape == state.c1.shape == state.h2.shape == state.c2.shape == (3, 16)
    if task == "synthesis":
        assert state.kappa.shape == (3, 2) and state.window.shape == (3, 7)
    else:
        assert state.kappa is None and state.window is None


@pytest.mark.parametrize("task", ["rand_write", "synthesis"])
def test_whole_sequence_equals_step_by_step(task):
    model = tiny(task)
    offsets, text, text_mask = batch()
    y_full, state_full, _ = model(offsets, text, text_mask)
    state, ys, kappas = None, [], []
    for t in range(offsets.shape[1]):
        y, state, _ = model(offsets[:, t:t + 1], text, text_mask, state=state)
        ys.append(y)
        kappas.append(state.kappa)
    torch.testing.assert_close(torch.cat(ys, 1), y_full, rtol=1e-10, atol=1e-10)
    for a, b in zip(state, state_full):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # and in two uneven chunks
    y1, s1, _ = model(offsets[:, :5], text, text_mask)
    y2, _, _ = model(offsets[:, 5:], text, text_mask, state=s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_full, rtol=1e-10, atol=1e-10)
    if task == "synthesis":
        k = torch.stack(kappas)  # (T, B, K): the window only moves forwards
        assert (k[1:] > k[:-1]).all()


@pytest.mark.parametrize("task", ["rand_write", "synthesis"])
def test_causal(task):
    model = tiny(task)
    offsets, text, text_mask = batch()
    y, _, _ = model(offsets, text, text_mask)
    t = 6
    changed = offsets.clone()
    changed[:, t, 1:] += 1.0
    y2, _, _ = model(changed, text, text_mask)
    assert torch.equal(y[:, :t], y2[:, :t])
    assert (y[:, t] - y2[:, t]).abs().max() > 1e-3


def test_rand_write_skip_connection_from_input_to_layer2():
    model = tiny("rand_write")
    with torch.no_grad():
        model.layer1.weight_ih_l0.zero_()  # layer 1 no longer sees x: only the skip carries it
    offsets, _, _ = batch()
    y, _, _ = model(offsets)
    changed = offsets.clone()
    changed[:, 4, 2] += 1.0
    y2, _, _ = model(changed)
    assert (y[:, 4] - y2[:, 4]).abs().max() > 1e-3


def test_synthesis_phi_and_padded_text():
    model = tiny("synthesis")
    offsets, text, text_mask = batch()
    y, _, phi = model(offsets, text, text_mask, return_phi=True)
    assert phi.shape == (3, 12, 5)
    assert (phi.permute(1, 0, 2)[:, text_mask == 0] == 0).all()
    assert (phi.permute(1, 0, 2)[:, text_mask == 1] > 0).all()
    # padded codes do not matter
    other = text.clone()
    other[text_mask == 0] = 6
    y_other, _, _ = model(offsets, other, text_mask)
    torch.testing.assert_close(y_other, y, rtol=0, atol=1e-14)
    # ... but real characters do: change line 2's first (real) character
    other = text.clone()
    other[2, 0] = (other[2, 0] + 1) % 7
    y_other, _, _ = model(offsets, other, text_mask)
    assert (y_other[2] - y[2]).abs().max() > 1e-6
    torch.testing.assert_close(y_other[:2], y[:2], rtol=0, atol=0)
    # the window vector is phi applied to the one-hot text: rebuild layer 2's window input
    one_hot = F.one_hot(text, 7).to(phi.dtype)
    windows = torch.einsum("btu,bua->bta", phi, one_hot)
    _, state, _ = model(offsets, text, text_mask)
    torch.testing.assert_close(state.window, windows[:, -1], rtol=1e-12, atol=1e-12)


def test_synthesis_needs_text():
    model = tiny("synthesis")
    with pytest.raises(ValueError):
        model(torch.zeros(1, 3, 3, dtype=torch.float64))


def test_invalid_task():
    with pytest.raises(ValueError):
        ModelConfig(task="write")


def mixture_numpy(y):
    mix = split_mixture(y)
    weight_logits = mix.log_weights.detach().double().numpy()
    return dict(weight_logits=weight_logits, **{
        k: getattr(mix, n).detach().double().numpy()
        for k, n in [("mu_x", "mu_x"), ("mu_y", "mu_y"), ("log_sx", "log_sigma_x"), ("log_sy", "log_sigma_y"),
                     ("rho_logit", "rho_logit"), ("eos_logit", "eos_logit")]})


@pytest.mark.parametrize("task", ["rand_write", "synthesis"])
def test_sequence_nll_equals_hand_loop(task):
    model = tiny(task, torch.float32)
    offsets, text, text_mask = batch(T=10, dtype=torch.float32)
    lengths = [10, 7, 3]
    mask = torch.zeros(3, 10)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        offsets[b, n:] = 0
    total, count = sequence_nll(model, offsets, mask, text, text_mask)
    y, _, _ = model(offsets[:, :-1], text, text_mask)
    p = mixture_numpy(y)
    expected = 0.0
    for b, n in enumerate(lengths):
        for t in range(n - 1):  # y[b, t] predicts point t + 1
            row = {k: v[b, t] for k, v in p.items()}
            expected += ref_nll_direct(**row, targets=offsets[b, t + 1].double().numpy())
    assert count.item() == sum(n - 1 for n in lengths)
    assert total.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("task", ["rand_write", "synthesis"])
def test_padding_does_not_change_a_lines_nll(task):
    model = tiny(task, torch.float32)
    g = torch.Generator().manual_seed(5)
    short, long = torch.randn(1, 9, 3, generator=g), torch.randn(1, 17, 3, generator=g)
    short_text, long_text = torch.tensor([[1, 4, 2]]), torch.tensor([[3, 0, 5, 6, 2, 1]])
    alone = []
    for x, c in [(short, short_text), (long, long_text)]:
        alone.append(sequence_nll(model, x, torch.ones(1, x.shape[1]), c, torch.ones(c.shape))[0].item())
    offsets = torch.zeros(2, 17, 3)
    offsets[0, :9], offsets[1] = short[0], long[0]
    offsets[0, 9:] = 7.0  # garbage in the padding: masked out, and after the line anyway
    mask = torch.zeros(2, 17)
    mask[0, :9], mask[1] = 1, 1
    text = torch.full((2, 6), 5)
    text[0, :3], text[1] = short_text[0], long_text[0]
    text_mask = torch.zeros(2, 6)
    text_mask[0, :3], text_mask[1] = 1, 1
    total, count = sequence_nll(model, offsets, mask, text, text_mask)
    assert count.item() == 8 + 16
    assert total.item() == pytest.approx(sum(alone), rel=1e-5)
    # per line too, through the per-point losses
    y, _, _ = model(offsets[:, :-1], text, text_mask)
    nll = point_nll(split_mixture(y), offsets[:, 1:])
    assert nll[0, :8].sum().item() == pytest.approx(alone[0], rel=1e-5)
    assert nll[1].sum().item() == pytest.approx(alone[1], rel=1e-5)


# ----------------------------------------------------------------------------- generation

def test_generate_writes_length_points_per_line_and_the_same_for_a_seed():
    model = tiny("rand_write")
    start = torch.zeros(2, 3)
    write = lambda seed: model.generate(start, length=9, generator=torch.Generator().manual_seed(seed))
    lines, phis, capped = write(0)
    assert [line.shape for line in lines] == [(9, 3), (9, 3)] and phis is None and capped == [False, False]
    assert all(np.array_equal(line[0], [0, 0, 0]) for line in lines)  # the start row comes first
    assert set(np.unique(np.concatenate(lines)[:, 0])) <= {0.0, 1.0}
    assert all(np.array_equal(a, b) for a, b in zip(lines, write(0)[0]))
    assert not np.array_equal(lines[0], write(1)[0][0])


def test_generate_ends_a_line_by_graves_rule_or_at_its_cap():
    """A window that moves a whole character a point passes the end of a 3-character text within a
    few points; one that does not move is stopped at the cap, (characters + 1) * max_points_per_char."""
    model = tiny("synthesis")
    _, text, text_mask = batch(U=3)
    text_mask[:] = 1
    K = model.config.K
    for kappa_step, expected_capped in [(0.0, False), (-30.0, True)]:  # exp(0) = 1 character a point
        with torch.no_grad():
            model.window_layer.weight[2 * K:] = 0
            model.window_layer.bias[2 * K:] = kappa_step
        lines, phis, capped = model.generate(torch.zeros(3, 3), text=text, text_mask=text_mask,
                                             generator=torch.Generator().manual_seed(0), max_points_per_char=5)
        assert capped == [expected_capped] * 3
        for line, phi in zip(lines, phis):
            assert phi.shape == (len(line) - 1, 3)
            assert len(line) - 1 == 20 if expected_capped else len(line) - 1 <= 5


@pytest.mark.parametrize("task", ["rand_write", "synthesis"])
def test_generate_from_uniforms_is_generate_from_the_seeds_draws(task):
    """The draws a seed gives (draw_noise, NOISE_BLOCK points at a time), passed as uniforms, write
    the same lines; a row for each point is enough, and a stream one row short says so."""
    from model import NOISE_BLOCK
    model = tiny(task)
    _, text, text_mask = batch(U=3)
    options = dict(length=12) if task == "rand_write" else dict(text=text, text_mask=text_mask, max_points_per_char=4)
    start = torch.zeros(3, 3)
    lines, phis, capped = model.generate(start, generator=torch.Generator().manual_seed(2), **options)
    points = max(len(line) for line in lines) - 1
    draws = draw_noise(NOISE_BLOCK, 3, torch.Generator().manual_seed(2), torch.float64).numpy()
    again, phis_again, capped_again = model.generate(start, uniforms=draws[:points], **options)
    assert capped_again == capped
    for a, b in zip(again + (phis_again or []), lines + (phis or [])):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=f"uniforms: {points - 1} rows, and lines .* go on"):
        model.generate(start, uniforms=draws[:points - 1], **options)


def test_generate_refuses_uniforms_of_another_shape_or_outside_0_1():
    model = tiny("rand_write")
    start = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"an array \(points, 2 lines, 4\), not of shape \(10, 3, 4\)"):
        model.generate(start, length=5, uniforms=np.full((10, 3, 4), 0.5))
    for bad in [1.0, -0.1, np.nan]:
        uniforms = np.full((10, 2, 4), 0.5)
        uniforms[3, 1, 2] = bad
        with pytest.raises(ValueError, match=r"must lie in \[0, 1\)"):
            model.generate(start, length=5, uniforms=uniforms)


# ----------------------------------------------------------------------------- dynamic evaluation

def test_one_adaptation_step_is_adams_first_step_on_a_copy():
    """Adam's first step, bias-corrected, moves each weight by lr * g / (|g| + eps), g the gradient
    of the line's NLL per point; the model given is left as it was."""
    model = tiny("synthesis")
    offsets, text, text_mask = (x[:1] for x in batch())
    before = [p.detach().clone() for p in model.parameters()]
    nats, points = sequence_nll(model, offsets, torch.ones(offsets.shape[:2], dtype=offsets.dtype), text, text_mask)
    grads = torch.autograd.grad(nats / points, list(model.parameters()))
    learner = adapted(model, offsets, text, text_mask, steps=1, learning_rate=1e-3)
    for p, p0, g in zip(learner.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), p0 - 1e-3 * g / (g.abs() + 1e-8), rtol=1e-9, atol=1e-12)
    for p, p0 in zip(model.parameters(), before):
        assert torch.equal(p.detach(), p0)
    assert not learner.training


def test_adapting_to_a_line_makes_it_likelier_and_zero_steps_change_nothing():
    model = tiny("synthesis")
    offsets, text, text_mask = (x[:1] for x in batch())
    mask = torch.ones(offsets.shape[:2], dtype=offsets.dtype)
    nll = lambda m: sequence_nll(m, offsets, mask, text, text_mask)[0].item()
    same = adapted(model, offsets, text, text_mask, steps=0, learning_rate=1e-3)
    assert same is not model and nll(same) == nll(model)
    assert nll(adapted(model, offsets, text, text_mask, steps=5, learning_rate=1e-2)) < nll(model) - 1
