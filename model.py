"""The two handwriting networks of Graves (2013, arXiv:1308.0850) and their loss.

Both models read pen offsets x_t = [end_of_stroke, dx, dy] and predict the next one through a
mixture density output: M bivariate Gaussians for (dx, dy) and a Bernoulli for end_of_stroke.

    rand_write:  x -> LSTM1 -> LSTM2 -> output        (x feeds both layers; the output layer
                                                      sees both layers: "skip connections")
    synthesis:   the same, plus a soft window over the one-hot text (section 5): layer 1's
                 output at step t places K Gaussians on the character positions; their weights
                 phi(t, u) average the characters into a window vector w_t, which feeds layer 2
                 at step t and layer 1 at step t+1.

Speed: only what truly depends on the previous step runs in a Python loop. For rand_write both
layers are fused nn.LSTMs. For synthesis, layer 1 and the window form the recurrence, so they loop
(with x's share of layer 1's gates computed for all steps at once); layer 2 and the output layer
see only values the loop has already produced, so they run afterwards as one fused nn.LSTM and one
matrix product over the whole sequence. That recurrence has a hand-written backward pass
(WindowedLSTM); reference_recurrence beside it is the same maths written plainly, for the tests.

The model owns its sampling: generate() writes a batch of lines point by point, after reading a
line of handwriting to write on from if given one (a prime; generate.Writer adds the alphabet and
the normalisation that a checkpoint carries). Each point is one GenerationStep, the same maths as
forward() in NumPy on the CPU, where a step's many small operations cost least.
"""
import functools
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


# ----------------------------------------------------------------------------- precision

def bf16_supported(device):
    """Whether `device` runs bf16 matrix products (and oneDNN's bf16 LSTM, on a CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def uses_bf16(device, precision):
    """Whether `precision` ("auto", "fp32", "bf16") means bf16 on `device`; refuses an impossible bf16."""
    if precision == "bf16" and not bf16_supported(device):
        raise SystemExit(f"--precision bf16: this {torch.device(device).type.upper()} has no bf16 support "
                         "(a CPU needs AVX-512 with bf16, or AMX); use --precision fp32 or auto.")
    return bf16_supported(device) if precision == "auto" else precision == "bf16"


def autocast(device, precision):
    """The autocast context for `precision`: bf16 matrix products, or none for fp32.

    "auto" is bf16 where the hardware has it. Measured for synthesis on IAM-OnDB (README, Speed):
    over five seeds bf16 ended 200 steps no worse than fp32; it moves a batch's gradient by
    0.4-12% of its size where the next batch moves it by 31-188%; and it evaluates the same
    weights within 0.3 nats per line of fp32. The loss, and the window's state, stay fp32 anyway.
    """
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=uses_bf16(device, precision))


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


def draw_noise(steps, batch_size, generator=None, dtype=torch.float32, device=None):
    """The randomness of `steps` points of `batch_size` lines, drawn at once: (steps, B, 4), per
    point two uniforms (which component; whether the pen lifts) and two standard normals (dx, dy).
    Drawing it in blocks, not point by point, spares sampling two calls into the generator a point."""
    uniforms = torch.rand(steps, batch_size, 2, generator=generator, dtype=dtype, device=device)
    normals = torch.randn(steps, batch_size, 2, generator=generator, dtype=dtype, device=device)
    return torch.cat([uniforms, normals], dim=-1)


def sample_mixture(mix, generator=None, noise=None):
    """Draw one point [end_of_stroke, dx, dy] per batch row from a Mixture of shape (B, M).

    noise (B, 4) is draw_noise's [u_component, u_end_of_stroke, n_x, n_y] (drawn here if None):
    the component is the first whose cumulative weight passes u_component (the inverse CDF), and
    (dx, dy) = mu + the Cholesky factor of the component's covariance times (n_x, n_y).
    """
    if noise is None:
        noise = draw_noise(1, mix.mu_x.shape[0], generator, mix.mu_x.dtype, mix.mu_x.device)[0]
    u_component, u_end_of_stroke, n_x, n_y = noise.unbind(-1)
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


# ----------------------------------------------------------------------------- attention window

# exp(x) for x below this is under float32's smallest normal number (1.2e-38): such a term of phi
# adds nothing to the window that a float can hold beside the terms that matter.
EXP_FLOOR = -87.0


def window_exp(x):
    """exp(x) of the window's exponents, floored at EXP_FLOOR. Most positions lie far from the
    window, and CPUs are slow on the rest: torch.exp takes a scalar path for x < -88 (60x slower
    per element on an AMX Xeon), and results in the denormal range cost a microcode assist each."""
    return torch.exp(x.clamp(min=EXP_FLOOR))


def window_weights(alpha_hat, beta_hat, kappa_hat, kappa_prev, text_mask, positions=None):
    """Graves eqs. 46-51 for one step.

    alpha_hat, beta_hat, kappa_hat, kappa_prev: (B, K); text_mask: (B, U) float, 1 on real
    characters; positions: 0, 1, ..., U-1 (made here if None). Returns phi (B, U) -- the weight of
    each character -- and the new kappa (B, K).
    """
    alpha, beta = alpha_hat.exp(), beta_hat.exp()
    kappa = kappa_prev + kappa_hat.exp()  # the window only moves forwards
    u = torch.arange(text_mask.shape[1], device=text_mask.device, dtype=kappa.dtype) if positions is None else positions
    if torch.compiler.is_compiling():
        # one Gaussian at a time, each term (B, U): inductor vectorises a sum over the K = 10
        # Gaussians along K, in masked 16-wide vectors, 2.4x slower than these terms along U
        phi = sum(alpha[:, k, None] * window_exp(-beta[:, k, None] * (kappa[:, k, None] - u) ** 2)
                  for k in range(kappa.shape[1]))
    else:
        # (B, K, 1) against (U,) -> (B, K, U), summed over the K Gaussians
        phi = (alpha.unsqueeze(-1) * window_exp(-beta.unsqueeze(-1) * (kappa.unsqueeze(-1) - u) ** 2)).sum(1)
    return phi * text_mask, kappa


# The step cap: a line that has not finished by Graves' rule after this many points per character
# (+1) is stopped and reported as stalled. Real lines take a median of 21 points per character, 41
# (training) and 45 (validation) at the 99.9th percentile; sampling with a bias writes with shorter
# steps, up to ~53 for a model of epoch 12 at bias 1-2, its window still moving. Nearly twice the
# real lines' pace leaves such slow lines alone and still catches a window that does not move on.
MAX_POINTS_PER_CHAR = 80

# generate() draws its randomness for this many points at a time (draw_noise); part of what a
# seed means: changing it changes the strokes written for a seed
NOISE_BLOCK = 256


# ----------------------------------------------------------------------------- the network

def pen_projection(offsets, weight, bias):
    """F.linear(offsets, weight, bias) for the pen's 3 features: the same values, in a form whose
    backward pass is fast. nn.Linear's backward keeps the weight's layout and takes its gradient as
    (grad^T @ offsets)^T, a (4H x BT) by (BT x 3) product that a CPU runs many times slower than
    offsets^T @ grad, the one autograd picks when the product's weight is a contiguous (3, 4H).
    Always in full precision: with 3 inputs the product is bound by memory, not arithmetic, so bf16
    would only add two conversions of the (B, T, 4H) result (forward and backward)."""
    with torch.autocast(offsets.device.type, enabled=False):
        flat = torch.addmm(bias, offsets.reshape(-1, offsets.shape[-1]).to(weight.dtype), weight.t().contiguous())
    return flat.view(*offsets.shape[:-1], -1)


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
            # layer 1 as explicit weights: its input gates for x are computed for all steps at
            # once, those for [h1_{t-1}, w_{t-1}] inside the loop in one product
            self.layer1_input = nn.Linear(3, 4 * H)
            self.layer1_recurrent = nn.Linear(H + A, 4 * H, bias=False)
            self.window_layer = nn.Linear(H, 3 * config.K)
        else:
            self.layer1 = nn.LSTM(3, H, batch_first=True)
        self.layer2 = nn.LSTM(3 + H + A, H, batch_first=True)
        self.output_layer = nn.Linear(2 * H, 6 * M + 1)
        self.compile_recurrence = False  # train.py --compile: torch.compile the stepped recurrences
        self.stepped_lstm = None  # nn.LSTM layers as SteppedLSTM? None: where faster (bf16 on an AMX CPU)
        self.reset_parameters()

    def reset_parameters(self):
        H = self.config.cell_size
        bound = 1 / math.sqrt(H)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)  # nn.LSTM's own default, for every layer alike
        # forget gates start open (bias 1) so gradients reach far back from the start
        for bias in self._forget_gate_biases():
            bias.data[H:2 * H] += 1.0
        if self.config.task == "synthesis":
            # start the window moving slowly: exp(-3) ~ 0.05 characters per point, near the
            # data's ~25 points per character
            self.window_layer.bias.data[2 * self.config.K:] = -3.0

    def _forget_gate_biases(self):
        if self.config.task == "synthesis":
            yield self.layer1_input.bias
        else:
            yield self.layer1.bias_ih_l0
        yield self.layer2.bias_ih_l0

    def initial_state(self, batch_size, device=None):
        weight = self.output_layer.weight
        zeros = lambda n: torch.zeros(batch_size, n, device=device or weight.device, dtype=weight.dtype)
        H = self.config.cell_size
        if self.config.task == "synthesis":
            return State(zeros(H), zeros(H), zeros(H), zeros(H), zeros(self.config.K), zeros(self.window_size))
        return State(zeros(H), zeros(H), zeros(H), zeros(H))

    def forward(self, offsets, text=None, text_mask=None, state=None, return_phi=False):
        """Run the network over offsets (B, T, 3).

        synthesis also needs text (B, U) int64 codes and text_mask (B, U), 1 on real characters.
        Returns (y, state, phi): y (B, T, 6M+1) raw output activations (split_mixture turns them
        into a Mixture), the final State, and phi (B, T, U) when return_phi (else None).
        """
        B = offsets.shape[0]
        if state is None:
            state = self.initial_state(B, offsets.device)
        phi = None
        if self.config.task == "synthesis":
            h1, c1, kappa, windows, phi = self._layer1_with_window(offsets, text, text_mask, state, return_phi)
            layer2_input = torch.cat([offsets, h1, windows], dim=-1)
            window, last_kappa = windows[:, -1], kappa
        else:
            h1, c1_last = self._lstm(self.layer1, offsets, state.h1, state.c1)
            layer2_input = torch.cat([offsets, h1], dim=-1)
        h2, c2_last = self._lstm(self.layer2, layer2_input, state.h2, state.c2)
        y = self.output_layer(torch.cat([h1, h2], dim=-1))
        if self.config.task == "synthesis":
            new_state = State(h1[:, -1], c1, h2[:, -1], c2_last, last_kappa, window)
        else:
            new_state = State(h1[:, -1], c1_last, h2[:, -1], c2_last)
        return y, new_state, phi

    # ------------------------------------------------------------------------- generation

    @torch.inference_mode()
    def generate(self, start, length=None, text=None, text_mask=None, bias=0.0, generator=None,
                 max_points_per_char=MAX_POINTS_PER_CHAR, prime=None, prime_chars=None):
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
        device, dtype = self.output_layer.weight.device, self.output_layer.weight.dtype
        if synthesis:
            text, text_mask = text.to(device), text_mask.to(device)
            lengths = text_mask.sum(1).long().cpu().numpy()
            chars_to_write = lengths if prime is None else lengths - np.asarray(prime_chars)
            caps = max_points_per_char * (chars_to_write + 1)
        else:
            caps = np.full(B, length - 1)
        if prime is None:
            x, state = start.to(device, dtype).reshape(B, 3), self.initial_state(B, device)
        else:
            prime = [torch.as_tensor(p).to(device, dtype) for p in prime]
            x, state = torch.stack([p[-1] for p in prime]), self._read_primes(prime, text, text_mask)
        # from here on, arrays on the CPU (GenerationStep says why)
        x, state = x.cpu().numpy(), State(*(None if s is None else s.cpu().numpy() for s in state))
        points, phis = [x], []
        steps = np.zeros(B, dtype=np.int64)  # points generated per line
        done = np.zeros(B, dtype=bool)
        step = GenerationStep(self, text, text_mask)
        for t in itertools.count():
            if t % NOISE_BLOCK == 0:
                noise = draw_noise(NOISE_BLOCK, B, generator, dtype).numpy()
            y, state, phi, phi_after = step(x, state)
            if synthesis:
                # phi(t, .) was computed after reading point t and decides point t+1: if the
                # window has moved past the text, the line ends here, without that point
                done |= finished(phi, phi_after)
                phis.append(phi)
            x = step.sample(y, bias, noise[t % NOISE_BLOCK])
            points.append(x)
            steps += ~done
            done |= steps >= caps
            if done.all():
                break
        offsets = np.stack(points, axis=1).astype(np.float32)
        # a line ended by the rule stopped below its cap (the rule is checked before each point)
        capped = (steps >= caps).tolist() if synthesis else [False] * B
        lines = [offsets[b, :steps[b] + 1] for b in range(B)]
        if not synthesis:
            return lines, None, capped
        phis = np.stack(phis, axis=1).astype(np.float32)
        return lines, [phis[b, :steps[b], :lengths[b]] for b in range(B)], capped

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

    def _lstm(self, lstm, inputs, h0, c0):
        """One nn.LSTM layer (rand_write's layer 1, layer 2) over the whole sequence from (h0, c0):
        (h (B, T, H), its last c). Run by nn.LSTM itself (oneDNN's fused LSTM on a CPU), or as
        SteppedLSTM, the inputs' share of the gates computed first for all steps at once: on the
        AMX Xeon oneDNN's bf16 LSTM runs little faster than its fp32 one, and SteppedLSTM's bf16
        products, compiled, ran layer 2 (forward and backward, 50 lines of 700 points) in 1.10 s
        against 1.68 at one thread, 0.77 against 0.99 at two."""
        dtype, device_type = lstm.weight_hh_l0.dtype, inputs.device.type
        matmul_dtype = recurrence_matmul_dtype(device_type, dtype)
        stepped = self.stepped_lstm
        if stepped is None:
            stepped = matmul_dtype == torch.bfloat16 and device_type == "cpu" and cpu_has_amx()
        if not stepped:
            h, (_, c_last) = lstm(inputs, (h0.unsqueeze(0), c0.unsqueeze(0)))
            return h, c_last[0]
        weight_ih, bias = to_ifog(lstm.weight_ih_l0), to_ifog(lstm.bias_ih_l0 + lstm.bias_hh_l0)
        project = pen_projection if inputs.shape[-1] == 3 else F.linear  # rand_write's layer 1 reads only the pen
        input_gates = project(inputs, weight_ih, bias)
        return SteppedLSTM.apply(input_gates, h0.to(dtype), c0.to(dtype), to_ifog(lstm.weight_hh_l0),
                                 matmul_dtype, self.compile_recurrence)

    def _layer1_with_window(self, offsets, text, text_mask, state, return_phi):
        """The recurrence of the synthesis model: LSTM layer 1 and the window, step by step."""
        if text is None or text_mask is None:
            raise ValueError("the synthesis model needs text codes and a text mask")
        dtype = self.layer1_input.weight.dtype  # the recurrence keeps its state in full precision
        input_gates = pen_projection(offsets, self.layer1_input.weight, self.layer1_input.bias)  # x's share, all steps
        matmul_dtype = recurrence_matmul_dtype(offsets.device.type, dtype)
        h1, windows, c1, kappa, phi = WindowedLSTM.apply(
            input_gates, state.h1.to(dtype), state.c1.to(dtype), state.kappa.to(dtype), state.window.to(dtype),
            self.layer1_recurrent.weight, self.window_layer.weight, self.window_layer.bias,
            text, text_mask.to(dtype), matmul_dtype, self.compile_recurrence)
        return h1, c1, kappa, windows, (phi if return_phi else None)


class GenerationStep:
    """One point of generation: the network's step from the last point, as forward() computes it
    (tests/test_generate.py holds the two together), on the CPU whatever the model's device.

    Sampling is a chain of single steps of a small batch, where each operation's fixed cost, not
    its arithmetic, sets the pace: forward() takes ten matrix products and some sixty small
    operations a point, and a PyTorch operation costs a few microseconds before it does anything,
    a NumPy one about one. So the small operations are NumPy's, on arrays, and so are the four
    matrix products of a single line (OpenBLAS's matrix-vector product ran twice as fast as
    PyTorch's on an AVX-512 Xeon); a batch's stay PyTorch's, on zero-copy tensor views of the
    arrays (there OpenBLAS's small-batch product was 3x slower). The weights are packed once:
    each LSTM layer's gates come from one product over its inputs joined ([x, h1, w] for layer 1,
    [x, h1, w, h2] for layer 2, gates ordered (i, f, o, g) so that one sigmoid covers three), and
    the window is read once, one position past the text too, for Graves' stopping rule (the
    position forward() masks to zero). Arrays in, arrays out: x (B, 3), a State of arrays.
    """

    def __init__(self, model, text=None, text_mask=None):
        array = lambda t: t.detach().cpu().numpy()
        self.synthesis = model.config.task == "synthesis"
        # layer 2's inputs [x, h1, (w)], then h2
        self.layer2 = self.packed(model.layer2)
        self.output = self.layer(model.output_layer.weight.t(), model.output_layer.bias)
        if self.synthesis:  # inputs [x, h1, w], gates already (i, f, o, g)
            weight = torch.cat([model.layer1_input.weight, model.layer1_recurrent.weight], 1)
            self.layer1 = self.layer(weight.t(), model.layer1_input.bias)
            self.window_layer = self.layer(model.window_layer.weight.t(), model.window_layer.bias)
            self.one_hot = array(F.one_hot(text, model.window_size).to(model.output_layer.weight.dtype))  # (B, U, A)
            self.text_mask = array(text_mask).astype(self.one_hot.dtype)
            self.lengths = array(text_mask.sum(1)).astype(np.int64)  # the position past each text
            self.rows = np.arange(len(self.lengths))
            # every position, one past the longest text included
            self.positions = np.arange(text.shape[1] + 1, dtype=self.one_hot.dtype)
        else:  # inputs [x], then h1
            self.layer1 = self.packed(model.layer1)

    @staticmethod
    def layer(weight, bias):
        """A layer's (inputs, outputs) weight and its bias, as contiguous CPU tensors and as NumPy
        views of the same memory."""
        weight, bias = weight.detach().cpu().contiguous(), bias.detach().cpu()
        return weight, bias, weight.numpy(), bias.numpy()

    @classmethod
    def packed(cls, lstm):
        """An nn.LSTM's weights as one layer over [its input, h], its gates reordered from
        nn.LSTM's (i, f, g, o) to (i, f, o, g)."""
        weight = to_ifog(torch.cat([lstm.weight_ih_l0, lstm.weight_hh_l0], 1)).t()
        return cls.layer(weight, to_ifog(lstm.bias_ih_l0 + lstm.bias_hh_l0))

    @staticmethod
    def product(inputs, layer):
        """inputs @ weight + bias for an array of inputs: NumPy's for one line, PyTorch's for more."""
        weight, bias, weight_array, bias_array = layer
        if len(inputs) == 1:
            return inputs @ weight_array + bias_array
        return torch.addmm(bias, torch.from_numpy(inputs), weight).numpy()

    @staticmethod
    def cell(z, c):
        """lstm_cell in NumPy: h and c from the pre-activations z (B, 4H), gates (i, f, o, g).
        sigmoid(z) = (1 + tanh(z / 2)) / 2, which, unlike 1 / (1 + exp(-z)), never overflows."""
        H = c.shape[1]
        gates = np.tanh(z[:, :3 * H] * 0.5)
        gates += 1
        gates *= 0.5
        c = gates[:, H:2 * H] * c + gates[:, :H] * np.tanh(z[:, 3 * H:])
        return gates[:, 2 * H:] * np.tanh(c), c

    def __call__(self, x, state):
        """From point x (B, 3) and the state after the points before it: the raw output y (B, 6M+1)
        that predicts the next point, the new State, and for synthesis phi (B, U), the window that
        fed this step, and phi_after (B,), its weight one position past each line's text."""
        phi = phi_after = kappa = window = None
        if self.synthesis:
            h1, c1 = self.cell(self.product(np.concatenate([x, state.h1, state.window], 1), self.layer1), state.c1)
            # alpha, beta and kappa's step: the window layer's output, all exponentiated (eqs. 48-50)
            alpha_beta_step, K = np.exp(self.product(h1, self.window_layer)), state.kappa.shape[1]
            alpha, beta, kappa_step = alpha_beta_step[:, :K], alpha_beta_step[:, K:2 * K], alpha_beta_step[:, 2 * K:]
            kappa = state.kappa + kappa_step
            # eq. 46 at every position: (B, 1, K) @ (B, K, U + 1), the sum over the K Gaussians
            exponent = -beta[:, :, None] * (kappa[:, :, None] - self.positions) ** 2
            phi_all = (alpha[:, None, :] @ np.exp(np.maximum(exponent, EXP_FLOOR)))[:, 0]
            phi = phi_all[:, :-1] * self.text_mask
            phi_after = phi_all[self.rows, self.lengths]
            window = (phi[:, None, :] @ self.one_hot)[:, 0]
            layer2_input = np.concatenate([x, h1, window, state.h2], 1)
        else:
            h1, c1 = self.cell(self.product(np.concatenate([x, state.h1], 1), self.layer1), state.c1)
            layer2_input = np.concatenate([x, h1, state.h2], 1)
        h2, c2 = self.cell(self.product(layer2_input, self.layer2), state.c2)
        y = self.product(np.concatenate([h1, h2], 1), self.output)
        return y, State(h1, c1, h2, c2, kappa, window), phi, phi_after

    @staticmethod
    def sample(y, bias, noise):
        """sample_mixture(split_mixture(y, bias), noise=noise) in NumPy and in a third of the
        operations: the component is drawn first, from the weights alone (softmax's normaliser
        cancels against the total the uniform is scaled by), and only its parameters are squashed."""
        B = y.shape[0]
        params = y[:, 1:].reshape(B, 6, -1)  # weight logit, mu_x, mu_y, log sigma_x, log sigma_y, rho logit
        logits = params[:, 0] * (1 + bias)
        cdf = np.exp(logits - logits.max(1, keepdims=True)).cumsum(1)
        component = np.minimum((cdf < noise[:, :1] * cdf[:, -1:]).sum(1), params.shape[2] - 1)
        mu_x, mu_y, log_sigma_x, log_sigma_y, rho_logit = params[np.arange(B), 1:, component].T
        rho, n_x = np.tanh(rho_logit), noise[:, 2]
        dx = mu_x + np.exp(log_sigma_x - bias) * n_x
        dy = mu_y + np.exp(log_sigma_y - bias) * (rho * n_x + np.sqrt(1 - rho * rho) * noise[:, 3])
        # u < sigmoid(l), the sigmoid in its tanh form (no overflow)
        end_of_stroke = 2 * noise[:, 1] - 1 < np.tanh(y[:, 0] * 0.5)
        return np.stack([end_of_stroke.astype(y.dtype), dx, dy], axis=1)


def finished(phi_text, phi_after):
    """Graves' stopping rule: phi of the position after the text beats phi of every real character.

    phi_text (B, U): window weights of the characters (0 on padding, which never wins, as phi >= 0);
    phi_after (B,): the weight the same window gives position U_b, just past line b's text.
    Arrays; returns (B,) bool.
    """
    return phi_after > phi_text.max(axis=-1)


# ----------------------------------------------------------------------------- the LSTM cell
#
# Inside the model's own recurrences (layer 1 and the window, SteppedLSTM, GenerationStep) the
# gates are ordered (i, f, o, g), so that one sigmoid covers three of them; nn.LSTM orders its
# weights' rows (i, f, g, o), and to_ifog reorders them.

def to_ifog(gate_rows):
    """An nn.LSTM weight or bias, its 4H gate rows (dim 0) reordered from (i, f, g, o) to (i, f, o, g)."""
    i, f, g, o = gate_rows.chunk(4, dim=0)
    return torch.cat([i, f, o, g], dim=0)


def fast_tanh(x):
    """tanh(x) as 2 sigmoid(2x) - 1: within 2e-7 of torch.tanh in fp32 (an absolute error, near
    x = 0), and faster: of the LSTM cell's elementwise work, tanh cost most on these CPUs (50 x
    1,600 values compiled, one thread of an AVX-512 EPYC: 147 us, this 64 us)."""
    return 2 * torch.sigmoid(2 * x) - 1


def lstm_cell(z, c):
    """h, c and the gate activations (i, f, o, g) (B, 4H) from the pre-activations z (fresh: run
    eagerly, the activations overwrite it, sparing a copy; compiled, the joined activations are
    one fused kernel's output, which ran a layer-1 step 14-18% faster than the in-place form)."""
    H = c.shape[1]
    if torch.compiler.is_compiling():
        act = torch.cat([z[:, :3 * H].sigmoid(), fast_tanh(z[:, 3 * H:])], dim=1)
    else:
        act = z
        act[:, :3 * H].sigmoid_()
        act[:, 3 * H:].mul_(2).sigmoid_().mul_(2).sub_(1)  # fast_tanh, in place
    i, f, o, g = act.chunk(4, dim=1)
    c = torch.addcmul(f * c, i, g)
    return o * fast_tanh(c), c, act


def lstm_cell_backward(dh, dc, act, c, c_prev):
    """The chain rule back through lstm_cell: from the gradients of h and c (all their uses), those
    of the gate pre-activations z and of c_prev. act: the gates lstm_cell returned; c: its new c."""
    i, f, o, g = act.chunk(4, dim=1)
    tanh_c = fast_tanh(c)
    dc = dc + dh * o * (1 - tanh_c ** 2)
    dz = torch.cat([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                    dh * tanh_c * o * (1 - o), dc * i * (1 - g ** 2)], dim=1)
    return dz, dc * f


# ----------------------------------------------------------------------------- layer 1 and the window
#
# The recurrence twice: reference_recurrence, written plainly under autograd, says what is
# computed; WindowedLSTM computes the same with a hand-written backward pass, several times faster.
# tests/test_model.py holds the two to each other, values and gradients.

def reference_recurrence(input_gates, h, c, kappa, window, recurrent_weight, window_weight, window_bias,
                         one_hot, text_mask):
    """Layer 1 and the window, one time step after another, as autograd sees them.

    input_gates (B, T, 4H): x's share of layer 1's gates, ordered (i, f, o, g); h, c (B, H),
    kappa (B, K) and window (B, A): the state before the first step; recurrent_weight (4H, H + A)
    acts on [h_{t-1}, w_{t-1}]. Returns (h (B, T, H), windows (B, T, A), last c, last kappa, phi (B, T, U)).
    """
    H = h.shape[1]
    hs, windows, phis = [], [], []
    for x_gates in input_gates.unbind(1):
        z = x_gates + torch.cat([h, window], dim=1) @ recurrent_weight.t()
        i, f, o = torch.sigmoid(z[:, :3 * H]).chunk(3, dim=1)
        g = torch.tanh(z[:, 3 * H:])
        c = f * c + i * g
        h = o * torch.tanh(c)
        alpha_hat, beta_hat, kappa_hat = F.linear(h, window_weight, window_bias).chunk(3, dim=1)
        phi, kappa = window_weights(alpha_hat, beta_hat, kappa_hat, kappa, text_mask)
        window = torch.bmm(phi.unsqueeze(1), one_hot).squeeze(1)
        hs.append(h), windows.append(window), phis.append(phi)
    return torch.stack(hs, 1), torch.stack(windows, 1), c, kappa, torch.stack(phis, 1)


def _forward_step(x_gates, h, c, kappa, window, W, window_weight, window_bias, text, text_mask,
                  matmul_dtype: torch.dtype):
    """One step of layer 1 and the window (W: the recurrent weight, transposed, in matmul_dtype).

    w = phi @ one_hot(text) (reference_recurrence) is summed here into each character's slot by
    its code, and _backward_step gathers: the one-hot (B, U, A) array, about a megabyte for a
    batch, read every step, made the window's kernels 1.4x slower."""
    z = x_gates + torch.cat([h, window], dim=1).to(matmul_dtype).mm(W).to(h.dtype)
    h, c, act = lstm_cell(z, c)
    p = torch.addmm(window_bias, h, window_weight.t())
    alpha_hat, beta_hat, kappa_hat = p.chunk(3, dim=1)
    phi, kappa = window_weights(alpha_hat, beta_hat, kappa_hat, kappa, text_mask)
    window = torch.zeros_like(window).scatter_add_(1, text, phi)
    return h, c, kappa, window, act, p, phi


def _backward_step(grad_h, grad_window, dh, dw, dc, dkappa, act, c, c_prev, p, kappa, W, window_weight,
                   text, text_mask, matmul_dtype: torch.dtype):
    """The chain rule back through one _forward_step.

    dh, dw, dc, dkappa arrive from step t+1 (for h_t, w_t, c_t, kappa_t); returns the gradients
    of the gate pre-activations z_t (in matmul_dtype, as the products use it: kept so, a batch's
    dz is half the memory under bf16 and needs no second conversion, which ran layer 1's backward
    pass 1.04x faster) and window parameters p_t, and dh, dw, dc, dkappa for step t-1.
    """
    H = c.shape[1]
    # window: w_a = sum of phi_u over the positions u of character a,
    # phi_u = mask_u sum_k alpha_k exp(-beta_k (kappa_k - u)^2)
    dw = grad_window + dw
    dphi = dw.gather(1, text) * text_mask  # (B, U)
    alpha, beta, kappa_step = p.exp().chunk(3, dim=1)
    positions = torch.arange(text_mask.shape[1], device=c.device, dtype=c.dtype)
    distance = kappa.unsqueeze(2) - positions  # (B, K, U)
    weighted = dphi.unsqueeze(1) * alpha.unsqueeze(2) * window_exp(-beta.unsqueeze(2) * distance ** 2)
    d_alpha_hat = weighted.sum(2)  # d alpha / d alpha_hat = alpha
    d_beta_hat = -(weighted * distance ** 2).sum(2) * beta
    dkappa = dkappa - 2 * (weighted * distance).sum(2) * beta  # kappa_t also feeds kappa_{t+1}
    dp = torch.cat([d_alpha_hat, d_beta_hat, dkappa * kappa_step], dim=1)
    dz, dc = lstm_cell_backward(grad_h + dh + dp.mm(window_weight), dc, act, c, c_prev)
    dz = dz.to(matmul_dtype)
    d_previous = dz.mm(W).to(dc.dtype)
    return dz, dp, d_previous[:, :H], d_previous[:, H:], dc, dkappa


def recurrence_matmul_dtype(device_type, dtype):
    """The dtype of the matrix products inside a stepped recurrence: autocast's (bf16) exactly when
    autocast is on, else the weights' own; the state itself always stays in `dtype`."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else dtype


@functools.cache
def _compiled(step):
    # dynamic: batch size and text length change from batch to batch
    return torch.compile(step, dynamic=True)


# WindowedLSTM and SteppedLSTM call their step functions on runs of this many time steps: each
# call of a compiled function costs about 0.1 ms of its own (guards, wrapper) beside a layer-1
# step's ~0.8. Four steps a call ran layer 1's forward loop 1.15x faster than one (AVX-512 EPYC);
# eight, layer 1 forward and back 1.05x faster than four (AMX Xeon, one thread, SPEED.md).
STEPS_PER_CALL = 8


def step_runs(T, n=STEPS_PER_CALL):
    """(start, stop) of each run of steps through T time steps: the first step alone, runs of n,
    and the last one to n steps one by one. torch.compile makes a version of a step function for
    one step and one for n (and one for the very first step, whose slices start at offset 0), and
    every batch calls all of them: they are all compiled in the first batch."""
    if T < 3:
        return [(t, t + 1) for t in range(T)]
    full = (T - 2) // n * n
    starts = [0] + list(range(1, 1 + full, n)) + list(range(1 + full, T))
    return list(zip(starts, starts[1:] + [T]))


def _forward_steps(input_gates, h, c, kappa, window, W, window_weight, window_bias, text, text_mask,
                   matmul_dtype: torch.dtype):
    """_forward_step through each step of input_gates (B, n, 4H): a list of every step's outputs."""
    outputs = []
    for x_gates in input_gates.unbind(1):
        outputs.append(_forward_step(x_gates, h, c, kappa, window, W, window_weight, window_bias, text,
                                     text_mask, matmul_dtype))
        h, c, kappa, window = outputs[-1][:4]
    return outputs


def _backward_steps(grad_hs, grad_ws, d_previous, dc, dkappa, acts, cs, c_before, ps, kappas, W, window_weight,
                    text, text_mask, matmul_dtype: torch.dtype):
    """_backward_step back through a run of n steps, from its last: grad_hs, grad_ws (B, n, .) and
    the steps' saved acts, cs, ps, kappas (n each); d_previous: the gradient of the last step's
    [h, w] from the step after it (B, H + A); c_before: the c of the step before the run. Returns
    the steps' dz and dp (lists, in step order), and d_previous, dc, dkappa for that step."""
    H = c_before.shape[1]
    dh, dw = d_previous[:, :H], d_previous[:, H:]
    n = len(acts)
    dzs, dps = [None] * n, [None] * n
    for i in range(n - 1, -1, -1):
        dzs[i], dps[i], dh, dw, dc, dkappa = _backward_step(
            grad_hs[:, i], grad_ws[:, i], dh, dw, dc, dkappa, acts[i], cs[i], cs[i - 1] if i > 0 else c_before,
            ps[i], kappas[i], W, window_weight, text, text_mask, matmul_dtype)
    return dzs, dps, torch.cat([dh, dw], 1), dc, dkappa


class WindowedLSTM(torch.autograd.Function):
    """Layer 1 of the synthesis model and its window over all time steps, with a hand-written
    backward pass through time.

    Autograd would record some thirty small operations per time step and replay them one by one;
    here the forward loop records nothing, and the backward loop runs the chain rule directly,
    leaving the weight gradients to one large matrix product each after the loop. Gates are
    ordered (i, f, o, g), as in lstm_cell; the text comes as its codes (B, U), int64, where
    reference_recurrence takes their one-hot vectors. With `compile`, torch.compile fuses
    each step's elementwise operations, the steps taken in runs (step_runs) of up to
    STEPS_PER_CALL a call (opt-in: compiling takes a while at the start).
    tests/test_model.py checks values and gradients against reference_recurrence, and gradcheck.
    """

    @staticmethod
    def forward(ctx, input_gates, h, c, kappa, window, recurrent_weight, window_weight, window_bias,
                text, text_mask, matmul_dtype, compile=False):
        steps = _compiled(_forward_steps) if compile else _forward_steps
        W = recurrent_weight.to(matmul_dtype).t()
        hs, cs, acts, ws, ps, kappas, phis = [], [], [], [], [], [], []
        h0, c0, kappa0, window0 = h, c, kappa, window
        with torch.autocast(h.device.type, enabled=False):
            for start, stop in step_runs(input_gates.shape[1]):
                for h, c, kappa, window, act, p, phi in steps(input_gates[:, start:stop], h, c, kappa, window, W,
                                                              window_weight, window_bias, text, text_mask,
                                                              matmul_dtype):
                    hs.append(h), cs.append(c), acts.append(act), ws.append(window)
                    ps.append(p), kappas.append(kappa), phis.append(phi)
        hs, ws = torch.stack(hs, 1), torch.stack(ws, 1)
        # the steps' own tensors are saved as they are: stacking them would copy ~0.4 GB a batch
        ctx.save_for_backward(h0, c0, kappa0, window0, recurrent_weight, window_weight, text, text_mask,
                              hs, ws, *cs, *acts, *ps, *kappas)
        ctx.matmul_dtype, ctx.compile = matmul_dtype, compile
        phis = torch.stack(phis, 1)
        ctx.mark_non_differentiable(phis)
        return hs, ws, c, kappa, phis

    @staticmethod
    def backward(ctx, grad_hs, grad_ws, grad_c, grad_kappa, _grad_phis):
        (h0, c0, kappa0, window0, recurrent_weight, window_weight, text, text_mask,
         hs, ws, *per_step) = ctx.saved_tensors
        steps = _compiled(_backward_steps) if ctx.compile else _backward_steps
        B, T, H = hs.shape
        # detached: the last c and kappa, outputs too, come back requiring grad, and torch.compile
        # would make a version of the step function for each place they can take in a run
        per_step = [x.detach() for x in per_step]
        cs, acts, ps, kappas = (per_step[i * T:(i + 1) * T] for i in range(4))
        mm_dtype = ctx.matmul_dtype
        W = recurrent_weight.to(mm_dtype)
        grad_hs = grad_hs if grad_hs is not None else torch.zeros_like(hs)
        grad_ws = grad_ws if grad_ws is not None else torch.zeros_like(ws)
        dc = grad_c if grad_c is not None else torch.zeros_like(c0)
        dkappa = grad_kappa if grad_kappa is not None else torch.zeros_like(kappa0)
        d_previous = torch.zeros(B, H + window0.shape[1], dtype=h0.dtype, device=h0.device)  # of [h, w]
        dz_all, dp_all = [None] * T, [None] * T
        with torch.autocast(h0.device.type, enabled=False):  # as in forward, wherever backward runs
            for start, stop in reversed(step_runs(T)):
                dz_all[start:stop], dp_all[start:stop], d_previous, dc, dkappa = steps(
                    grad_hs[:, start:stop], grad_ws[:, start:stop], d_previous, dc, dkappa, acts[start:stop],
                    cs[start:stop], cs[start - 1] if start > 0 else c0, ps[start:stop], kappas[start:stop], W,
                    window_weight, text, text_mask, mm_dtype)
        dh, dw = d_previous[:, :H], d_previous[:, H:]
        dz_all, dp_all = torch.stack(dz_all, 1), torch.stack(dp_all, 1)  # (B, T, 4H), (B, T, 3K)
        previous = torch.cat([torch.cat([h0.unsqueeze(1), hs[:, :-1]], 1),
                              torch.cat([window0.unsqueeze(1), ws[:, :-1]], 1)], dim=2)
        grad_recurrent = dz_all.reshape(B * T, -1).t().mm(
            previous.reshape(B * T, -1).to(mm_dtype)).to(recurrent_weight.dtype)
        grad_window_weight = dp_all.reshape(B * T, -1).t().mm(hs.reshape(B * T, H))
        grad_window_bias = dp_all.sum((0, 1))
        return (dz_all, dh, dc, dkappa, dw, grad_recurrent, grad_window_weight, grad_window_bias,
                None, None, None, None)


# ----------------------------------------------------------------------------- layer 2, stepped

@functools.cache
def cpu_has_amx():
    """Whether the CPU has AMX tiles for bf16 (Linux: /proc/cpuinfo; elsewhere: assume not)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in cpuinfo)
    except OSError:
        return False


def _lstm_forward_step(x_gates, h, c, W, matmul_dtype: torch.dtype):
    """One step of an LSTM layer, gates (i, f, o, g); W = the recurrent weight, transposed."""
    return lstm_cell(x_gates + h.to(matmul_dtype).mm(W).to(h.dtype), c)


def _lstm_backward_step(grad_h, dh, dc, act, c, c_prev, W, matmul_dtype: torch.dtype):
    """The chain rule back through one _lstm_forward_step (W = the recurrent weight): the gradient
    of the gate pre-activations z_t, and dh, dc for step t-1."""
    dz, dc = lstm_cell_backward(grad_h + dh, dc, act, c, c_prev)
    dz = dz.to(matmul_dtype)  # as the products use it, and as it is returned
    return dz, dz.mm(W).to(dc.dtype), dc


def _lstm_forward_steps(input_gates, h, c, W, matmul_dtype: torch.dtype):
    """_lstm_forward_step through a run of steps of input_gates (B, n, 4H): each step's (h, c, act)."""
    outputs = []
    for x_gates in input_gates.unbind(1):
        outputs.append(_lstm_forward_step(x_gates, h, c, W, matmul_dtype))
        h, c = outputs[-1][:2]
    return outputs


def _lstm_backward_steps(grad_hs, dh, dc, acts, cs, c_before, W, matmul_dtype: torch.dtype):
    """_lstm_backward_step back through a run of n steps, from its last: grad_hs (B, n, H), the
    steps' acts and cs (n each), c_before the c of the step before the run. Returns the steps' dz
    (a list, in step order) and dh, dc for the step before the run."""
    n = len(acts)
    dzs = [None] * n
    for i in range(n - 1, -1, -1):
        dzs[i], dh, dc = _lstm_backward_step(grad_hs[:, i], dh, dc, acts[i], cs[i],
                                             cs[i - 1] if i > 0 else c_before, W, matmul_dtype)
    return dzs, dh, dc


class SteppedLSTM(torch.autograd.Function):
    """One LSTM layer through time, its input's share of the gates given (one large product over
    all steps, outside), stepped here with the recurrent product in matmul_dtype and a hand-written
    backward pass, like WindowedLSTM, and like it compiled on request, in runs of steps. Gates and the rows of
    weight_hh (4H, H) are ordered (i, f, o, g): to_ifog reorders an nn.LSTM's. input_gates may
    come in matmul_dtype (as a product under autocast makes them); their gradient comes back in
    matmul_dtype, as the products round it anyway, which spares converting both, 256 MB each, a
    synthesis batch. Returns (h (B, T, H), last c). tests/test_model.py holds it to nn.LSTM,
    values and gradients."""

    @staticmethod
    def forward(ctx, input_gates, h0, c0, weight_hh, matmul_dtype, compile=False):
        steps = _compiled(_lstm_forward_steps) if compile else _lstm_forward_steps
        W = weight_hh.to(matmul_dtype).t()
        h, c, hs, cs, acts = h0, c0, [], [], []
        with torch.autocast(h0.device.type, enabled=False):
            for start, stop in step_runs(input_gates.shape[1]):
                for h, c, act in steps(input_gates[:, start:stop], h, c, W, matmul_dtype):
                    hs.append(h), cs.append(c), acts.append(act)
        hs = torch.stack(hs, 1)
        ctx.save_for_backward(h0, c0, weight_hh, hs, *cs, *acts)  # unstacked, as in WindowedLSTM
        ctx.matmul_dtype, ctx.compile = matmul_dtype, compile
        return hs, c

    @staticmethod
    def backward(ctx, grad_hs, grad_c):
        h0, c0, weight_hh, hs, *per_step = ctx.saved_tensors
        steps = _compiled(_lstm_backward_steps) if ctx.compile else _lstm_backward_steps
        B, T, H = hs.shape
        per_step = [x.detach() for x in per_step]  # the last c comes back requiring grad (WindowedLSTM says why)
        cs, acts = per_step[:T], per_step[T:]
        mm_dtype = ctx.matmul_dtype
        W = weight_hh.to(mm_dtype)
        # contiguous: a layer's h reaches the loss through different concatenations (rand_write's
        # layer 1 and layer 2 alike), and each layout of grad_hs would be one more compiled version
        grad_hs = grad_hs.contiguous() if grad_hs is not None else torch.zeros_like(hs)
        dh, dc = torch.zeros_like(h0), (grad_c if grad_c is not None else torch.zeros_like(c0))
        dz_all = [None] * T
        with torch.autocast(h0.device.type, enabled=False):  # as in forward, wherever backward runs
            for start, stop in reversed(step_runs(T)):
                dz_all[start:stop], dh, dc = steps(grad_hs[:, start:stop], dh, dc, acts[start:stop], cs[start:stop],
                                                   cs[start - 1] if start > 0 else c0, W, mm_dtype)
        dz_all = torch.stack(dz_all, 1)  # (B, T, 4H), in mm_dtype
        previous = torch.cat([h0.unsqueeze(1), hs[:, :-1]], 1)
        grad_weight_hh = dz_all.reshape(B * T, -1).t().mm(
            previous.reshape(B * T, H).to(mm_dtype)).to(weight_hh.dtype)
        return dz_all, dh, dc, grad_weight_hh, None, None


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
    if return_state:
        return (nll * target_mask).sum(), target_mask.sum(), final_state
    return (nll * target_mask).sum(), target_mask.sum()
