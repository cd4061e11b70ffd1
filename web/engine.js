/* The synthesis network of Graves (2013) writing in the page: one sampling step, and the writing
 * rules of generate.Writer around it, for one line at a time.
 *
 * The model's maths lives in Python (model.py); this is its sampling step again, held to it by
 * tests/test_web.py: one step equals model.GenerationStep, and the same uniform draws write the
 * same strokes as Writer.write. Weights, alphabet and constants come from the bundle that
 * `python checkpoint.py export-web` writes (web/model.js), so they cannot drift from Python's.
 *
 * Runs in a page (globalThis.Handwriting) and in node (module.exports), with no dependencies.
 */
(function (root) {
  'use strict';

  // ------------------------------------------------------------------------- weights

  function bytesOf(base64) {
    const binary = atob(base64);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  // little-endian arrays, as numpy's tobytes() writes them on every machine the page runs on
  const float32s = base64 => new Float32Array(bytesOf(base64).buffer);

  /* int8 weights (rows, cols) times their scales (rows, groups): a scale for each `group` weights of a row */
  function dequantised(values, scales, {rows, cols, group}) {
    const weight = new Float32Array(rows * cols), groups = Math.ceil(cols / group);
    if (scales.length !== rows * groups) throw new Error(`a layer of the bundle holds ${scales.length} scales, not ${rows} x ${groups}`);
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < cols; j++) weight[r * cols + j] = values[r * cols + j] * scales[r * groups + Math.floor(j / group)];
    }
    return weight;
  }

  function halfToFloat(half) {
    const sign = half & 0x8000 ? -1 : 1, exponent = (half >> 10) & 0x1f, fraction = half & 0x3ff;
    if (exponent === 0) return sign * fraction * 2 ** -24;  // subnormal
    if (exponent === 31) return fraction ? NaN : sign * Infinity;
    return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
  }

  /* One layer, outputs = W inputs + b, W (rows, cols) row-major: each output is a dot product
   * over one contiguous row. Weights stored as int8 (with a scale for every `group` of a row's
   * weights) or fp16 become float32 here. With a Simd `arena` the products run in WebAssembly's
   * 4-wide float vectors, else in plain JavaScript. */
  class Layer {
    constructor(spec, arena = null) {
      this.rows = spec.rows;
      this.cols = spec.cols;
      this.bias = float32s(spec.bias);
      const bytes = bytesOf(spec.weight);
      if (spec.precision === 'int8') this.weight = dequantised(new Int8Array(bytes.buffer), float32s(spec.scales), spec);
      else if (spec.precision === 'fp16') this.weight = Float32Array.from(new Uint16Array(bytes.buffer), halfToFloat);
      else this.weight = new Float32Array(bytes.buffer);
      if (this.weight.length !== this.rows * this.cols || this.bias.length !== this.rows) {
        throw new Error(`a layer of the bundle holds ${this.weight.length} weights, not ${this.rows} x ${this.cols}`);
      }
      this.simd = arena ? arena.place(this) : null;
      if (this.simd) this.weight = null;  // one copy of the weights: WebAssembly's
    }

    apply(input, out) {
      const sums = this.simd ? this.simd.apply(input) : this.sums(input), {rows, bias} = this;
      for (let r = 0; r < rows; r++) out[r] = bias[r] + sums[r];
      return out;
    }

    /* W[r] . input for every row r in JavaScript, four sums at a time for the JIT to pipeline */
    sums(input) {
      const {rows, cols, weight: w} = this;
      const sums = this.jsSums || (this.jsSums = new Float64Array(rows));
      const whole = cols - (cols % 4);
      for (let r = 0, k = 0; r < rows; r++) {
        let s0 = 0, s1 = 0, s2 = 0, s3 = 0, j = 0;
        for (; j < whole; j += 4, k += 4) {
          s0 += w[k] * input[j];
          s1 += w[k + 1] * input[j + 1];
          s2 += w[k + 2] * input[j + 2];
          s3 += w[k + 3] * input[j + 3];
        }
        for (; j < cols; j++, k++) s0 += w[k] * input[j];
        sums[r] = (s0 + s1) + (s2 + s3);
      }
      return sums;
    }
  }

  // ------------------------------------------------------------------------- WebAssembly SIMD

  /* A WebAssembly module of one function, f32(w, x, out, rows, cols): out[r] = W[r] . x for float32
   * weights W (rows, cols) and inputs x, cols a multiple of 16 (rows zero-padded), 16 columns a
   * turn in four 4-wide accumulators. Assembled here, byte by byte, from the binary format's
   * opcodes (webassembly.github.io/spec): 400 bytes, nothing to download or build. */
  function simdModuleBytes() {
    const leb = n => { const out = []; do { let b = n & 0x7f; n >>>= 7; if (n) b |= 0x80; out.push(b); } while (n); return out; };
    const vec = items => [...leb(items.length), ...items.flat()];
    const section = (id, bytes) => [id, ...leb(bytes.length), ...bytes];
    const name = text => vec([...text].map(c => c.charCodeAt(0)));
    const simd = op => [0xfd, ...leb(op)];
    const signed = n => (n < 64 ? [n] : [0x80 | (n & 0x7f), n >> 7]);  // LEB128 of 0 <= n < 8192, as i32.const reads it
    const get = i => [0x20, i], set = i => [0x21, i], i32 = n => [0x41, ...signed(n)];
    const load = offset => [...simd(0x00), 4, ...leb(offset)];  // v128.load, 16-byte aligned
    const [ADD, MUL, LANE] = [simd(0xe4), simd(0xe6), simd(0x1f)];  // f32x4.add, f32x4.mul, f32x4.extract_lane
    const [W, X, OUT, ROWS, COLS, XP, XEND, ACC] = [0, 1, 2, 3, 4, 5, 6, 7];  // params, then locals
    const turn = [0, 1, 2, 3].flatMap(a => [...get(ACC + a), ...get(W), ...load(16 * a), ...get(XP), ...load(16 * a),
                                            ...MUL, ...ADD, ...set(ACC + a)]);
    const code = [
      0x02, 0x40, ...get(ROWS), 0x45, 0x0d, 0,  // block; rows == 0: done
      0x03, 0x40,  // loop over rows
      ...[0, 1, 2, 3].flatMap(a => [...simd(0x0c), ...new Array(16).fill(0), ...set(ACC + a)]),  // accumulators = 0
      ...get(X), ...set(XP), ...get(X), ...get(COLS), ...i32(2), 0x74, 0x6a, ...set(XEND),  // xend = x + 4 cols
      0x03, 0x40,  // loop over the row, 16 columns a turn
      ...turn,
      ...get(W), ...i32(64), 0x6a, ...set(W), ...get(XP), ...i32(64), 0x6a, ...set(XP),
      ...get(XP), ...get(XEND), 0x49, 0x0d, 0,  // xp < xend: again
      0x0b,
      ...get(OUT), ...get(ACC), ...get(ACC + 1), ...ADD, ...get(ACC + 2), ...ADD, ...get(ACC + 3), ...ADD, 0x22, ACC,
      ...LANE, 0, ...get(ACC), ...LANE, 1, 0x92, ...get(ACC), ...LANE, 2, 0x92, ...get(ACC), ...LANE, 3, 0x92,
      0x38, 2, 0,  // f32.store out[r]
      ...get(OUT), ...i32(4), 0x6a, ...set(OUT),
      ...get(ROWS), ...i32(1), 0x6b, 0x22, ROWS, 0x0d, 0,  // --rows != 0: next row
      0x0b, 0x0b, 0x0b,
    ];
    const body = [...vec([[...leb(2), 0x7f], [...leb(4), 0x7b]]), ...code];  // locals: 2 i32, 4 v128
    return new Uint8Array([
      0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0,
      ...section(1, vec([[0x60, ...vec([0x7f, 0x7f, 0x7f, 0x7f, 0x7f]), ...vec([])]])),  // (i32 x 5) -> ()
      ...section(2, vec([[...name('env'), ...name('memory'), 0x02, 0x00, ...leb(1)]])),   // imports a memory
      ...section(3, vec([[0]])),
      ...section(7, vec([[...name('f32'), 0x00, 0]])),
      ...section(10, vec([[...leb(body.length), ...body]])),
    ]);
  }

  /* The layers' weights, inputs and outputs in one WebAssembly memory, or null where the
   * browser has no WebAssembly SIMD (the layers then compute in JavaScript). */
  class Simd {
    static create(specs) {
      const bytes = simdModuleBytes();
      if (typeof WebAssembly === 'undefined' || !WebAssembly.validate(bytes)) return null;
      const padded = cols => Math.ceil(cols / 16) * 16;
      const size = specs.reduce((total, {rows, cols}) => total + 4 * (rows * padded(cols) + padded(cols) + rows) + 64, 0);
      const memory = new WebAssembly.Memory({initial: Math.ceil(size / 65536)});
      const {exports} = new WebAssembly.Instance(new WebAssembly.Module(bytes), {env: {memory}});
      return new Simd(memory, exports.f32);
    }

    constructor(memory, kernel) { Object.assign(this, {memory, kernel, used: 0}); }

    allocate(length) {
      const view = new Float32Array(this.memory.buffer, this.used, length);
      this.used += Math.ceil(view.byteLength / 16) * 16;
      return view;
    }

    /* A layer's weights copied in, rows zero-padded to 16 columns; returns its apply(input) -> sums. */
    place(layer) {
      const {rows, cols} = layer, stride = Math.ceil(cols / 16) * 16, kernel = this.kernel;
      const weight = this.allocate(rows * stride);
      for (let r = 0; r < rows; r++) weight.set(layer.weight.subarray(r * cols, (r + 1) * cols), r * stride);
      const x = this.allocate(stride), sums = this.allocate(rows);
      return {apply: input => { x.set(input); kernel(weight.byteOffset, x.byteOffset, sums.byteOffset, rows, stride); return sums; }};
    }
  }

  // ------------------------------------------------------------------------- the network

  const sigmoid = z => 0.5 + 0.5 * Math.tanh(0.5 * z);  // no overflow, as GenerationStep.cell

  /* An LSTM cell from pre-activations z (4H, gates i, f, o, g): updates h and c in place. */
  function cell(z, h, c) {
    const H = c.length;
    for (let j = 0; j < H; j++) {
      const i = sigmoid(z[j]), f = sigmoid(z[H + j]), o = sigmoid(z[2 * H + j]), g = Math.tanh(z[3 * H + j]);
      c[j] = f * c[j] + i * g;
      h[j] = o * Math.tanh(c[j]);
    }
  }

  /* The synthesis network's step for one line, as model.GenerationStep computes it: from the
   * last point x and the state, the raw output y (6M+1) that predicts the next point. */
  class Network {
    constructor(bundle, {simd = true} = {}) {
      const {cell_size: H, num_clusters: M, K, alphabet_size: A, task} = bundle.config;
      if (task !== 'synthesis') throw new Error(`the bundle holds a ${task} model; the page writes texts (synthesis)`);
      Object.assign(this, {H, M, K, A, expFloor: bundle.exp_floor});
      const layers = bundle.layers, arena = simd ? Simd.create(Object.values(layers)) : null;
      this.simd = arena !== null;
      this.layer1 = new Layer(layers.layer1, arena);   // over [x, h1, w]
      this.window = new Layer(layers.window, arena);   // over h1
      this.layer2 = new Layer(layers.layer2, arena);   // over [x, h1, w, h2]
      this.output = new Layer(layers.output, arena);   // over [h1, h2]
      this.input1 = new Float64Array(3 + H + A);
      this.input2 = new Float64Array(3 + H + A + H);
      this.z = new Float64Array(4 * H);
      this.windowParams = new Float64Array(3 * K);
      this.alpha = new Float64Array(K);
      this.beta = new Float64Array(K);
      this.y = new Float64Array(6 * M + 1);
    }

    initialState() {
      const {H, K, A} = this;
      return {h1: new Float64Array(H), c1: new Float64Array(H), h2: new Float64Array(H), c2: new Float64Array(H),
              kappa: new Float64Array(K), window: new Float64Array(A)};
    }

    /* One step on `codes` (the text, an Int32Array): updates `state` in place; returns y (6M+1),
     * phi (U, the window that fed this step) and phiAfter (its weight one position past the text),
     * all owned by the network until the next step. */
    step(x, state, codes) {
      const {H, K, A} = this, U = codes.length;
      const input1 = this.input1;
      input1.set(x, 0);
      input1.set(state.h1, 3);
      input1.set(state.window, 3 + H);
      cell(this.layer1.apply(input1, this.z), state.h1, state.c1);
      // eqs. 48-51: alpha, beta and kappa's step are the window layer's outputs, exponentiated
      const p = this.window.apply(state.h1, this.windowParams);
      const alpha = this.alpha, beta = this.beta;
      for (let k = 0; k < K; k++) {
        alpha[k] = Math.exp(p[k]);
        beta[k] = Math.exp(p[K + k]);
        state.kappa[k] += Math.exp(p[2 * K + k]);
      }
      if (!this.phi || this.phi.length !== U + 1) this.phi = new Float64Array(U + 1);
      const phi = this.phi;
      for (let u = 0; u <= U; u++) {  // eq. 46, one position past the text too (Graves' stopping rule)
        let sum = 0;
        for (let k = 0; k < K; k++) {
          const d = state.kappa[k] - u;
          sum += alpha[k] * Math.exp(Math.max(-beta[k] * d * d, this.expFloor));
        }
        phi[u] = sum;
      }
      state.window.fill(0);
      for (let u = 0; u < U; u++) state.window[codes[u]] += phi[u];  // w = phi . one_hot(text)
      const input2 = this.input2;
      input2.set(input1.subarray(0, 3), 0);
      input2.set(state.h1, 3);
      input2.set(state.window, 3 + H);
      input2.set(state.h2, 3 + H + A);
      cell(this.layer2.apply(input2, this.z), state.h2, state.c2);
      input2.set(state.h1, 0);  // [h1, h2] for the output layer, in the front of the same buffer
      input2.set(state.h2, H);
      this.output.apply(input2.subarray(0, 2 * H), this.y);
      return {y: this.y, phi: phi.subarray(0, U), phiAfter: phi[U]};
    }

    /* The next point [end_of_stroke, dx, dy] from y, Graves' bias, and one row of uniforms
     * [u_component, u_end_of_stroke, u_1, u_2] in [0, 1): the same draw as the Python sampler's. */
    sample(y, bias, [uComponent, uEnd, u1, u2]) {
      const M = this.M;
      let largest = -Infinity;
      for (let j = 0; j < M; j++) largest = Math.max(largest, y[1 + j] * (1 + bias));
      const cdf = new Float64Array(M);
      for (let j = 0, total = 0; j < M; j++) cdf[j] = total += Math.exp(y[1 + j] * (1 + bias) - largest);
      let component = 0;  // the inverse CDF: the first component whose cumulative weight passes u
      while (component < M - 1 && cdf[component] < uComponent * cdf[M - 1]) component++;
      const at = block => y[1 + block * M + component];
      const rho = Math.tanh(at(5));
      const radius = Math.sqrt(-2 * Math.log(1 - u1));  // Box-Muller: two standard normals
      const nx = radius * Math.cos(2 * Math.PI * u2), ny = radius * Math.sin(2 * Math.PI * u2);
      const dx = at(1) + Math.exp(at(3) - bias) * nx;
      const dy = at(2) + Math.exp(at(4) - bias) * (rho * nx + Math.sqrt(1 - rho * rho) * ny);
      return [uEnd < sigmoid(y[0]) ? 1 : 0, dx, dy];
    }
  }

  // ------------------------------------------------------------------------- randomness

  /* The page's uniforms: xoshiro128** (Blackman and Vigna) seeded by splitmix32 from one integer.
   * Each draw is 24 bits, k / 2^24, so that it is exactly a float32 and reaches Python unchanged.
   * The page's seed N is not generate.py's --seed N: Python draws through torch's generator. */
  class Uniforms {
    constructor(seed) {
      let x = seed >>> 0;
      const splitmix = () => {
        x = (x + 0x9e3779b9) >>> 0;
        let z = x;
        z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
        z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
        return (z ^ (z >>> 16)) >>> 0;
      };
      this.s = Uint32Array.of(splitmix(), splitmix(), splitmix(), splitmix());
    }

    next32() {
      const s = this.s, rotl = (v, k) => (v << k) | (v >>> (32 - k));
      const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
      const t = s[1] << 9;
      s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
      s[2] ^= t;
      s[3] = rotl(s[3], 11);
      return result;
    }

    /* One point's row [u_component, u_end_of_stroke, u_1, u_2]. */
    row() {
      return [0, 0, 0, 0].map(() => (this.next32() >>> 8) / 16777216);
    }
  }

  // ------------------------------------------------------------------------- text

  /* The writing rules of generate.Writer and dataset.py, with the alphabet and the look-alikes
   * exported from Python. Texts are handled as arrays of code points, as Python's strings are. */
  class Alphabet {
    constructor(bundle) {
      this.characters = Array.from(bundle.alphabet);
      this.index = new Map(this.characters.map((ch, i) => [ch, i]));
      this.lookalikes = bundle.lookalikes;
      this.replacement = this.index.get(bundle.unknown_replacement);
    }

    /* dataset.spelled_in: a look-alike for a character outside the alphabet where one exists */
    spelled(text) {
      return Array.from(text, ch => {
        if (this.index.has(ch)) return ch;
        const alike = this.lookalikes[ch] ?? Array.from(ch.normalize('NFKD')).filter(c => !/\p{M}/u.test(c)).join('');
        return alike && Array.from(alike).every(c => this.index.has(c)) ? alike : ch;
      }).join('');
    }

    /* dataset.encode_text: codes, characters outside the alphabet as the unknown replacement's */
    encode(text) {
      return Int32Array.from(Array.from(text), ch => this.index.get(ch) ?? this.replacement);
    }

    /* Writer.as_written: the text as the network reads it */
    asWritten(text) {
      return Array.from(this.encode(this.spelled(text)), code => this.characters[code]).join('');
    }
  }

  /* generate.window_after_prime: where the window's peak is once the network has read a prime, in
   * characters after the space that joins the prime's text to the line's; null where it is past
   * the whole text (the line ended at once, or a flat window) */
  function windowAfterPrime(phi, primeChars) {
    let peak = 0, low = Infinity, high = -Infinity;
    phi.forEach((v, u) => { if (v > phi[peak]) peak = u; low = Math.min(low, v); high = Math.max(high, v); });
    return high > low ? peak - (primeChars - 1) : null;
  }

  const joinedText = (primeText, text) => `${primeText.replace(/\s+$/u, '')} ${text}`;  // dataset.joined_text

  /* generate.wrap_words: lines of at most `width` characters between words; a longer word alone */
  function wrapWords(text, width) {
    const lines = [];
    for (const word of text.split(/\s+/u).filter(Boolean)) {
      const last = lines.length - 1;
      if (last >= 0 && Array.from(lines[last]).length + 1 + Array.from(word).length <= width) lines[last] += ' ' + word;
      else lines.push(word);
    }
    return lines;
  }

  // ------------------------------------------------------------------------- ink

  function median(values) {
    const sorted = Float64Array.from(values).sort();
    const n = sorted.length, mid = n >> 1;
    return n % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }

  /* Strokes ([[x, y], ...] per stroke, y down: the JSON a prime is read from) -> offsets
   * [end_of_stroke, dx, dy] rows, y up (data_preprocessing.points_to_offsets). */
  function strokesToOffsets(strokes) {
    const offsets = [];
    let previous = null;
    for (const stroke of strokes.filter(s => s.length)) {
      stroke.forEach((point, i) => {
        offsets.push([i === stroke.length - 1 ? 1 : 0, previous ? point[0] - previous[0] : 0,
                      previous ? -(point[1] - previous[1]) : 0]);
        previous = point;
      });
    }
    return offsets;
  }

  /* Offsets -> strokes of absolute points, y up (utils.offsets_to_strokes). */
  function offsetsToStrokes(offsets) {
    const strokes = [];
    let x = 0, y = 0, stroke = [];
    for (const [end, dx, dy] of offsets) {
      x += dx; y += dy;
      stroke.push([x, y]);
      if (end > 0.5) { strokes.push(stroke); stroke = []; }
    }
    if (stroke.length) strokes.push(stroke);
    return strokes;
  }

  /* Pen-down rows: those after a row that did not end a stroke (data_preprocessing.pen_down_rows). */
  const penDown = (offsets, t) => t > 0 && offsets[t - 1][0] < 0.5;

  /* ink.remove_repeated_points: drop pen-down rows of length 0, a removed row
   * that ended its stroke handing the end to the row before it */
  function withoutRepeatedPoints(offsets) {
    const rows = offsets.map(row => row.slice());
    const remove = rows.map((row, t) => penDown(offsets, t) && row[1] === 0 && row[2] === 0);
    for (let t = rows.length - 1; t >= 0; t--) if (remove[t] && rows[t][0]) rows[t - 1][0] = 1;
    return rows.filter((_, t) => !remove[t]);
  }

  // ------------------------------------------------------------------------- the writer

  /* A line of handwriting to write in the hand of: its text and offsets in pen units (Python's Prime). */
  class Prime {
    constructor(text, offsets) { this.text = text; this.offsets = offsets; }
    static fromJSON({text, strokes}) { return new Prime(text.trim(), strokesToOffsets(strokes)); }  // as Prime.read
  }

  /* generate.Writer for the page: the network with the alphabet and normalisation it was trained
   * with. Writing is a generator (function*) that yields after every point, so that the page can
   * draw lines as they are written; Writer.run drives one to its end at once. */
  class Writer {
    constructor(bundle, options = {}) {
      this.bundle = bundle;
      this.network = new Network(bundle, options);
      this.alphabet = new Alphabet(bundle);
      this.mean = bundle.offset_mean;
      this.std = bundle.offset_std;
      this.maxPointsPerChar = bundle.max_points_per_char;
      this.retries = bundle.retries;
      this.medianStep = bundle.median_step;
    }

    static run(generator) {
      for (;;) {
        const {done, value} = generator.next();
        if (done) return value;
      }
    }

    normalise([end, dx, dy]) { return [end, (dx - this.mean[0]) / this.std[0], (dy - this.mean[1]) / this.std[1]]; }
    toPenUnits([end, dx, dy]) { return [end, dx * this.std[0] + this.mean[0], dy * this.std[1] + this.mean[1]]; }

    /* Writer.prime_offsets: without repeated points, at the data's pace, normalised, pen lifted at the end */
    primeOffsets(prime) {
      const offsets = withoutRepeatedPoints(prime.offsets);
      const steps = offsets.filter((row, t) => penDown(offsets, t)).map(([, dx, dy]) => Math.hypot(dx, dy)).filter(s => s > 0);
      const scale = steps.length ? this.medianStep / median(steps) : 1;
      const rows = offsets.map(([end, dx, dy]) => this.normalise([end, dx * scale, dy * scale]));
      rows[rows.length - 1][0] = 1;
      return rows;
    }

    /* Writer._write for one line: {text (as written), offsets (pen units), capped (hit the step
     * cap), primeWindow (windowAfterPrime, primed lines)}. `uniforms` gives one row a point;
     * onPoint(offsets) sees the line after each point. */
    *writeLine(text, {bias = 0, uniforms, prime = null, maxPointsPerChar = this.maxPointsPerChar, onPoint} = {}) {
      if (!text.trim()) throw new Error('cannot write an empty (or whitespace-only) text');
      text = this.alphabet.spelled(text);
      const read = prime ? joinedText(this.alphabet.spelled(prime.text), text) : text;
      const codes = this.alphabet.encode(read);
      const cap = maxPointsPerChar * (Array.from(text).length + 1);
      const net = this.network, state = net.initialState();
      let x;
      if (prime) {  // the prime read teacher-forced, all rows but the last, which plays the start row's part
        const rows = this.primeOffsets(prime);
        for (const row of rows.slice(0, -1)) net.step(row, state, codes);
        x = rows[rows.length - 1];
      } else {
        x = [0, -this.mean[0] / this.std[0], -this.mean[1] / this.std[1]];
      }
      // the line in pen units as it grows: unprimed from its start row; primed from its first new
      // point, put at the origin (the pen's jump from the prime left out), as Writer._write returns it
      const line = prime ? [] : [this.toPenUnits(x)];
      let steps = 0, capped = false, primeWindow = null;
      for (;;) {
        const noise = uniforms.row();
        const {y, phi, phiAfter} = net.step(x, state, codes);
        if (phiAfter > phi.reduce((a, b) => Math.max(a, b), -Infinity)) break;  // model.finished: the whole text read
        if (prime && steps === 0) primeWindow = windowAfterPrime(phi, codes.length - Array.from(text).length);
        x = net.sample(y, bias, noise);
        const point = this.toPenUnits(x);
        line.push(line.length ? point : [point[0], 0, 0]);
        steps += 1;
        if (onPoint) onPoint(line);
        yield steps;
        if (steps >= cap) { capped = true; break; }
      }
      return {text, offsets: line, capped, primeWindow};
    }

    /* generate.check_prime_window: whether a line's prime has text and ink that agree (its
     * window's peak near the joining space once the network has read it); a message if not. */
    primeDisagrees(prime, primeWindow) {
      if (primeWindow !== null && Math.abs(primeWindow) <= this.bundle.prime_window_slack) return null;
      const where = primeWindow === null ? "the network's window had gone past the end of the whole text"
        : primeWindow > 0 ? `the network's window was already ${primeWindow} characters into the new text`
          : `${-primeWindow} characters of its text were still unread by the network's window`;
      return `The hand's text and its ink disagree (${JSON.stringify(prime.text)}): when its ink ended, ${where}. ` +
             'Type its text as the ink writes it, word for word.';
    }

    /* Writer.write_page: the lines one after another in one hand, each primed by `prime` or else by
     * the last line written to its end; a line that stalls is written again with the next seed,
     * every attempt taking the next seed from `seed` on. onLine(number, tries) is told of each
     * attempt before it starts, onWritten(number, line, seed) of the one kept, and, where `prime`
     * is given, onPrimeCheck(number, message) of a line whose first attempt found the prime's text
     * and ink disagreeing (Python's prime_check "warn"). */
    *writePage(lines, {bias = 0, seed = 0, prime = null, retries = this.retries, maxPointsPerChar = this.maxPointsPerChar,
                       onPoint, onLine, onWritten, onPrimeCheck} = {}) {
      const written = [];
      let previous = null;
      for (const [number, text] of lines.entries()) {
        let attempt;
        for (let tries = 0; tries <= retries; tries++) {
          if (onLine) onLine(number, tries);
          attempt = yield* this.writeLine(text, {bias, prime: prime || previous, uniforms: new Uniforms(seed),
                                                  maxPointsPerChar, onPoint});
          seed += 1;
          const disagreement = prime && tries === 0 ? this.primeDisagrees(prime, attempt.primeWindow) : null;
          if (disagreement && onPrimeCheck) onPrimeCheck(number, disagreement);
          if (!attempt.capped) break;
        }
        if (onWritten) onWritten(number, attempt, seed - 1);
        written.push(attempt);
        if (!attempt.capped) previous = new Prime(this.alphabet.asWritten(text), attempt.offsets);
      }
      return written;
    }
  }

  const api = {Layer, Network, Uniforms, Alphabet, Writer, Prime, joinedText, wrapWords, windowAfterPrime, strokesToOffsets,
               offsetsToStrokes, withoutRepeatedPoints};
  if (typeof module !== 'undefined' && module.exports) module.exports = api;
  else root.Handwriting = api;
})(typeof globalThis !== 'undefined' ? globalThis : this);
