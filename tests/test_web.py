"""The page that writes in the browser (web/), and the outputs for paper and pen plotters.

Without a browser: the G-code retraces the strokes, the SVG's paths are the strokes, export-web
writes what the page needs. In headless Chromium (skipped where there is none; one browser for the
module, driven by browser.py): the page's engine steps as kernels.GenerationStep does, writes the
same strokes as generate.Writer from the same uniform draws, spells and wraps texts as Python does,
and the page, driven by real pointer input, takes a drawn line as its hand, writes, and downloads
files that Python reads back, without a single request leaving the machine.
"""
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import browser
import checkpoint
import dataset
import generate
import utils
from fixtures import svg_paths
from model import HandwritingModel, ModelConfig

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
SHIPPED = ROOT / "save" / "synthesis.pt"
STATE_NAMES = ("h1", "c1", "h2", "c2", "kappa", "window")


# ----------------------------------------------------------------------------- helpers

def tiny_checkpoint(path, seed=0):
    """A small untrained synthesis checkpoint: 20 cells (layer inputs not a multiple of 16 wide)."""
    torch.manual_seed(seed)
    config = ModelConfig(task="synthesis", cell_size=20, num_clusters=3, K=2, alphabet_size=len(dataset.ALPHABET))
    torch.save({"model": HandwritingModel(config).state_dict(), "config": asdict(config), "alphabet": dataset.ALPHABET,
                "offset_mean": [0.5, -0.2], "offset_std": [2.0, 3.0]}, path)
    return str(path)


def generation_step(model, codes):
    """The Python sampling step of `model` on one line of text codes."""
    text = torch.as_tensor(codes)[None]
    mask = torch.ones_like(text, dtype=torch.float32)
    if hasattr(model, "generation_step"):  # kernels.FastHandwritingModel
        return model.generation_step(text, mask)
    from model import GenerationStep  # before kernels.py held it
    return GenerationStep(model, text, mask)


def random_lines(rng, count=3):
    """Lines of pen offsets, each a few strokes, pen units."""
    lines = []
    for _ in range(count):
        n = int(rng.integers(8, 30))
        line = np.column_stack([rng.random(n) < 0.2, rng.normal(8, 20, n), rng.normal(0, 20, n)]).astype(float)
        line[0, 1:] = 0
        lines.append(line)
    return lines


def gcode_paths(text):
    """The pen-down paths of G-code: for each lowering of the pen, the points it visits until lifted
    (the position it was lowered at first). Reads only what utils.gcode writes."""
    plotter = utils.Plotter()
    position, down, paths = None, False, []
    for line in text.splitlines():
        command = line.split(";")[0].strip()
        if command == plotter.pen_down:
            down = True
            paths.append([position])
        elif command == plotter.pen_up:
            down = False
        elif command.startswith(("G0 ", "G1 ")):
            words = dict((w[0], float(w[1:])) for w in command.split()[1:])
            position = (words["X"], words["Y"])
            if command.startswith("G0"):
                assert not down, "a rapid move with the pen down would draw a line that is not a stroke"
            else:
                assert down, "a drawing move with the pen up"
                paths[-1].append(position)
    return [np.array(p) for p in paths]


def path_points(d):
    return np.array([float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", d)]).reshape(-1, 2)


# ----------------------------------------------------------------------------- G-code and SVG

def test_gcode_of_an_l_worked_by_hand():
    # one stroke right 100 units, then up 50; a 100 x 100 mm page with 10 mm margins and a tall
    # line height: the width binds, 80 mm for 100 units, 0.8 mm a unit. The top left corner of the
    # writing sits at (10, 90): the start (0, 0) is 40 mm below the top (50 units tall).
    line = np.array([[0, 0, 0], [0, 100, 0], [1, 0, 50]], float)
    plotter = utils.Plotter(page_width=100, page_height=100, margin=10, line_height=1000, feed_rate=1200,
                            pen_up="M5", pen_down="M3 S90")
    lines = [l for l in utils.gcode([line], plotter).splitlines() if not l.startswith(";")]
    assert lines == ["G21 ; millimetres", "G90 ; absolute coordinates", "M5",
                     "G0 X10.000 Y50.000", "M3 S90", "G1 X90.000 Y50.000 F1200", "G1 X90.000 Y90.000", "M5",
                     "G0 X0 Y0"]


def test_gcode_pen_down_moves_retrace_the_strokes(tmp_path):
    lines = random_lines(np.random.default_rng(0))
    plotter = utils.Plotter(page_width=148, page_height=210, margin=12)
    utils.write_gcode(lines, tmp_path / "page.gcode", plotter)
    paths = gcode_paths((tmp_path / "page.gcode").read_text())
    strokes = [s for line in utils.layout_lines(lines) for s in line]
    assert len(paths) == len(strokes)
    # the page is the strokes under one scale (y up, as the pen units) and one shift: find them
    # from the extremes, then every pen-down point must lie within 0.01 mm of its stroke's
    low, high = np.concatenate(strokes).min(0), np.concatenate(strokes).max(0)
    mm = np.concatenate(paths)
    scale = (mm[:, 0].max() - mm[:, 0].min()) / (high[0] - low[0])
    for path, stroke in zip(paths, strokes):
        expected = (stroke - low) * scale + [mm[:, 0].min(), mm[:, 1].min()]
        assert path.shape == stroke.shape
        assert np.abs(path - expected).max() <= 0.01
    # inside the margins, the top left corner of the writing at them
    assert mm[:, 0].min() == pytest.approx(12, abs=1e-3) and mm[:, 1].max() == pytest.approx(210 - 12, abs=1e-3)
    assert mm[:, 0].max() <= 148 - 12 + 1e-3 and mm[:, 1].min() >= 12 - 1e-3
    # each line takes line_height mm, where the page is large enough
    assert (mm[:, 1].max() - mm[:, 1].min()) == pytest.approx(len(lines) * plotter.line_height, abs=1e-3) or \
        scale < plotter.line_height * len(lines) / (high[1] - low[1])


def test_plotter_settings_that_cannot_work_are_refused():
    for bad in [dict(margin=120), dict(margin=-1), dict(line_height=0), dict(feed_rate=0), dict(page_width=float("nan"))]:
        with pytest.raises(ValueError, match="plotter"):
            utils.Plotter(**bad)


def test_svg_paths_are_the_strokes(tmp_path):
    lines = random_lines(np.random.default_rng(1))
    utils.write_svg(lines, tmp_path / "page.svg")
    root = ET.parse(tmp_path / "page.svg").getroot()
    group = root.find("{http://www.w3.org/2000/svg}g")
    assert group.get("fill") == "none"  # centre lines, not outlines
    paths = [path_points(p.get("d")) for p in svg_paths(tmp_path / "page.svg")]
    strokes = [s * [1, -1] for line in utils.layout_lines(lines) for s in line]
    assert len(paths) == len(strokes)
    for path, stroke in zip(paths, strokes):
        stroke = stroke if len(stroke) > 1 else np.repeat(stroke, 2, axis=0)  # a dot is drawn as a zero-length path
        assert np.abs(path - stroke).max() <= 0.005 + 1e-9


@pytest.mark.filterwarnings("ignore:.*stalled")  # an untrained model's window does not move
def test_generate_writes_gcode(tmp_path):
    path = tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "page.gcode"
    generate.main(["--checkpoint", path, "--text", "ab", "--seed", "0", "--max_points_per_char", "3",
                   "--out", str(out), "--feed_rate", "900", "--pen_up", "M5", "--pen_down", "M3 S40", "--page_mm", "100", "80"])
    text = out.read_text()
    assert "G21 ; millimetres" in text and "M3 S40" in text and "F900" in text
    assert "100 x 80 mm page" in text.splitlines()[0]


# ----------------------------------------------------------------------------- export-web

def test_export_web_writes_the_model_the_alphabet_and_the_rules(tmp_path):
    path = tiny_checkpoint(tmp_path / "tiny.pt")
    checkpoint.main(["export-web", path, str(tmp_path / "web"), "--precision", "fp32",
                     "--judge_copy", str(tmp_path / "judge.pt")])
    bundle = read_script(tmp_path / "web" / "model.js", "HANDWRITING_MODEL")
    assert bundle["alphabet"] == dataset.ALPHABET and bundle["lookalikes"] == dataset.LOOKALIKES
    assert bundle["max_points_per_char"] == generate.MAX_POINTS_PER_CHAR and bundle["retries"] == generate.RETRIES
    assert bundle["plotter"] == asdict(utils.Plotter()) and bundle["line_gap"] == utils.LINE_GAP
    layer1 = bundle["layers"]["layer1"]
    assert (layer1["rows"], layer1["cols"]) == (80, 3 + 20 + 84)
    # fp32 keeps the weights exactly: the judge copy is the checkpoint's own weights
    saved, copy = checkpoint.load(path), checkpoint.load(str(tmp_path / "judge.pt"))
    for name, tensor in saved["model"].items():
        torch.testing.assert_close(copy["model"][name], tensor, rtol=0, atol=0)
    assert not (tmp_path / "web" / "hands.js").exists()  # no hands.json, no hands


def test_int8_weights_round_each_group_of_a_row_to_its_own_scale():
    # a row of 40 weights: groups of 32 and 8, each scaled by its largest magnitude over 127
    row = torch.zeros(40)
    row[0], row[1], row[31] = 0.5, -1.0, 0.25
    row[32], row[33] = 100.0, -50.0
    weight = torch.stack([row, torch.zeros(40)])
    stored, scales = checkpoint.compact(weight, "int8")
    assert checkpoint.INT8_GROUP == 32 and stored.dtype == torch.int8
    torch.testing.assert_close(scales, torch.tensor([[1 / 127, 100 / 127], [1.0, 1.0]]))
    assert stored[0, [0, 1, 31, 32, 33]].tolist() == [64, -127, 32, 127, -64]  # round(127 w / largest)
    rounded = checkpoint.expanded(stored, scales)
    assert (rounded[0, :32] - weight[0, :32]).abs().max() <= 0.5 / 127 + 1e-7
    assert (rounded - weight).abs().max() <= 0.5 * 100 / 127 + 1e-5


def read_script(path, name):
    """The value a script written by export-web assigns to globalThis[name]."""
    text = Path(path).read_text(encoding="utf-8")
    prefix = f"globalThis.{name} = "
    start = text.index(prefix) + len(prefix)
    return json.loads(text[start:text.rindex(";")])


def test_the_committed_bundle_is_the_shipped_model():
    bundle = read_script(WEB / "model.js", "HANDWRITING_MODEL")
    assert bundle.pop("source") == "synthesis.pt"
    assert bundle == checkpoint.web_bundle(checkpoint.load(str(SHIPPED)), bundle["precision"]), \
        "web/model.js is not save/synthesis.pt: run python checkpoint.py export-web save/synthesis.pt web/"
    hands = read_script(WEB / "hands.js", "HANDWRITING_HANDS")
    recipes = json.loads((WEB / "hands.json").read_text())
    assert [(h["name"], h["text"]) for h in hands] == [(r["name"], r["text"]) for r in recipes]
    assert len(WEB.joinpath("model.js").read_bytes()) + sum(len(p.read_bytes()) for p in WEB.glob("*.*")
                                                            if p.name != "model.js") <= 5e6


# ----------------------------------------------------------------------------- in the browser

@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    if browser.find_browser() is None:
        pytest.skip("no Chromium or Chrome found (apt-get install chromium, or set CHROMIUM=/path)")
    downloads = tmp_path_factory.mktemp("downloads")
    try:
        with browser.headless_chromium(downloads=downloads) as page:
            page.open(WEB / "index.html")
            yield page, downloads
    except RuntimeError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def shipped_compact():
    """The shipped model with its weights rounded as web/model.js holds them, and its Writer."""
    saved = checkpoint.load(str(SHIPPED))
    bundle = read_script(WEB / "model.js", "HANDWRITING_MODEL")
    rounded = checkpoint.with_compact_weights(saved, bundle["precision"])
    model = checkpoint.build_model(rounded)
    return saved, model, generate.Writer.from_checkpoint(rounded)


def js_step(page, bundle_expression, x, state, codes, simd=True):
    """One step of the page's Network, from a state given as arrays."""
    return page.js(f"""(() => {{
        const net = new Handwriting.Network({bundle_expression}, {{simd: {json.dumps(simd)}}});
        const state = net.initialState();
        const given = {json.dumps({k: np.asarray(v).ravel().tolist() for k, v in state.items()})};
        for (const [name, values] of Object.entries(given)) state[name].set(values);
        const out = net.step({json.dumps(list(map(float, x)))}, state, Int32Array.from({json.dumps(list(map(int, codes)))}));
        return {{simd: net.simd, y: Array.from(out.y), phi: Array.from(out.phi), phiAfter: out.phiAfter,
                 state: Object.fromEntries(Object.entries(state).map(([k, v]) => [k, Array.from(v)]))}};
    }})()""")


def random_state(rng, H, K, A):
    state = {name: rng.standard_normal((1, n)).astype(np.float32) * 0.5 for name, n in zip(STATE_NAMES, (H, H, H, H, K, A))}
    state["kappa"] = np.abs(state["kappa"]) * 4  # the window a few characters into the text
    return state


def step_difference(page, bundle_expression, model, codes, simd, seed=0):
    """The largest difference between one step of the page's engine and of GenerationStep."""
    from model import State
    config = model.config
    state = random_state(np.random.default_rng(seed), config.cell_size, config.K, config.alphabet_size)
    x = np.array([[0.0, 0.4, -0.3]], np.float32)
    y, new_state, phi, phi_after = generation_step(model, codes)(x, State(*(state[n] for n in STATE_NAMES)))
    out = js_step(page, bundle_expression, x[0], state, codes, simd)
    assert out["simd"] == simd
    differences = [np.abs(np.array(out["y"]) - y[0]).max(), np.abs(np.array(out["phi"]) - phi[0]).max(),
                   abs(out["phiAfter"] - phi_after[0])]
    differences += [np.abs(np.array(out["state"][n]) - getattr(new_state, n)[0]).max() for n in STATE_NAMES]
    return max(differences)


def test_engine_step_equals_generation_step_with_fp32_weights(chromium, tmp_path):
    page, _ = chromium
    path = tiny_checkpoint(tmp_path / "tiny.pt", seed=1)
    saved = checkpoint.load(path)
    bundle = checkpoint.web_bundle(saved, "fp32")
    codes = dataset.encode_text("a tiny text", saved["alphabet"])
    model = checkpoint.build_model(saved)
    for simd in (True, False):  # WebAssembly SIMD, and the plain JavaScript where a browser has none
        assert step_difference(page, json.dumps(bundle), model, codes, simd) <= 1e-4


def test_engine_step_with_the_shipped_compact_weights(chromium, shipped_compact):
    page, _ = chromium
    saved, rounded_model, _ = shipped_compact
    codes = dataset.encode_text("Pack my box", saved["alphabet"])
    # the same rounded weights in both: only the arithmetic differs
    assert step_difference(page, "HANDWRITING_MODEL", rounded_model, codes, simd=True) <= 1e-4
    # against the shipped fp32 weights: what rounding them moves one step by, from a random state
    # (0.025 in the raw outputs; docs/browser.md has what it costs in likelihood and legibility)
    assert step_difference(page, "HANDWRITING_MODEL", checkpoint.build_model(saved), codes, simd=True) <= 0.1


CASES = ["It’s café time — naïve ﬁne", "tabs\there  and   spaces", "a newline\nparts words", "Straße «quoted» ½ €", "emoji 🙂 and ∑ x", "   "]


def test_texts_are_spelled_and_wrapped_as_python_does(chromium):
    page, _ = chromium
    result = page.js(f"""(() => {{
        const a = handwritingPage.writer.alphabet, texts = {json.dumps(CASES)};
        return texts.map(t => [a.spelled(t), Array.from(a.encode(a.spelled(t))), a.asWritten(t),
                               Handwriting.wrapWords(t, 9), Handwriting.joinedText(t, 'x')]);
    }})()""")
    writer = generate.Writer(None, dataset.ALPHABET, None)
    for text, (spelled, codes, as_written, wrapped, joined) in zip(CASES, result):
        assert spelled == dataset.spelled_in(text, dataset.ALPHABET)
        assert codes == dataset.encode_text(spelled, dataset.ALPHABET).tolist()
        assert as_written == writer.as_written(text)
        assert wrapped == generate.wrap_words(text, 9)
        assert joined == dataset.joined_text(text, "x")


def test_the_page_writes_the_strokes_writer_writes_from_the_same_draws(chromium, shipped_compact, tmp_path):
    """Unprimed and primed by a bundled hand: the page's uniform draws, given to Writer.write, give
    Python's strokes; both with the shipped model's weights as model.js rounds them."""
    page, _ = chromium
    _, _, writer = shipped_compact
    hand = read_script(WEB / "hands.js", "HANDWRITING_HANDS")[0]
    (tmp_path / "hand.json").write_text(json.dumps(hand))
    for prime in (None, generate.Prime.read(str(tmp_path / "hand.json"))):
        run = page.js(f"""(() => {{
            const draws = new Handwriting.Uniforms(11), rows = [];
            const uniforms = {{row: () => {{ const row = draws.row(); rows.push(row); return row; }}}};
            const prime = {'null' if prime is None else f'Handwriting.Prime.fromJSON({json.dumps(hand)})'};
            const line = Handwriting.Writer.run(handwritingPage.writer.writeLine('a fine day', {{bias: 1, uniforms, prime}}));
            return {{rows, offsets: line.offsets, capped: line.capped, primeWindow: line.primeWindow}};
        }})()""", timeout=60)
        rows = np.array(run["rows"], np.float32)
        writing = writer.write(["a fine day"], bias=1.0, prime=prime, uniforms=rows[:, None, :])
        assert run["capped"] == writing.capped[0] is False
        if prime is not None:  # where the window stood after the prime: what the prime check judges
            assert run["primeWindow"] == writing.prime_window[0] == 0
        assert len(run["offsets"]) == len(writing.lines[0]) > 20
        np.testing.assert_allclose(run["offsets"], writing.lines[0], atol=1e-2)  # pen units: a line is ~3,000 wide


def test_a_stalled_line_is_written_again_with_the_next_seeds_and_kept_marked(chromium, tmp_path):
    """Writer.write_page's rule: a line that hits the step cap is tried again with the next seed,
    up to RETRIES times; a line that still stalls is kept, marked capped, and primes nothing, so
    the next line is written unprimed; every attempt takes the next seed."""
    page, _ = chromium
    bundle = checkpoint.web_bundle(checkpoint.load(tiny_checkpoint(tmp_path / "tiny.pt")), "fp32")
    attempts, last_seeds, written = page.js(f"""(() => {{
        const writer = new Handwriting.Writer({json.dumps(bundle)}), attempts = [], seeds = [];
        const written = Handwriting.Writer.run(writer.writePage(['ab', 'c'], {{seed: 7, maxPointsPerChar: 1,
            onLine: (number, tries) => attempts.push([number, tries]), onWritten: (n, line, seed) => seeds.push(seed)}}));
        return [attempts, seeds, written.map(w => [w.text, w.capped, w.offsets.length])];
    }})()""")
    tries = list(range(generate.RETRIES + 1))
    assert attempts == [[0, t] for t in tries] + [[1, t] for t in tries]
    assert last_seeds == [7 + generate.RETRIES, 7 + 2 * generate.RETRIES + 1]
    # capped at 1 point a character (+1): 3 and 2 new points after the start row, unprimed both
    assert written == [["ab", True, 4], ["c", True, 3]]


def test_the_json_prime_of_a_page_is_as_many_first_lines_as_a_prime_may_hold(chromium):
    page, _ = chromium
    line = [[0, 0, 0], [0, 10, 5], [1, 10, -5]]  # one stroke of 3 points, 20 units wide
    texts = ["a" * 100, "b" * 90, "c" * 50]
    prime = page.js(f"HandwritingOutputs.primeJSON({json.dumps([line] * 3)}, {json.dumps(texts)}, 0.3, 200)")
    assert prime["text"] == texts[0] + " " + texts[1]  # 191 characters; with the third, 242
    assert [l["text"] for l in prime["lines"]] == texts
    first, second = prime["strokes"]
    assert first == [[0, 0], [10, -5], [20, 0]]  # y down
    gap = 0.3 * 5  # the gap between lines, in heights of the tallest
    assert second[0][0] == pytest.approx(20 + gap) and [p[1] for p in second] == [0, -5, 0]


def test_a_prime_is_read_as_python_reads_it(chromium, shipped_compact, tmp_path):
    page, _ = chromium
    _, _, writer = shipped_compact
    # a hand-made line: a repeated point (dropped), a pen-up jump, a one-point stroke
    line = {"text": " drawn  ", "strokes": [[[10, 50], [12, 40], [12, 40], [20, 44], [31, 38]], [[40, 50]],
                                             [[45, 30], [47, 55], [60, 52]]]}
    (tmp_path / "line.json").write_text(json.dumps(line))
    expected = writer.prime_offsets(generate.Prime.read(str(tmp_path / "line.json"))).numpy()
    text, offsets = page.js(f"""(() => {{
        const prime = Handwriting.Prime.fromJSON({json.dumps(line)});
        return [prime.text, handwritingPage.writer.primeOffsets(prime)];
    }})()""")
    assert text == "drawn"
    np.testing.assert_allclose(offsets, expected, atol=1e-5)


# ----------------------------------------------------------------------------- the page

def test_page_is_self_contained():
    """Nothing in web/ can load anything from outside the folder: no URLs, no network APIs, scripts
    only from files beside the page."""
    for path in [*WEB.glob("*.html"), *(p for p in WEB.glob("*.js") if p.name not in ("model.js", "hands.js"))]:
        text = path.read_text(encoding="utf-8")
        urls = set(re.findall(r"\w+://[^\s\"'<>)]*", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, f"{path.name} refers to something outside the page: {urls}"
        for pattern in (r"(?i)<(link|img|iframe|object|embed|audio|video)\b", r"@import", r"@font-face",
                        r"(?<![\w.])url\(", r"\bfetch\(", r"XMLHttpRequest", r"WebSocket", r"EventSource",
                        r"sendBeacon", r"\bimport\(", r"importScripts"):
            assert not re.search(pattern, text), f"{path.name} contains {pattern!r}"
        for source in re.findall(r"(?i)\bsrc\s*=\s*\"([^\"]*)\"", text):
            assert "/" not in source and (WEB / source).exists(), f"{path.name} loads {source}, not a file of web/"


def test_draw_html_leads_to_the_page():
    html = (ROOT / "draw.html").read_text(encoding="utf-8")
    assert 'content="0; url=web/index.html#your-hand"' in html and 'href="web/index.html#your-hand"' in html


def stroke_points(left, top, xs, ys):
    return [(left + x, top + y) for x, y in zip(xs, ys)]


def test_pad_draws_undoes_and_downloads_a_line(chromium):
    page, downloads = chromium
    page.open(WEB / "index.html")
    state = lambda: page.js("handwritingJSON()")
    disabled = lambda button: page.js(f"document.getElementById('{button}').disabled")
    assert state() == {"text": "", "strokes": []}
    assert disabled("undo") and disabled("clear") and disabled("use-hand") and disabled("download-line")
    page.js("document.getElementById('pad').scrollIntoView()")
    pad = page.rect("#pad")
    assert pad["w"] > 900 and pad["h"] >= 150, pad
    left, top = pad["x"], pad["y"]

    # stroke 1, mouse: a repeated point (dropped), fractional coordinates (rounded to 0.1), relative
    # to the pad's top left corner, y down
    page.mouse_stroke([(left + 40, top + 30), (left + 55, top + 60), (left + 55, top + 60),
                       (left + 70.26, top + 95.64), (left + 90, top + 120)])
    stroke1 = [[40, 30], [55, 60], [70.3, 95.6], [90, 120]]
    assert state() == {"text": "", "strokes": [stroke1]}
    assert not disabled("undo") and disabled("download-line")  # no text yet
    # stroke 2, touch: a finger writes upwards
    page.touch_stroke([(left + 150, top + 140), (left + 170, top + 110), (left + 200, top + 80)])
    assert state()["strokes"] == [stroke1, [[150, 140], [170, 110], [200, 80]]]

    page.click("#pad-text")
    page.type("Hello, world")
    page.click("#undo")
    expected = {"text": "Hello, world", "strokes": [stroke1]}
    assert state() == expected
    saved = page.download("#download-line", downloads)
    assert saved.name == "handwriting-hello-world.json"
    assert json.loads(saved.read_text(encoding="utf-8")) == expected

    # Ctrl+Z (the focus on a button) undoes a stroke too; Clear empties the pad
    page.send("Input.dispatchKeyEvent", type="keyDown", modifiers=2, key="z", code="KeyZ", windowsVirtualKeyCode=90)
    page.send("Input.dispatchKeyEvent", type="keyUp", modifiers=2, key="z", code="KeyZ", windowsVirtualKeyCode=90)
    assert state()["strokes"] == []
    page.mouse_stroke([(left + 10, top + 10), (left + 20, top + 20)])
    page.click("#clear")
    assert state() == {"text": "Hello, world", "strokes": []} and disabled("undo")


def test_page_writes_in_a_drawn_hand_and_downloads(chromium, tmp_path):
    page, downloads = chromium
    page.open(WEB / "index.html")
    page.js("document.getElementById('pad').scrollIntoView()")
    pad = page.rect("#pad")
    # a line of handwriting: two wavy strokes along the baseline, then a dot
    t = np.linspace(0, 6 * np.pi, 40)
    page.mouse_stroke(stroke_points(pad["x"] + 30, pad["y"] + 100, 4 * t, -12 * np.abs(np.sin(t))))
    page.mouse_stroke(stroke_points(pad["x"] + 120, pad["y"] + 100, 4 * t, -12 * np.abs(np.sin(t)) + 2))
    page.mouse_stroke([(pad["x"] + 200, pad["y"] + 70), (pad["x"] + 201, pad["y"] + 71)])
    page.click("#pad-text")
    page.type("mum mum")
    page.click("#use-hand")
    assert page.js("document.querySelector('input[name=hand]:checked').parentElement.textContent") == "Yours: mum mum"

    page.js("document.getElementById('text').value = 'on and on'; document.getElementById('width').value = 6;"
            "document.getElementById('seed').value = 3")
    page.click("#write")
    page.wait_for("handwritingPage.result() !== null && !handwritingPage.busy()", timeout=60)
    result = page.js("handwritingPage.result()")
    assert result["texts"] == ["on and", "on"]
    lines = [np.array(line) for line in result["lines"]]
    assert all(len(line) > 1 for line in lines)

    svg = page.download("#download-svg", downloads)
    paths = [path_points(p.get("d")) for p in svg_paths(svg)]
    utils.write_svg(lines, tmp_path / "python.svg")
    python_paths = [path_points(p.get("d")) for p in svg_paths(tmp_path / "python.svg")]
    assert len(paths) == len(python_paths) and all(np.abs(a - b).max() <= 0.011 for a, b in zip(paths, python_paths))

    gcode = page.download("#download-gcode", downloads).read_text()
    expected = gcode_paths(utils.gcode(lines))
    assert len(gcode_paths(gcode)) == len(expected)
    assert all(np.abs(a - b).max() <= 0.0011 for a, b in zip(gcode_paths(gcode), expected))

    prime = generate.Prime.read(str(page.download("#download-json", downloads)))  # what --prime reads
    assert prime.text == "on and on"
    assert len(prime.offsets) == sum(len(line) for line in lines)
    assert page.download("#download-png", downloads).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    # every request was for a file of web/, or a blob the page made for a download
    requested = page.requests()
    assert (WEB / "model.js").as_uri() in requested  # the monitor does see requests
    assert all(url.startswith((WEB.as_uri() + "/", "blob:", "data:")) for url in requested), requested
    assert not page.errors()
