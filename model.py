"""The two handwriting networks of Graves (2013, arXiv:1308.0850) and their loss, written plainly.

Both models read pen offsets x_t = [end_of_stroke, dx, dy] and predict the next one through a
mixture density output: M bivariate Gaussians for (dx, dy) and a Bernoulli for end_of_stroke.

    rand_write:  x -> LSTM1 -> LSTM2 -> output        (x feeds both layers; the output layer
                                                      sees both layers: "skip connections")
    synthesis:   the same, plus a soft window over the one-hot text (section 5): layer 1's
                 output at step t places K Gaussians on the character positions; their weights
                 phi(t, u) average the characters into a window vector w_t, which feeds layer 2
                 at step t and layer 1 at step t+1.

Top-down: the configuration, the mixture output and its loss, sampling, the window, the network and
generation. This is the plain reference; kernels.FastHandwritingModel computes the same fast (what
training and generation use), tests/test_kernels.py holds the two together, docs/speed.md says how.
"""
import copy
import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


@dataclass
class ModelConfig:
    task: str = "rand_write"   # "rand_write" (unconditional) or "synthesis" (text-conditioned)
    cell_size: int = 400       # LSTM units per layer
    num_clusters: int = 20     # M, Gaussians in the output mixture
    K: int = 10                # Gaussians in the attention window (synthesis only)
    alphabet_size: int = 84    # one-hot text size (synthesis only)

    def __post_init__(self):
        if self.task not in ("rand_write", "synthesis"):
            raise ValueError(f"task must be 'rand_write' or 'synthesis', not {self.task!r}")


# ----------------------------------------------------------------------------- mixture output

class Mixture(NamedTuple):
    """Mixture-density parameters, each (..., M) except eos_logit (...,)."""
    log_weights: torch.Tensor  # log pi_j (log-softmax)
    mu_x: torch.Tensor
    mu_y: torch.Tensor
    log_sigma_x: torch.Tensor  # sigma = exp(.)
    log_sigma_y: torch.Tensor
    rho_logit: torch.Tensor    # rho = tanh(.); kept unsquashed so 1 - rho^2 stays exact
    eos_logit: torch.Tensor    # P(end_of_stroke) = sigmoid(.)


def split_mixture(y, bias=0.0):
    """Raw output-layer activations (..., 6M+1) -> Mixture.

    `bias` is Graves' sampling bias (section 5.2): weights sharpen by (1+b), standard deviations
    shrink by exp(-b). Training uses b = 0.
    """
    eos_logit = y[..., 0]
    weight_logit, mu_x, mu_y, log_sigma_x, log_sigma_y, rho_logit = y[..., 1:].chunk(6, dim=-1)
    return Mixture(
        log_weights=F.log_softmax(weight_logit * (1 + bias), dim=-1),
        mu_x=mu_x, mu_y=mu_y,
        log_sigma_x=log_sigma_x - bias, log_sigma_y=log_sigma_y - bias,
        rho_logit=rho_logit, eos_logit=eos_logit,
    )


def log_one_minus_tanh_squared(r):
    """log(1 - tanh(r)^2) = 2 log sech(r), exact even where tanh(r) rounds to +-1."""
    r = r.abs()
    return 2 * (math.log(2) - r - F.softplus(-2 * r))


def gaussian_log_density(mix, dx, dy):
    """log N(dx, dy | mu_j, sigma_j, rho_j) for every component j: (..., M)."""
    zx = (dx.unsqueeze(-1) - mix.mu_x) * torch.exp(-mix.log_sigma_x)
    zy = (dy.unsqueeze(-1) - mix.mu_y) * torch.exp(-mix.log_sigma_y)
    rho = torch.tanh(mix.rho_logit)
    log_one_minus_rho2 = log_one_minus_tanh_squared(mix.rho_logit)
    # (zx^2 + zy^2 - 2 rho zx zy) / (1 - rho^2) rewritten as a sum of two squares: never negative,
    # no cancellation when |rho| -> 1. exp(-log(1-rho^2)) = cosh^2 overflows float32 past |r| ~ 44,
    # where rho = tanh(r) is 1 to 38 digits anyway, hence the clamp.
    inv_one_minus_rho2 = torch.exp(-log_one_minus_rho2.clamp(min=-80.0))
    quad = (zx - rho * zy) ** 2 * inv_one_minus_rho2 + zy ** 2
    return -LOG_2PI - mix.log_sigma_x - mix.log_sigma_y - 0.5 * log_one_minus_rho2 - 0.5 * quad


def point_nll(mix, targets):
    """Negative log-likelihood (nats) of each target point [end_of_stroke, dx, dy]: (...,)."""
    end_of_stroke, dx, dy = targets.unbind(-1)
    offset_nll = -torch.logsumexp(mix.log_weights + gaussian_log_density(mix, dx, dy), dim=-1)
    # -[e log s(l) + (1-e) log s(-l)] in its stable logits form
    eos_nll = F.binary_cross_entropy_with_logits(mix.eos_logit, end_of_stroke, reduction="none")
    return offset_nll + eos_nll


def sequence_nll(model, offsets, mask, text=None, text_mask=None, state=None, return_state=False):
    """Teacher-forced NLL of a padded batch.

    offsets (B, T+1, 3): each line's points, the model predicting point t+1 from points <= t;
    mask (B, T+1): 1 on real points. Returns (total nats over all real predicted points,
    number of predicted points), so callers can average per point or per sequence; with
    return_state also the State after reading offsets[:, :-1], from which the next piece of the
    same lines goes on (state: where this piece starts; None: the lines' start).
    """
    inputs, targets = offsets[:, :-1], offsets[:, 1:]
    y, final_state, _ = model(inputs, text, text_mask, state=state)
    nll = point_nll(split_mixture(y.to(targets.dtype)), targets)  # fp32 loss under bf16 autocast
    target_mask = mask[:, 1:].to(nll.dtype)
    totals = (nll * target_mask).sum(), target_mask.sum()
    return totals + (final_state,) if return_state else totals


# ----------------------------------------------------------------------------- dynamic evaluation

def adapted(model, offsets, text, text_mask, steps, learning_rate):
    """A copy of `model` fine-tuned by `steps` Adam steps on the NLL per point of a batch of whole
    lines (offsets (B, T+1, 3), every point real), `model` itself untouched. Graves (section 3)
    evaluates text dynamically, updating the weights on what the network has read; here the
    network learns the hand of a prime line before it writes (generate.Writer.adapted)."""
    learner = copy.deepcopy(model).train()
    optimizer = torch.optim.Adam(learner.parameters(), lr=learning_rate)
    mask = torch.ones(offsets.shape[:2], dtype=offsets.dtype, device=offsets.device)
    for _ in range(steps):
        nats, points = sequence_nll(learner, offsets, mask, text, text_mask)
        optimizer.zero_grad()
        (nats / points).backward()
        optimizer.step()
    return learner.eval()


# ----------------------------------------------------------------------------- sampling

def draw_noise(steps, batch_size, generator=None, dtype=torch.float32, device=None):
    """The randomness of `steps` points of `batch_size` lines at once: (steps, B, 4) uniforms in
    [0, 1), [u_component, u_end_of_stroke, u_1, u_2] a point (see sample_mixture). Uniforms only, so
    that another implementation (the browser's, web/) writes the same strokes from the same numbers."""
    return torch.rand(steps, batch_size, 4, generator=generator, dtype=dtype, device=device)


def standard_normals(u_1, u_2):
    """Two independent standard normals from two uniforms in [0, 1) (Box-Muller): r = sqrt(-2 ln(1 - u_1))
    at the angle 2 pi u_2. 1 - u_1 > 0, so the logarithm is finite."""
    radius = torch.sqrt(-2 * torch.log(1 - u_1))
    angle = 2 * math.pi * u_2
    return radius * torch.cos(angle), radius * torch.sin(angle)


def sample_mixture(mix, generator=None, noise=None):
    """Draw one point [end_of_stroke, dx, dy] per batch row from a Mixture of shape (B, M).

    noise (B, 4) is draw_noise's [u_component, u_end_of_stroke, u_1, u_2] (drawn here if None):
    the component is the first whose cumulative weight passes u_component (the inverse CDF);
    (dx, dy) = mu + the Cholesky factor of the component's covariance times (n_x, n_y), the
    standard normals of u_1 and u_2; the pen lifts where u_end_of_stroke < P(end_of_stroke).
    """
    if noise is None:
        noise = draw_noise(1, mix.mu_x.shape[0], generator, mix.mu_x.dtype, mix.mu_x.device)[0]
    u_component, u_end_of_stroke, u_1, u_2 = noise.unbind(-1)
    n_x, n_y = standard_normals(u_1, u_2)
    cdf = mix.log_weights.exp().cumsum(-1)
    # u times the total, which rounding moves off 1; the clamp keeps u = 1 - eps in range
    component = (cdf < u_component.unsqueeze(-1) * cdf[..., -1:]).sum(-1, keepdim=True)
    component = component.clamp(max=cdf.shape[-1] - 1)  # (B, 1)
    pick = lambda t: t.gather(-1, component).squeeze(-1)
    mu_x, mu_y = pick(mix.mu_x), pick(mix.mu_y)
    sigma_x, sigma_y = pick(mix.log_sigma_x).exp(), pick(mix.log_sigma_y).exp()
    rho = torch.tanh(pick(mix.rho_logit))
    dx = mu_x + sigma_x * n_x
    dy = mu_y + sigma_y * (rho * n_x + torch.sqrt(1 - rho ** 2) * n_y)
    end_of_stroke = (u_end_of_stroke < torch.sigmoid(mix.eos_logit)).to(dx.dtype)
    return torch.stack([end_of_stroke, dx, dy], dim=-1)


def checked_uniforms(uniforms, lines, dtype):
    """generate()'s explicit draws as an array (points, lines, 4) of `dtype`, each in [0, 1)."""
    array = np.asarray(uniforms, dtype=dtype)
    if array.ndim != 3 or array.shape[1:] != (lines, 4):
        raise ValueError(f"uniforms must be an array (points, {lines} lines, 4), not of shape {array.shape}")
    outside = array[~((array >= 0) & (array < 1))]
    if outside.size:
        raise ValueError(f"uniforms must lie in [0, 1) (as {np.dtype(dtype).name}), not {outside[:3]}")
    return array


# ----------------------------------------------------------------------------- attention window

# exp(x) for x below this is under float32's smallest normal number (1.2e-38): such a term of phi
# adds nothing to the window that a float can hold beside the terms that matter.
EXP_FLOOR = -87.0


def window_exp(x):
    """exp(x) of the window's exponents, floored at EXP_FLOOR. Most positions lie far from the
    window, and CPUs are slow on the rest: exp below float32's range, and results in the denormal
    range, take slow paths (docs/speed.md)."""
    return torch.exp(x.clamp(min=EXP_FLOOR))


def window_weights(alpha_hat, beta_hat, kappa_hat, kappa_prev, text_mask):
    """Graves eqs. 46-51 for one step.

    alpha_hat, beta_hat, kappa_hat, kappa_prev: (B, K); text_mask: (B, U) float, 1 on real
    characters. Returns phi (B, U) -- the weight of each character -- and the new kappa (B, K).
    """
    alpha, beta = alpha_hat.exp(), beta_hat.exp()
    kappa = kappa_prev + kappa_hat.exp()  # the window only moves forwards
    u = torch.arange(text_mask.shape[1], device=text_mask.device, dtype=kappa.dtype)
    # (B, K, 1) against (U,) -> (B, K, U), summed over the K Gaussians
    phi = (alpha.unsqueeze(-1) * window_exp(-beta.unsqueeze(-1) * (kappa.unsqueeze(-1) - u) ** 2)).sum(1)
    return phi * text_mask, kappa


def finished(phi_text, phi_after):
    """Graves' stopping rule: phi of the position after the text beats phi of every real character.

    phi_text (B, U): window weights of the characters (0 on padding, which never wins, as phi >= 0);
    phi_after (B,): the weight the same window gives position U_b, just past line b's text.
    Arrays; returns (B,) bool.
    """
    return phi_after > phi_text.max(axis=-1)


# The step cap: a line not finished by Graves' rule after this many points per character (+1) is
# stopped, stalled. Real lines take 21 a character (median), 45 at most; why 80: docs/generation.md.
MAX_POINTS_PER_CHAR = 80

# generate() draws its randomness for this many points at a time (draw_noise); part of what a
# seed means: changing it changes the strokes written for a seed
NOISE_BLOCK = 256


# ----------------------------------------------------------------------------- the network

class State(NamedTuple):
    """Recurrent state carried between calls (generation steps through it one point at a time)."""
    h1: torch.Tensor
    c1: torch.Tensor
    h2: torch.Tensor
    c2: torch.Tensor
    kappa: Optional[torch.Tensor] = None   # (B, K) window positions (synthesis)
    window: Optional[torch.Tensor] = None  # (B, A) last window vector w_{t-1} (synthesis)

    def detach(self):
        """The same values cut from the graph that computed them: truncated backpropagation
        through time carries them into the next window of the same lines."""
        return State(*(None if s is None else s.detach() for s in self))


class HandwritingModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        H, M = config.cell_size, config.num_clusters
        self.window_size = config.alphabet_size if config.task == "synthesis" else 0
        A = self.window_size
        if config.task == "synthesis":
            # layer 1 as explicit weights, its gates ordered (i, f, o, g): x's share of them is
            # computed for all steps at once, [h1_{t-1}, w_{t-1}]'s inside the loop
            self.layer1_input = nn.Linear(3, 4 * H)
            self.layer1_recurrent = nn.Linear(H + A, 4 * H, bias=False)
            self.window_layer = nn.Linear(H, 3 * config.K)
        else:
            self.layer1 = nn.LSTM(3, H, batch_first=True)
        self.layer2 = nn.LSTM(3 + H + A, H, batch_first=True)
        self.output_layer = nn.Linear(2 * H, 6 * M + 1)
        self.reset_parameters()

    def reset_parameters(self):
        H = self.config.cell_size
        bound = 1 / math.sqrt(H)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)  # nn.LSTM's own default, for every layer alike
        # forget gates start open (bias 1) so gradients reach far back from the start
        layer1_bias = self.layer1_input.bias if self.config.task == "synthesis" else self.layer1.bias_ih_l0
        for bias in [layer1_bias, self.layer2.bias_ih_l0]:
            bias.data[H:2 * H] += 1.0
        if self.config.task == "synthesis":
            # start the window moving slowly: exp(-3) ~ 0.05 characters per point, near the
            # data's ~25 points per character
            self.window_layer.bias.data[2 * self.config.K:] = -3.0

    def initial_state(self, batch_size, device=None):
        weight = self.output_layer.weight
        zeros = lambda n: torch.zeros(batch_size, n, device=device or weight.device, dtype=weight.dtype)
        H = self.config.cell_size
        window = (zeros(self.config.K), zeros(self.window_size)) if self.config.task == "synthesis" else ()
        return State(zeros(H), zeros(H), zeros(H), zeros(H), *window)

    def forward(self, offsets, text=None, text_mask=None, state=None, return_phi=False):
        """Run the network over offsets (B, T, 3).

        synthesis also needs text (B, U) int64 codes and text_mask (B, U), 1 on real characters.
        Returns (y, state, phi): y (B, T, 6M+1) raw output activations (split_mixture turns them
        into a Mixture), the final State, and phi (B, T, U) when return_phi (else None).
        """
        if state is None:
            state = self.initial_state(offsets.shape[0], offsets.device)
        phi = kappa = window = None
        if self.config.task == "synthesis":
            h1, c1, kappa, windows, phi = self._layer1_with_window(offsets, text, text_mask, state)
            layer2_input = torch.cat([offsets, h1, windows], dim=-1)
            window = windows[:, -1]
        else:
            h1, c1 = self._lstm(self.layer1, offsets, state.h1, state.c1)
            layer2_input = torch.cat([offsets, h1], dim=-1)
        h2, c2 = self._lstm(self.layer2, layer2_input, state.h2, state.c2)
        y = self.output_layer(torch.cat([h1, h2], dim=-1))
        return y, State(h1[:, -1], c1, h2[:, -1], c2, kappa, window), (phi if return_phi else None)

    def _lstm(self, lstm, inputs, h0, c0):
        """One nn.LSTM layer (rand_write's layer 1, layer 2) over the whole sequence from (h0, c0):
        (h (B, T, H), its last c)."""
        h, (_, c_last) = lstm(inputs, (h0.unsqueeze(0), c0.unsqueeze(0)))
        return h, c_last[0]

    def _layer1_with_window(self, offsets, text, text_mask, state):
        """The recurrence of the synthesis model: LSTM layer 1 and the window, one step after another.

        Returns (h1 (B, T, H), last c1, last kappa, windows (B, T, A), phi (B, T, U)).
        """
        if text is None or text_mask is None:
            raise ValueError("the synthesis model needs text codes and a text mask")
        H = self.config.cell_size
        one_hot = F.one_hot(text, self.window_size).to(offsets.dtype)  # (B, U, A)
        text_mask = text_mask.to(offsets.dtype)
        input_gates = self.layer1_input(offsets)  # x's share of the gates, all steps at once
        h, c, kappa, window = state.h1, state.c1, state.kappa, state.window
        hs, windows, phis = [], [], []
        for x_gates in input_gates.unbind(1):
            z = x_gates + self.layer1_recurrent(torch.cat([h, window], dim=1))
            i, f, o = torch.sigmoid(z[:, :3 * H]).chunk(3, dim=1)
            c = f * c + i * torch.tanh(z[:, 3 * H:])
            h = o * torch.tanh(c)
            alpha_hat, beta_hat, kappa_hat = self.window_layer(h).chunk(3, dim=1)  # eqs. 48-50
            phi, kappa = window_weights(alpha_hat, beta_hat, kappa_hat, kappa, text_mask)
            window = torch.bmm(phi.unsqueeze(1), one_hot).squeeze(1)  # eq. 47
            hs.append(h), windows.append(window), phis.append(phi)
        return torch.stack(hs, 1), c, kappa, torch.stack(windows, 1), torch.stack(phis, 1)

    # ------------------------------------------------------------------------- generation

    @torch.inference_mode()
    def generate(self, start, length=None, text=None, text_mask=None, bias=0.0, generator=None,
                 max_points_per_char=MAX_POINTS_PER_CHAR, prime=None, prime_chars=None, uniforms=None):
        """Sample pen offsets point by point, all lines as one batch (Graves sections 4 and 5).

        start (B, 3): each line's first input row in normalised units (training lines all start
        with the zero offset; generate.Writer passes that row). rand_write writes `length` points
        per line. synthesis writes the texts given as codes (B, U) with text_mask (B, U); a line
        ends by Graves' rule (`finished`), or after max_points_per_char * (characters + 1) points,
        when it is `capped`. A finished line stops changing while the others go on.

        Priming (synthesis, section 5.5): prime, in place of start, holds for each line b the
        normalised offsets (T_b, 3) of a line of handwriting whose text is the first
        prime_chars[b] characters of text[b]. The network reads all rows but the last
        teacher-forced, in one forward call from the initial state; the last row then plays
        start's part, so the state (h, c, kappa, window) carries on into sampling the rest of the
        text. The step cap counts only the characters after the prime's.

        uniforms (points, B, 4), numbers in [0, 1), are the draws of each point (draw_noise's), in
        place of the generator's: a row for every point a line writes.

        Returns (offsets, phis, capped): offsets[b] float32 (T_b + 1, 3), normalised, starting
        with the line's first input row (start[b], or the last row of its prime); phis[b]
        (T_b, U_b), the window that produced each point (synthesis; else None); capped[b] bool.
        """
        synthesis = self.config.task == "synthesis"
        if synthesis and text is None:
            raise ValueError("a synthesis model writes a text: pass text and text_mask")
        if not synthesis and length is None:
            raise ValueError("a rand_write model needs a length (points per line)")
        if prime is not None and not synthesis:
            raise ValueError("only a synthesis model is primed: its window reads the prime's text")
        B = start.shape[0] if prime is None else len(prime)
        if synthesis:
            device = self.output_layer.weight.device
            text, text_mask = text.to(device), text_mask.to(device)
            lengths = text_mask.sum(1).long().cpu().numpy()
            chars_to_write = lengths if prime is None else lengths - np.asarray(prime_chars)
            caps = max_points_per_char * (chars_to_write + 1)
        else:
            caps = np.full(B, length - 1)
        x, state = self._first_input(start, text, text_mask, prime)
        if uniforms is None:  # drawn NOISE_BLOCK points at a time
            uniforms = (draw_noise(NOISE_BLOCK, B, generator, self.output_layer.weight.dtype).numpy()
                        for _ in itertools.count())
        else:
            uniforms = [checked_uniforms(uniforms, B, x.dtype)]
        offsets, phis, steps = self._sample_points(x, state, caps, text, text_mask, bias, uniforms)
        lines = [offsets[b, :steps[b] + 1] for b in range(B)]
        if not synthesis:
            return lines, None, [False] * B
        # a line ended by the rule stopped below its cap (the rule is checked before each point)
        capped = (steps >= caps).tolist()
        return lines, [phis[b, :steps[b], :lengths[b]] for b in range(B)], capped

    def _first_input(self, start, text, text_mask, prime):
        """Each line's first input row and the state it is read from, as arrays on the CPU (the
        generation step's own form): start from the initial state, or the last row of a prime
        after the network has read the rest of it."""
        device, dtype = self.output_layer.weight.device, self.output_layer.weight.dtype
        if prime is None:
            x, state = start.to(device, dtype).reshape(-1, 3), self.initial_state(start.shape[0], device)
        else:
            prime = [torch.as_tensor(p).to(device, dtype) for p in prime]
            x, state = torch.stack([p[-1] for p in prime]), self._read_primes(prime, text, text_mask)
        return x.cpu().numpy(), State(*(None if s is None else s.cpu().numpy() for s in state))

    def _read_primes(self, primes, text, text_mask):
        """The state after each line has read all rows but the last of its prime, as one batch.

        Each prime goes through forward() in one call from the initial state, line by line since
        primes differ in length (a padded text reads as the text itself: padding has phi = 0).
        """
        states = []
        for b, prime in enumerate(primes):
            state = self.initial_state(1, prime.device)
            if len(prime) > 1:
                _, state, _ = self(prime[None, :-1], text[b:b + 1], text_mask[b:b + 1], state=state)
            states.append(state)
        return State(*(torch.cat(parts) for parts in zip(*states)))

    def _sample_points(self, x, state, caps, text, text_mask, bias, uniforms):
        """Point after point from x (B, 3) and state until every line has finished or reached its
        cap, each point from a row of the blocks of uniforms (NumPy arrays (points, B, 4)) in turn.
        Returns offsets (B, T + 1, 3) float32 (x first), the window phi that fed each step (B, >= T,
        U) float32 (synthesis; else None) and each line's number of points T_b <= T (B,)."""
        B = len(x)
        points, phis = [x], []
        steps = np.zeros(B, dtype=np.int64)  # points generated per line
        done = np.zeros(B, dtype=bool)
        step = self.generation_step(text, text_mask)
        uniforms, block, first = iter(uniforms), [], 0
        for t in itertools.count():
            y, state, phi, phi_after = step(x, state)
            if text is not None:
                # phi(t, .) was computed after reading point t and decides point t+1: if the
                # window has moved past the text, the line ends here, without that point
                done |= finished(phi, phi_after)
                phis.append(phi)
                if done.all():
                    break
            while t - first == len(block):  # the next block of draws
                block, first = next(uniforms, None), t
                if block is None:
                    raise ValueError(f"uniforms: {t} rows, and lines {np.flatnonzero(~done).tolist()} go on: "
                                     "give a row for each point a line writes (up to its step cap)")
            x = step.sample(y, bias, block[t - first])
            points.append(x)
            steps += ~done
            done |= steps >= caps
            if done.all():
                break
        phis = np.stack(phis, axis=1).astype(np.float32) if phis else None
        return np.stack(points, axis=1).astype(np.float32), phis, steps

    def generation_step(self, text=None, text_mask=None):
        """The step generate() writes with: one point through forward() here (kernels.py has a faster one)."""
        return ForwardStep(self, text, text_mask)


class ForwardStep:
    """One point of generation through forward(), one time step long: the network's output y for
    the next point, the new state, and for synthesis the window phi that fed this step and its
    weight one position past each line's text (for Graves' stopping rule; forward() masks that
    position to zero, so it is read here from the same window parameters). Arrays in and out: x
    (B, 3) and a State of arrays on the CPU, as generate() keeps them."""

    def __init__(self, model, text=None, text_mask=None):
        self.model, self.text, self.text_mask = model, text, text_mask
        self.lengths = None if text_mask is None else text_mask.sum(1).long().unsqueeze(1)

    def __call__(self, x, state):
        device = self.model.output_layer.weight.device
        x, state = torch.from_numpy(x).to(device), State(*(None if s is None else torch.from_numpy(s).to(device)
                                                           for s in state))
        y, new_state, phi = self.model(x[:, None], self.text, self.text_mask, state=state, return_phi=True)
        arrays = lambda *tensors: [None if t is None else t.cpu().numpy() for t in tensors]
        if self.text is None:
            return *arrays(y[:, 0]), State(*arrays(*new_state)), None, None
        alpha_hat, beta_hat, kappa_hat = self.model.window_layer(new_state.h1).chunk(3, dim=1)
        past_text = torch.ones(len(x), self.text.shape[1] + 1, dtype=x.dtype, device=device)
        phi_all, _ = window_weights(alpha_hat, beta_hat, kappa_hat, state.kappa, past_text)
        return *arrays(y[:, 0]), State(*arrays(*new_state)), *arrays(phi[:, 0], phi_all.gather(1, self.lengths)[:, 0])

    @staticmethod
    def sample(y, bias, noise):
        """One point per line from the raw output y (B, 6M+1) with Graves' bias, given the noise."""
        return sample_mixture(split_mixture(torch.from_numpy(y), bias), noise=torch.from_numpy(noise)).numpy()
