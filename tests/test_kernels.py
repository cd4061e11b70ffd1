"""Tests for kernels.py: the fast model computes what the plain model of model.py computes.

The plain HandwritingModel is the reference (tests/test_model.py holds it to Graves' equations);
FastHandwritingModel, loaded with the same weights, must give the same outputs, loss, final state,
gradients and generated points, on tiny models, in float64 to rounding and in float32 within the
error of fast_tanh. The pieces inside (WindowedLSTM, SteppedLSTM, pen_projection, GenerationStep)
are also held to finite differences, to nn.LSTM and nn.Linear, and to the plain sampler.
"""
import functools
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import (STEPS_PER_CALL, FastHandwritingModel, GenerationStep, SteppedLSTM, WindowedLSTM,
                     bf16_supported, pen_projection, step_runs, to_ifog)
from model import (ForwardStep, HandwritingModel, ModelConfig, State, draw_noise, sample_mixture, sequence_nll,
                   split_mixture)

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="torch.compile needs a C++ compiler on the CPU")

# long enough for two runs of STEPS_PER_CALL steps between single ones (step_runs)
T = 2 * STEPS_PER_CALL + 2


def model_pair(task, dtype=torch.float64, seed=0, **fast_options):
    """A plain and a fast tiny model with the same weights, moved off their initial values so that
    the window travels along the text."""
    torch.manual_seed(seed)
    config = ModelConfig(task=task, cell_size=6, num_clusters=3, K=2, alphabet_size=7)
    plain = HandwritingModel(config).to(dtype)
    with torch.no_grad():
        for p in plain.parameters():
            p.mul_(2)
    fast = FastHandwritingModel(config, **fast_options).to(dtype)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def batch(dtype, steps=T, B=3, U=5, seed=1):
    """Lines of steps + 1 points (the third padded after steps - 4), texts (two padded), and a
    random start state."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randn(B, steps + 1, 3, generator=g, dtype=dtype)
    offsets[..., 0] = (torch.rand(B, steps + 1, generator=g) < 0.2).to(dtype)
    mask = torch.ones(B, steps + 1, dtype=dtype)
    mask[2, steps - 4:] = 0
    text = torch.randint(0, 7, (B, U), generator=g)
    text_mask = torch.ones(B, U, dtype=dtype)
    text_mask[1, U - 2:] = 0
    text_mask[2, 1:] = 0
    H, K, A = 6, 2, 7
    state = State(*(torch.randn(B, n, generator=g, dtype=dtype) for n in (H, H, H, H)),
                  kappa=torch.rand(B, K, generator=g, dtype=dtype), window=torch.rand(B, A, generator=g, dtype=dtype))
    return offsets, mask, text, text_mask, state


def outputs_and_gradients(model, offsets, mask, text, text_mask, start):
    """forward()'s outputs, sequence_nll's loss and final state, and the gradients of the loss and
    the final state with respect to every parameter and the start state."""
    start = State(*(None if s is None else s.clone().requires_grad_() for s in start))
    model.zero_grad()
    y, _, phi = model(offsets[:, :-1], text, text_mask, state=start, return_phi=True)
    nll, _, final = sequence_nll(model, offsets, mask, text, text_mask, state=start, return_state=True)
    (nll + sum(s.sin().sum() for s in final if s is not None)).backward()
    return ([y, phi, nll] + [s for s in final if s is not None] + [p.grad for p in model.parameters()]
            + [s.grad for s in start if s is not None])


@pytest.mark.parametrize("stepped_lstm", [False, True])
@pytest.mark.parametrize("task", ["rand_write", "synthesis"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fast_model_equals_the_plain_model_in_values_and_gradients(task, stepped_lstm, dtype):
    """Outputs, phi, loss, final state and the gradients of every parameter and of the start state,
    with the nn.LSTM layers run by nn.LSTM or stepped (SteppedLSTM): in float64 each value to
    1e-10; in float32 each tensor within 1e-5 of its size (fast_tanh and another order of sums
    round differently; measured up to 3.4e-6, a few float32 epsilons summed over 18 steps)."""
    plain, fast = model_pair(task, dtype, stepped_lstm=stepped_lstm)
    offsets, mask, text, text_mask, state = batch(dtype)
    if task == "rand_write":
        text = text_mask = None
        state = state._replace(kappa=None, window=None)
    expected = outputs_and_gradients(plain, offsets, mask, text, text_mask, state)
    got = outputs_and_gradients(fast, offsets, mask, text, text_mask, state)
    assert len(got) == len(expected) and all(g is not None for g in got[3:])
    for g, e in zip(got, expected):
        if e is None:
            assert g is None
        elif dtype == torch.float64:
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)
        else:
            assert g.dtype == e.dtype and (g - e).norm() <= 1e-5 * e.norm()


@pytest.mark.parametrize("task", ["synthesis", "rand_write"])
def test_generation_step_is_the_plain_step_through_forward(task):
    """GenerationStep (NumPy, weights packed) against ForwardStep (forward() one point long): the
    output, the state, the window and its weight past each text, point after point, in float32."""
    plain, fast = model_pair(task, torch.float32)
    offsets, _, text, text_mask, start = batch(torch.float32)
    if task == "rand_write":
        text = text_mask = None
        start = start._replace(kappa=None, window=None)
    steps = [ForwardStep(plain, text, text_mask), fast.generation_step(text, text_mask)]
    assert isinstance(steps[1], GenerationStep)
    states = [State(*(None if s is None else s.numpy() for s in start))] * 2
    with torch.inference_mode():
        for t in range(6):
            (y, *got), (y_fast, *got_fast) = [step(offsets[:, t].numpy(), state) for step, state in zip(steps, states)]
            np.testing.assert_allclose(y_fast, y, rtol=1e-5, atol=1e-5)
            states = [got[0], got_fast[0]]
            for expected, fast_value in zip([*got[0], *got[1:]], [*got_fast[0], *got_fast[1:]]):
                if expected is None:
                    assert fast_value is None
                else:
                    np.testing.assert_allclose(fast_value, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("task", ["synthesis", "rand_write"])
def test_fast_and_plain_models_generate_the_same_lines(task):
    """The same seed, or the same stream of uniforms, writes the same lines, and the same lines end
    by Graves' rule at the same point (float64, so that no rounding flips a sampled pen lift);
    synthesis also primed."""
    plain, fast = model_pair(task, torch.float64)
    offsets, _, text, text_mask, _ = batch(torch.float64)
    uniforms = np.random.default_rng(5).random((36, 3, 4))  # an explicit stream, as the browser's engine draws
    runs = [dict(length=30), dict(length=30, uniforms=uniforms)] if task == "rand_write" else [
        dict(text=text, text_mask=text_mask, max_points_per_char=6),
        dict(text=text, text_mask=text_mask, max_points_per_char=6,
             prime=[offsets[0, :7], offsets[1, :3], offsets[2, :1]], prime_chars=[2, 1, 0]),
        dict(text=text, text_mask=text_mask, max_points_per_char=6, uniforms=uniforms)]
    for options in runs:
        start = None if "prime" in options else torch.zeros(3, 3)
        written = [model.generate(start, bias=0.5, generator=torch.Generator().manual_seed(4), **options)
                   for model in (plain, fast)]
        (lines, phis, capped), (fast_lines, fast_phis, fast_capped) = written
        assert fast_capped == capped
        for a, b in zip(fast_lines + (fast_phis or []), lines + (phis or [])):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("bias", [0.0, 1.0, 3.0])
def test_generation_step_samples_what_the_plain_sampler_samples(bias):
    """GenerationStep.sample draws the component before squashing the mixture: the same point as
    sample_mixture(split_mixture(y, bias)) for the same noise."""
    M, B = 20, 5000
    generator = torch.Generator().manual_seed(1)
    y = 3 * torch.randn(B, 6 * M + 1, generator=generator, dtype=torch.float64)
    noise = draw_noise(1, B, generator, torch.float64)[0]
    fast = GenerationStep.sample(y.numpy(), bias, noise.numpy())
    reference = sample_mixture(split_mixture(y, bias), noise=noise).numpy()
    np.testing.assert_allclose(fast, reference, rtol=1e-10, atol=1e-10)
    assert 0 < fast[:, 0].mean() < 1  # both pen states occur


def test_one_state_dict_loads_into_either_model():
    for task in ["rand_write", "synthesis"]:
        plain, fast = model_pair(task)
        assert list(plain.state_dict()) == list(fast.state_dict())
        assert FastHandwritingModel(plain.config, compile=True).compile_recurrence is True
        assert fast.compile_recurrence is False


# ----------------------------------------------------------------------------- layer 1 and the window

def recurrence_inputs(B=3, T=6, H=5, K=2, U=4, A=7, dtype=torch.float32, seed=2):
    """Random inputs of WindowedLSTM, with a nonzero start state and one line's text padded."""
    torch.manual_seed(seed)
    d = dict(dtype=dtype)
    leaves = [torch.randn(B, T, 4 * H, **d), torch.randn(B, H, **d), torch.randn(B, H, **d), torch.rand(B, K, **d),
              torch.rand(B, A, **d), torch.randn(4 * H, H + A, **d), torch.randn(3 * K, H, **d),
              torch.randn(3 * K, **d)]
    text = torch.randint(0, A, (B, U))
    text_mask = torch.ones(B, U, dtype=dtype)
    text_mask[1, 3:] = 0
    text_mask[2, 1:] = 0
    return leaves, text, text_mask


def test_windowed_lstm_gradcheck():
    """Every input of the hand-written backward, against finite differences, with a nonzero start state."""
    torch.manual_seed(1)
    B, T, H, K, U, A = 2, 4, 3, 2, 4, 5
    d = dict(dtype=torch.float64, requires_grad=True)
    inputs = (torch.randn(B, T, 4 * H, **d), torch.randn(B, H, **d), torch.randn(B, H, **d),
              torch.rand(B, K, **d), torch.rand(B, A, **d), torch.randn(4 * H, H + A, **d),
              torch.randn(3 * K, H, **d), torch.randn(3 * K, **d))
    text = torch.randint(0, A, (B, U))
    text_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.float64)
    fn = lambda *x: WindowedLSTM.apply(*x, text, text_mask, torch.float64)[:4]
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no bf16 matrix products")
def test_windowed_lstm_with_bf16_products_stays_near_fp32_and_returns_fp32_gradients():
    """With bf16 recurrent products the state stays fp32, and so do the gradients that come back
    (dz is kept in bf16 inside): each within bf16's rounding of the fp32 products' gradients."""
    leaves, text, text_mask = recurrence_inputs(B=4, T=12, H=16, K=3, U=6, A=9)
    leaves = [x * 0.3 for x in leaves]  # moderate pre-activations, as a trained layer's
    results = {}
    for matmul_dtype in [torch.float32, torch.bfloat16]:
        inputs = [x.clone().requires_grad_() for x in leaves]
        hs, ws, c, kappa, _ = WindowedLSTM.apply(*inputs, text, text_mask, matmul_dtype)
        (hs.sin().sum() + ws.cos().sum() + c.sum()).backward()
        results[matmul_dtype] = [hs, c] + [x.grad for x in inputs]
    for exact, rounded in zip(results[torch.float32], results[torch.bfloat16]):
        assert rounded.dtype == torch.float32
        assert (rounded - exact).norm() <= 0.015 * exact.norm()  # measured: 0.05-0.5%


@pytest.mark.parametrize("T", [1, 2, 3, 5, 6, 9, 10, 801])
def test_step_runs_cover_every_step_once_in_order(T):
    """The runs a stepped recurrence calls its step function on: consecutive, together exactly the
    T steps, each of one step or STEPS_PER_CALL, the first and the last alone."""
    runs = step_runs(T)
    assert [t for start, stop in runs for t in range(start, stop)] == list(range(T))
    assert {stop - start for start, stop in runs} <= {1, STEPS_PER_CALL}
    assert runs[0] == (0, 1) and runs[-1] == (T - 1, T)
    assert sum(stop - start == 1 for start, stop in runs) <= 1 + STEPS_PER_CALL  # the rest in runs of n


# ----------------------------------------------------------------------------- compiled steps
#
# train.py --compile runs the step functions through torch.compile. Compiling is slow (a C++ file a
# fused kernel), so these tests compile as little as shows what they check: runs of 2 steps
# rather than STEPS_PER_CALL (the same code, a step's state handed to the next inside one
# compiled call, a quarter of the kernels), each step function once with inductor for its values,
# and the versions torch.compile makes with its "eager" backend, which traces and guards as
# inductor does but generates no code (the counts below are inductor's too).

def step_function_inputs(n=2, B=3, H=5, K=2, U=4, A=7, seed=6):
    """Arguments of the four step functions for a run of n steps, the saved per-step tensors
    from an eager forward run."""
    torch.manual_seed(seed)
    W, window_weight, window_bias = torch.randn(H + A, 4 * H), torch.randn(3 * K, H), torch.randn(3 * K)
    text = torch.randint(0, A, (B, U))
    text_mask = torch.tensor([[1.0] * U, [1.0] * (U - 1) + [0.0], [1.0] + [0.0] * (U - 1)])  # two texts padded
    forward = (torch.randn(B, n, 4 * H), torch.randn(B, H), torch.randn(B, H), torch.rand(B, K), torch.rand(B, A),
               W, window_weight, window_bias, text, text_mask, torch.float32)
    _, cs, _, _, acts, ps, _ = zip(*kernels._forward_steps(*forward))
    kappas = [step[2] for step in kernels._forward_steps(*forward)]
    backward = (torch.randn(B, n, H), torch.randn(B, n, A), torch.randn(B, H + A), torch.randn(B, H), torch.randn(B, K),
                list(acts), list(cs), torch.randn(B, H), list(ps), kappas, W.t().contiguous(), window_weight, text,
                text_mask, torch.float32)
    W_lstm = torch.randn(H, 4 * H)
    lstm_forward = (torch.randn(B, n, 4 * H), torch.randn(B, H), torch.randn(B, H), W_lstm, torch.float32)
    _, lstm_cs, lstm_acts = zip(*kernels._lstm_forward_steps(*lstm_forward))
    lstm_backward = (torch.randn(B, n, H), torch.randn(B, H), torch.randn(B, H), list(lstm_acts), list(lstm_cs),
                     torch.randn(B, H), W_lstm.t().contiguous(), torch.float32)
    return [(kernels._forward_steps, forward), (kernels._backward_steps, backward),
            (kernels._lstm_forward_steps, lstm_forward), (kernels._lstm_backward_steps, lstm_backward)]


@needs_compiler
def test_compiled_step_functions_match_eager():
    """Each step function of the stepped recurrences (layer 1 with the window, an LSTM layer;
    forward and backward), compiled by inductor as training compiles it, on a run of steps: every
    output as eager computes it (the compiled cell and window take other forms, lstm_cell and
    _window_weights)."""
    from torch.utils._pytree import tree_leaves
    for step_function, arguments in step_function_inputs():
        expected = tree_leaves(step_function(*arguments))
        got = tree_leaves(kernels._compiled(step_function)(*arguments))
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


compile_as_training = kernels._compiled.__wrapped__  # the tests below put traced_and_guarded in its place


def traced_and_guarded(step):
    return compile_as_training(step, backend="eager")  # traced and guarded as training's, no code made


def test_compiled_recurrences_match_eager_and_keep_to_three_versions(monkeypatch):
    """FastHandwritingModel(compile=True) against compile=False: the same values and gradients,
    for synthesis (layer 1 with the window, layer 2 stepped) and rand_write (both layers stepped),
    trained from a state that needs no gradient, as training's. torch.compile makes a version of
    a step function for each dtype, layout and autocast state it meets, and past 8 falls back to
    running it uncompiled: every function must keep to one version per kind of run (the first
    step, runs of STEPS_PER_CALL, single steps) at most, whatever the length and however many runs
    (a run at a new offset once made a new version), and whether backward runs under autocast
    (bench.py --parts) or not (training); under bf16 the stepped LSTM's forward has one more
    version per kind for bf16 input gates (layer 2's). The synthesis model makes every kind of
    version (a first step, runs, single steps), rand_write then meets more runs at new offsets."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    n = 2
    monkeypatch.setattr(kernels, "STEPS_PER_CALL", n)
    monkeypatch.setattr(kernels, "_compiled", functools.cache(traced_and_guarded))
    torch._dynamo.reset()
    # sizes that no two lengths, offsets or strides share (torch.compile would tie them together)
    B, U, config = 2, 3, dict(cell_size=8, num_clusters=2, K=2, alphabet_size=5)
    g = torch.Generator().manual_seed(8)
    for task, length in [("synthesis", 2 * n + 3), ("rand_write", 3 * n + 2)]:
        torch.manual_seed(9)
        eager = FastHandwritingModel(ModelConfig(task=task, **config), stepped_lstm=True)
        compiled = FastHandwritingModel(eager.config, compile=True, stepped_lstm=True)
        compiled.load_state_dict(eager.state_dict())
        offsets, mask = torch.randn(B, length + 1, 3, generator=g), torch.ones(B, length + 1)
        text = torch.randint(0, 5, (B, U), generator=g) if task == "synthesis" else None
        text_mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]) if task == "synthesis" else None
        state = eager.initial_state(B)
        state = State(*(None if s is None else torch.rand(s.shape, generator=g) for s in state))
        results = []
        for model in (eager, compiled):
            y, _, phi = model(offsets[:, :-1], text, text_mask, state=state, return_phi=True)
            nll, _, final = sequence_nll(model, offsets, mask, text, text_mask, state=state, return_state=True)
            (nll + sum(s.sin().sum() for s in final if s is not None)).backward()
            results.append([y, nll, *(s for s in final if s is not None)] + [p.grad for p in model.parameters()]
                           + ([phi] if phi is not None else []))
        for got, expected in zip(results[1], results[0]):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    versions = lambda f: len(_debug_get_cache_entry_list(f.__code__))
    for step_function in [kernels._forward_steps, kernels._backward_steps, kernels._lstm_forward_steps,
                          kernels._lstm_backward_steps]:
        assert 1 <= versions(step_function) <= 3, step_function.__name__
    if bf16_supported("cpu"):  # a run of bf16 training, on its own
        torch._dynamo.reset()
        for length in [2 * n + 3, 3 * n + 2]:
            with torch.autocast("cpu", dtype=torch.bfloat16):  # as in training: backward outside autocast
                y, _, _ = compiled(offsets[:, :length])
            y.float().square().mean().backward()
            with torch.autocast("cpu", dtype=torch.bfloat16):  # as bench.py --parts: backward inside
                h1, _ = compiled._lstm(compiled.layer1, offsets[:, :length], state.h1, state.c1)
                h1.backward(torch.ones_like(h1))
        assert 1 <= versions(kernels._lstm_backward_steps) <= 3
        assert 2 <= versions(kernels._lstm_forward_steps) <= 6  # layer 1's gates come in fp32, layer 2's in bf16


def test_lines_of_many_lengths_keep_the_compiled_steps_to_three_versions(monkeypatch):
    """evaluate.py --adapt trains on one line at a time, every line another length: the compiled
    steps must not make a version per length (with torch's duck sizing, a slice whose storage
    offset equalled a size was tied to it, and each new length compiled again until the 8th,
    after which the steps ran uncompiled)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    monkeypatch.setattr(kernels, "STEPS_PER_CALL", 2)
    monkeypatch.setattr(kernels, "_compiled", functools.cache(traced_and_guarded))
    torch._dynamo.reset()
    config = ModelConfig(task="synthesis", cell_size=4, num_clusters=2, K=2, alphabet_size=5)
    model = FastHandwritingModel(config, compile=True)
    g = torch.Generator().manual_seed(1)
    for length in range(5, 17):  # 4 * cell_size = 16 among them, as 1,600 is among IAM-OnDB's lengths
        offsets = torch.randn(1, length + 1, 3, generator=g)
        text = torch.randint(0, 5, (1, 3), generator=g)
        nll, _ = sequence_nll(model, offsets, torch.ones(1, length + 1), text, torch.ones(1, 3))
        nll.backward()
    for step_function in [kernels._forward_steps, kernels._backward_steps]:
        assert 1 <= len(_debug_get_cache_entry_list(step_function.__code__)) <= 3, step_function.__name__


# ----------------------------------------------------------------------------- an LSTM layer, stepped

def test_stepped_lstm_is_nn_lstm_in_values_and_gradients():
    """SteppedLSTM (input gates given, the rest stepped by hand) against nn.LSTM itself, from a
    nonzero start state, in float64: outputs, last c, and the gradients of every input and weight
    (nn.LSTM's gate rows reordered for it by to_ifog, through which the weight gradients flow back)."""
    torch.manual_seed(3)
    B, T, I, H = 3, 7, 5, 4
    lstm = torch.nn.LSTM(I, H, batch_first=True).double()
    x = torch.randn(B, T, I, dtype=torch.float64)
    h0, c0 = torch.randn(B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    results = []
    for stepped in [True, False]:
        lstm.zero_grad()
        inputs = [t.clone().requires_grad_() for t in (x, h0, c0)]
        if stepped:
            gates = F.linear(inputs[0], to_ifog(lstm.weight_ih_l0), to_ifog(lstm.bias_ih_l0 + lstm.bias_hh_l0))
            hs, c = SteppedLSTM.apply(gates, inputs[1], inputs[2], to_ifog(lstm.weight_hh_l0), torch.float64)
        else:
            hs, (_, c) = lstm(inputs[0], (inputs[1][None], inputs[2][None]))
            c = c[0]
        (hs.sin().sum() + (c ** 2).sum()).backward()
        results.append([hs, c] + [t.grad for t in inputs] + [p.grad.clone() for p in lstm.parameters()])
    for stepped, reference in zip(*results):
        torch.testing.assert_close(stepped, reference, rtol=1e-10, atol=1e-12)


def test_stepped_lstm_gradcheck():
    torch.manual_seed(4)
    B, T, H = 2, 4, 3
    d = dict(dtype=torch.float64, requires_grad=True)
    inputs = (torch.randn(B, T, 4 * H, **d), torch.randn(B, H, **d), torch.randn(B, H, **d),
              torch.randn(4 * H, H, **d))
    assert torch.autograd.gradcheck(lambda *x: SteppedLSTM.apply(*x, torch.float64), inputs)


@pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no bf16 matrix products")
@pytest.mark.parametrize("task", ["rand_write", "synthesis"])
def test_stepped_lstm_under_bf16_autocast_stays_near_nn_lstm(task):
    """Under bf16 autocast the model's nn.LSTM layers run as SteppedLSTM (as on AMX CPUs) and as
    oneDNN's nn.LSTM round the products to bf16 in different places: outputs, final state and
    weight gradients within a few percent of each other."""
    _, fused = model_pair(task, torch.float32, stepped_lstm=False)
    stepped = FastHandwritingModel(fused.config, stepped_lstm=True)
    stepped.load_state_dict(fused.state_dict())
    offsets, _, text, text_mask, state = batch(torch.float32, steps=9)
    if task == "rand_write":
        text = text_mask = None
        state = state._replace(kappa=None, window=None)
    results = []
    for model in (stepped, fused):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, final, _ = model(offsets, text, text_mask, state=state)
        y.float().tanh().sum().backward()
        results.append([y.float()] + [s.float() for s in final[:4]] + [p.grad for p in model.parameters()])
    for a, b in zip(*results):
        assert (a - b).norm() <= 0.05 * b.norm()


# ----------------------------------------------------------------------------- the pen's projection

def test_pen_projection_is_nn_linear_in_values_and_gradients():
    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 8).double()
    offsets = torch.randn(4, 5, 3, dtype=torch.float64)[:, 1:]  # a window: not contiguous
    grad = torch.randn(4, 4, 8, dtype=torch.float64)
    expected = linear(offsets)
    expected_weight, expected_bias = torch.autograd.grad(expected, [linear.weight, linear.bias], grad)
    got = pen_projection(offsets, linear.weight, linear.bias)
    weight, bias = torch.autograd.grad(got, [linear.weight, linear.bias], grad)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(weight, expected_weight)
    torch.testing.assert_close(bias, expected_bias)
    torch.testing.assert_close(weight, torch.einsum("btj,bti->ji", grad, offsets))  # the chain rule by hand


def test_pen_projection_stays_in_full_precision_under_bf16_autocast():
    # bf16 would round the (B, T, 4H) result to 8 bits of mantissa: errors near 1e-2, not 1e-6
    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 64)
    offsets = torch.randn(2, 7, 3) * 3
    expected = offsets @ linear.weight.t() + linear.bias
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pen_projection(offsets, linear.weight, linear.bias)
        rounded = linear(offsets)  # what autocast makes of a plain nn.Linear
    assert got.dtype == torch.float32 and rounded.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert (rounded.float() - expected).abs().max() > 1e-3
