"""The speed machinery of the handwriting model: the same maths as model.py, computed fast.

model.py writes Graves' model plainly (nn.LSTM layers, a per-step loop for layer 1 and the window,
forward() one point at a time to sample). FastHandwritingModel, below, is that model with three
parts replaced, and nothing else:

    the recurrence of synthesis (layer 1 and the window)   WindowedLSTM: a loop that autograd does not
                                                           record, with a hand-written backward pass
    the nn.LSTM layers, where it pays (bf16 on AMX CPUs)   SteppedLSTM: the same, for one LSTM layer
    one point of generation                                GenerationStep: NumPy, weights packed once

Both steppers can run their steps through torch.compile (FastHandwritingModel(config, compile=True)),
in runs of STEPS_PER_CALL steps a call. The parameters are the plain model's, under the same names,
so one state_dict loads into either; checkpoint.build_model builds this one, and training,
generation and bench.py use it. tests/test_kernels.py holds the two models to the same values and
gradients. Why each piece is as it is, and what it bought, measured: docs/speed.md.

Also here: the choice of precision (bf16 autocast where the hardware has it), a speed setting of a
run rather than part of the model.
"""
import functools

import numpy as np
import torch
import torch.nn.functional as F

from model import EXP_FLOOR, HandwritingModel, State, window_exp, window_weights


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

    "auto" is bf16 where the hardware has it: measured on IAM-OnDB, bf16 trains as well as fp32 and
    moves a batch's gradient far less than the next batch does (docs/speed.md, "Does the speed cost
    accuracy?"). The loss, and the recurrences' state, stay fp32 anyway.
    """
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=uses_bf16(device, precision))


@functools.cache
def cpu_has_amx():
    """Whether the CPU has AMX tiles for bf16 (Linux: /proc/cpuinfo; elsewhere: assume not)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in cpuinfo)
    except OSError:
        return False


def recurrence_matmul_dtype(device_type, dtype):
    """The dtype of the matrix products inside a stepped recurrence: autocast's (bf16) exactly when
    autocast is on, else the weights' own; the state itself always stays in `dtype`."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else dtype


# ----------------------------------------------------------------------------- the fast model

class FastHandwritingModel(HandwritingModel):
    """HandwritingModel with its recurrences and its generation step computed fast.

    compile: run each step of the stepped recurrences through torch.compile (train.py --compile;
    it takes a while at the start, and needs a C++ compiler on a CPU). stepped_lstm: run the
    nn.LSTM layers (layer 2, and rand_write's layer 1) as SteppedLSTM: True, False, or None for
    where it is faster, with bf16 products on a CPU with AMX, where oneDNN's bf16 LSTM gains little
    over its fp32 one.
    """

    def __init__(self, config, compile=False, stepped_lstm=None):
        super().__init__(config)
        self.compile_recurrence = compile
        self.stepped_lstm = stepped_lstm

    def _layer1_with_window(self, offsets, text, text_mask, state):
        """As HandwritingModel's, as one WindowedLSTM: x's share of layer 1's gates for all steps
        at once, then the loop, its state kept in full precision whatever the products' dtype."""
        if text is None or text_mask is None:
            raise ValueError("the synthesis model needs text codes and a text mask")
        dtype = self.layer1_input.weight.dtype
        input_gates = pen_projection(offsets, self.layer1_input.weight, self.layer1_input.bias)
        matmul_dtype = recurrence_matmul_dtype(offsets.device.type, dtype)
        h1, windows, c1, kappa, phi = WindowedLSTM.apply(
            input_gates, state.h1.to(dtype), state.c1.to(dtype), state.kappa.to(dtype), state.window.to(dtype),
            self.layer1_recurrent.weight, self.window_layer.weight, self.window_layer.bias,
            text, text_mask.to(dtype), matmul_dtype, self.compile_recurrence)
        return h1, c1, kappa, windows, phi

    def _lstm(self, lstm, inputs, h0, c0):
        """As HandwritingModel's, or as SteppedLSTM, the inputs' share of the gates computed first
        for all steps at once."""
        dtype, device_type = lstm.weight_hh_l0.dtype, inputs.device.type
        matmul_dtype = recurrence_matmul_dtype(device_type, dtype)
        stepped = self.stepped_lstm
        if stepped is None:
            stepped = matmul_dtype == torch.bfloat16 and device_type == "cpu" and cpu_has_amx()
        if not stepped:
            return super()._lstm(lstm, inputs, h0, c0)
        weight_ih, bias = to_ifog(lstm.weight_ih_l0), to_ifog(lstm.bias_ih_l0 + lstm.bias_hh_l0)
        project = pen_projection if inputs.shape[-1] == 3 else F.linear  # rand_write's layer 1 reads only the pen
        input_gates = project(inputs, weight_ih, bias)
        return SteppedLSTM.apply(input_gates, h0.to(dtype), c0.to(dtype), to_ifog(lstm.weight_hh_l0),
                                 matmul_dtype, self.compile_recurrence)

    def generation_step(self, text=None, text_mask=None):
        return GenerationStep(self, text, text_mask)


def pen_projection(offsets, weight, bias):
    """F.linear(offsets, weight, bias) for the pen's 3 features: the same values, in a form whose
    backward pass is fast. nn.Linear's backward keeps the weight's layout and takes its gradient as
    (grad^T @ offsets)^T, a (4H x BT) by (BT x 3) product that CPUs run much slower than
    offsets^T @ grad, the one autograd picks when the product's weight is a contiguous (3, 4H).
    Always in full precision: with 3 inputs the product is bound by memory, not arithmetic, so bf16
    would only add two conversions of the (B, T, 4H) result (forward and backward)."""
    with torch.autocast(offsets.device.type, enabled=False):
        flat = torch.addmm(bias, offsets.reshape(-1, offsets.shape[-1]).to(weight.dtype), weight.t().contiguous())
    return flat.view(*offsets.shape[:-1], -1)


# ----------------------------------------------------------------------------- the LSTM cell
#
# Inside the steppers (WindowedLSTM, SteppedLSTM, GenerationStep) the gates are ordered
# (i, f, o, g), so that one sigmoid covers three of them; nn.LSTM orders its weights' rows
# (i, f, g, o), and to_ifog reorders them. (Layer 1 of synthesis is stored (i, f, o, g) already.)

def to_ifog(gate_rows):
    """An nn.LSTM weight or bias, its 4H gate rows (dim 0) reordered from (i, f, g, o) to (i, f, o, g)."""
    i, f, g, o = gate_rows.chunk(4, dim=0)
    return torch.cat([i, f, o, g], dim=0)


def fast_tanh(x):
    """tanh(x) as 2 sigmoid(2x) - 1: within 2e-7 of torch.tanh in fp32 (an absolute error, near
    x = 0), and faster: of the cell's elementwise work, tanh cost most on the CPUs measured."""
    return 2 * torch.sigmoid(2 * x) - 1


def lstm_cell(z, c):
    """h, c and the gate activations (i, f, o, g) (B, 4H) from the pre-activations z. Eagerly, the
    activations overwrite z (fresh), sparing a copy; compiled, the joined activations are one
    fused kernel's output, which ran faster than the in-place form."""
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


# ----------------------------------------------------------------------------- runs of steps

@functools.cache
def _compiled(step, backend="inductor"):
    # dynamic: batch size and text length change from batch to batch. Duck sizing off: it would tie
    # a slice's storage offset to any size of equal value, and lines of many lengths (evaluate.py
    # --adapt trains on each) would each compile again, past the recompile limit into eager steps.
    # (backend: tests trace with "eager", which guards as inductor does without making code.)
    compiled = torch.compile(step, dynamic=True, backend=backend)

    @functools.wraps(step)
    def call(*args):
        with torch.fx.experimental._config.patch(use_duck_shape=False):
            return compiled(*args)
    return call


# The steppers call their step functions on runs of this many time steps: each call of a compiled
# function has a fixed cost of its own (guards, wrapper) that a run shares (docs/speed.md).
STEPS_PER_CALL = 8


def step_runs(T, n=None):
    """(start, stop) of each run of steps through T time steps: the first step alone, runs of n
    (STEPS_PER_CALL), and the last one to n steps one by one. torch.compile makes a version of a
    step function for one step and one for n (and one for the very first step, whose slices start
    at offset 0), and every batch calls all of them: they are all compiled in the first batch."""
    n = n or STEPS_PER_CALL
    if T < 3:
        return [(t, t + 1) for t in range(T)]
    full = (T - 2) // n * n
    starts = [0] + list(range(1, 1 + full, n)) + list(range(1 + full, T))
    return list(zip(starts, starts[1:] + [T]))


# ----------------------------------------------------------------------------- layer 1 and the window

def _window_weights(alpha_hat, beta_hat, kappa_hat, kappa_prev, text_mask):
    """model.window_weights; compiled, the sum over the K Gaussians is written one Gaussian at a
    time, each term (B, U): inductor vectorises a sum over a short K along K, in masked vectors,
    much slower than along U."""
    if not torch.compiler.is_compiling():
        return window_weights(alpha_hat, beta_hat, kappa_hat, kappa_prev, text_mask)
    alpha, beta = alpha_hat.exp(), beta_hat.exp()
    kappa = kappa_prev + kappa_hat.exp()
    u = torch.arange(text_mask.shape[1], device=text_mask.device, dtype=kappa.dtype)
    phi = sum(alpha[:, k, None] * window_exp(-beta[:, k, None] * (kappa[:, k, None] - u) ** 2)
              for k in range(kappa.shape[1]))
    return phi * text_mask, kappa


def _forward_step(x_gates, h, c, kappa, window, W, window_weight, window_bias, text, text_mask,
                  matmul_dtype: torch.dtype):
    """One step of layer 1 and the window (W: the recurrent weight, transposed, in matmul_dtype).

    w = phi @ one_hot(text) (model.py) is summed here into each character's slot by its code, and
    _backward_step gathers: reading the one-hot (B, U, A) array every step made the window slower."""
    z = x_gates + torch.cat([h, window], dim=1).to(matmul_dtype).mm(W).to(h.dtype)
    h, c, act = lstm_cell(z, c)
    p = torch.addmm(window_bias, h, window_weight.t())
    alpha_hat, beta_hat, kappa_hat = p.chunk(3, dim=1)
    phi, kappa = _window_weights(alpha_hat, beta_hat, kappa_hat, kappa, text_mask)
    window = torch.zeros_like(window).scatter_add_(1, text, phi)
    return h, c, kappa, window, act, p, phi


def _backward_step(grad_h, grad_window, dh, dw, dc, dkappa, act, c, c_prev, p, kappa, W, window_weight,
                   text, text_mask, matmul_dtype: torch.dtype):
    """The chain rule back through one _forward_step.

    dh, dw, dc, dkappa arrive from step t+1 (for h_t, w_t, c_t, kappa_t); returns the gradients
    of the gate pre-activations z_t (in matmul_dtype, as the products use it: under bf16 a batch's
    dz then takes half the memory and needs no second conversion) and of the window parameters
    p_t, and dh, dw, dc, dkappa for step t-1.
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
    ordered (i, f, o, g), as in lstm_cell; the text comes as its codes (B, U), int64. With
    `compile`, torch.compile fuses each step's elementwise operations, the steps taken in runs
    (step_runs). tests/test_kernels.py checks values and gradients against the plain model, and
    gradcheck.
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
        # the steps' own tensors are saved as they are: stacking them would copy them all again
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


# ----------------------------------------------------------------------------- an LSTM layer, stepped

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
    backward pass, like WindowedLSTM, and like it compiled on request, in runs of steps. Gates and
    the rows of weight_hh (4H, H) are ordered (i, f, o, g): to_ifog reorders an nn.LSTM's.
    input_gates may come in matmul_dtype (as a product under autocast makes them); their gradient
    comes back in matmul_dtype, as the products round it anyway, which spares converting both.
    Returns (h (B, T, H), last c). tests/test_kernels.py holds it to nn.LSTM, values and gradients."""

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


# ----------------------------------------------------------------------------- generation

class GenerationStep:
    """One point of generation: the network's step from the last point, as forward() computes it
    (tests/test_kernels.py holds the two together), on the CPU whatever the model's device.

    Sampling is a chain of single steps of a small batch, where each operation's fixed cost, not
    its arithmetic, sets the pace: forward() takes ten matrix products and some sixty small
    operations a point, and a PyTorch operation costs several times more before it does anything
    than a NumPy one. So the small operations are NumPy's, on arrays, and so are the four matrix
    products of a single line (a BLAS matrix-vector product); a batch's stay PyTorch's, on
    zero-copy tensor views of the arrays, where PyTorch's small-batch product is the faster. The
    weights are packed once: each LSTM layer's gates come from one product over its inputs joined
    ([x, h1, w] for layer 1, [x, h1, w, h2] for layer 2, gates ordered (i, f, o, g) so that one
    sigmoid covers three), and the window is read once, one position past the text too, for
    Graves' stopping rule (the position forward() masks to zero). Arrays in, arrays out: x (B, 3),
    a State of arrays. The measurements: docs/speed.md, "What makes sampling fast".
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
        """model.sample_mixture(split_mixture(y, bias), noise=noise) in NumPy and in a third of the
        operations: the component is drawn first, from the weights alone (softmax's normaliser
        cancels against the total the uniform is scaled by), and only its parameters are squashed.
        noise (B, 4): [u_component, u_end_of_stroke, u_1, u_2], the normals by Box-Muller."""
        B = y.shape[0]
        params = y[:, 1:].reshape(B, 6, -1)  # weight logit, mu_x, mu_y, log sigma_x, log sigma_y, rho logit
        logits = params[:, 0] * (1 + bias)
        cdf = np.exp(logits - logits.max(1, keepdims=True)).cumsum(1)
        component = np.minimum((cdf < noise[:, :1] * cdf[:, -1:]).sum(1), params.shape[2] - 1)
        mu_x, mu_y, log_sigma_x, log_sigma_y, rho_logit = params[np.arange(B), 1:, component].T
        radius, angle = np.sqrt(-2 * np.log(1 - noise[:, 2])), 2 * np.pi * noise[:, 3]
        n_x, n_y = radius * np.cos(angle), radius * np.sin(angle)
        rho = np.tanh(rho_logit)
        dx = mu_x + np.exp(log_sigma_x - bias) * n_x
        dy = mu_y + np.exp(log_sigma_y - bias) * (rho * n_x + np.sqrt(1 - rho * rho) * n_y)
        # u < sigmoid(l), the sigmoid in its tanh form (no overflow)
        end_of_stroke = 2 * noise[:, 1] - 1 < np.tanh(y[:, 0] * 0.5)
        return np.stack([end_of_stroke.astype(y.dtype), dx, dy], axis=1)
