/* index.html's behaviour: choose a hand, write the text line by line as the network samples it,
 * download what it wrote. The network and the writing rules are engine.js's; the drawings and
 * files outputs.js's; the pad to write your own line on pad.js's. */
(() => {
  'use strict';
  const $ = id => document.getElementById(id);
  const {Writer, Prime, wrapWords} = Handwriting;
  const {layoutLines, bounds, svg, gcode, primeJSON} = HandwritingOutputs;
  const bundle = globalThis.HANDWRITING_MODEL, bundledHands = globalThis.HANDWRITING_HANDS || [];
  const status = text => { $('status').textContent = text; };

  if (!bundle) {
    status('The weights (web/model.js) are missing: run python checkpoint.py export-web save/synthesis.pt web/');
    $('write').disabled = true;
    return;
  }
  const writer = new Writer(bundle);
  const gap = bundle.line_gap;
  // pen units a character takes, from the bundled hands: the paper's scale before a line is written
  const unitsPerChar = bundledHands.length
    ? bundledHands.map(h => { const b = bounds(h.strokes.flat()); return (b.high[0] - b.low[0]) / Array.from(h.text).length; })
      .reduce((a, b) => a + b) / bundledHands.length
    : 150;

  // ------------------------------------------------------------------------- hands

  const hands = [{name: 'Its own', prime: null, note: 'each line in the hand of the line before'},
                 ...bundledHands.map(h => ({name: h.name, prime: Prime.fromJSON(h), strokes: h.strokes, note: h.text}))];
  const yours = {name: 'Yours', prime: null, strokes: null, note: 'write it below', yours: true};
  hands.push(yours);

  function preview(canvas, strokes, placeholder = '') {
    const ctx = canvas.getContext('2d'), dpr = window.devicePixelRatio || 1;
    canvas.width = 180 * dpr; canvas.height = 44 * dpr;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, 180, 44);
    if (!strokes || !strokes.length) {  // no ink (yet): a word of what the card stands for
      Object.assign(ctx, {fillStyle: '#8a94a6', font: 'italic 13px system-ui, sans-serif'});
      ctx.fillText(placeholder, 6, 28);
      return;
    }
    const {low, high} = bounds(strokes.flat());
    const scale = Math.min(172 / Math.max(high[0] - low[0], 1e-9), 36 / Math.max(high[1] - low[1], 1e-9));
    Object.assign(ctx, {strokeStyle: '#1d2433', lineWidth: 1.2, lineCap: 'round', lineJoin: 'round'});
    for (const s of strokes) {
      ctx.beginPath();
      s.forEach(([x, y], i) => ctx[i ? 'lineTo' : 'moveTo'](4 + (x - low[0]) * scale, 4 + (y - low[1]) * scale));
      if (s.length === 1) ctx.lineTo(4 + (s[0][0] - low[0]) * scale + 0.5, 4 + (s[0][1] - low[1]) * scale);
      ctx.stroke();
    }
  }

  hands.forEach((hand, i) => {
    const label = document.createElement('label');
    label.className = 'hand';
    label.innerHTML = `<input type="radio" name="hand" value="${i}"${i === 0 ? ' checked' : ''}><canvas></canvas><span></span>`;
    label.querySelector('span').textContent = `${hand.name}: ${hand.note}`;
    hand.input = label.querySelector('input');
    hand.canvas = label.querySelector('canvas');
    hand.label = label;
    if (hand.yours) hand.input.disabled = true;
    preview(hand.canvas, hand.strokes, hand.yours ? '(not written yet)' : '(no prime)');
    $('hands').append(label);
  });
  const chosenHand = () => hands.find(h => h.input.checked) || hands[0];

  // ------------------------------------------------------------------------- the paper

  const paper = $('paper'), paperContext = paper.getContext('2d');
  let shown = [];  // the lines on the paper: offsets in pen units

  function render() {
    const placed = layoutLines(shown, gap), points = placed.flat(2);
    const width = paper.clientWidth, margin = 16, dpr = window.devicePixelRatio || 1;
    const {low, high} = bounds(points);
    const chars = Math.max(1, Number($('width').value) || 40);
    const scale = (width - 2 * margin) / Math.max(chars * unitsPerChar, points.length ? high[0] - low[0] : 0);
    const height = Math.max(200, Math.ceil((points.length ? high[1] - low[1] : 0) * scale + 2 * margin));
    if (paper.height !== Math.round(height * dpr) || paper.width !== Math.round(width * dpr)) {
      paper.style.height = `${height}px`;
      paper.width = Math.round(width * dpr);
      paper.height = Math.round(height * dpr);
    }
    paperContext.setTransform(dpr, 0, 0, dpr, 0, 0);
    paperContext.clearRect(0, 0, width, height);
    drawStrokes(paperContext, placed.flat(), scale, margin - low[0] * scale, margin + high[1] * scale, 2);
  }

  /* strokes (y up) at `scale` pixels a pen unit, (x, y) -> (left + x scale, top - y scale) */
  function drawStrokes(ctx, strokes, scale, left, top, lineWidth) {
    Object.assign(ctx, {strokeStyle: '#111', lineWidth, lineCap: 'round', lineJoin: 'round'});
    for (const s of strokes) {
      ctx.beginPath();
      s.forEach(([x, y], i) => ctx[i ? 'lineTo' : 'moveTo'](left + x * scale, top - y * scale));
      if (s.length === 1) ctx.lineTo(left + s[0][0] * scale + 0.01, top - s[0][1] * scale);  // a dot
      ctx.stroke();
    }
  }

  // ------------------------------------------------------------------------- writing

  let job = null;     // the writing under way
  let result = null;  // the last page written to its end: {lines, texts}

  function startWriting() {
    const width = Math.floor(Number($('width').value));
    const seed = Math.floor(Number($('seed').value));
    if (!(width >= 1) || !(seed >= 0)) { status('Characters a line must be 1 or more, and the seed a whole number >= 0.'); return; }
    const lines = wrapWords($('text').value, width), longest = bundle.max_line_chars;
    if (!lines.length) { status('Type a text to write.'); return; }
    const tooLong = lines.find(line => Array.from(line).length > longest);
    if (tooLong) { status(`A line may have at most ${longest} characters: "${tooLong.slice(0, 30)}…" is longer.`); return; }
    const hand = chosenHand(), bias = Number($('bias').value);
    shown = [];
    result = null;
    setBusy(true);
    const stalled = [];
    let disagreement = '';
    const started = performance.now();
    job = {stopped: false};
    job.generator = writer.writePage(lines, {
      bias, seed, prime: hand.prime,
      onLine: (number, tries) => {
        shown[number] = [];
        status(tries ? `Line ${number + 1} stalled; writing it again with the next seed (${tries} of ${writer.retries}).`
                     : `Writing line ${number + 1} of ${lines.length}…`);
      },
      onPoint: line => { shown[shown.length - 1] = line; },
      onWritten: (number, line) => { if (line.capped) stalled.push(number + 1); },
      onPrimeCheck: (number, message) => { disagreement = ` ${message}`; },
    });
    job.finish = written => {
      const seconds = (performance.now() - started) / 1000;
      result = {lines: written.map(w => w.offsets), texts: written.map(w => w.text)};
      shown = result.lines;
      const points = result.lines.reduce((n, l) => n + l.length, 0);
      status(`Wrote ${lines.length} line${lines.length === 1 ? '' : 's'}, ${points} points in ${seconds.toFixed(1)} s.` +
             (stalled.length ? ` Line(s) ${stalled.join(', ')} stalled with every seed tried and may miss words: try another seed.` : '') +
             disagreement);
    };
    pump();
  }

  /* Runs the writing for about a frame's time, draws, and comes back: the page stays responsive
   * and the lines appear as they are sampled. */
  function pump() {
    if (!job || job.stopped) return;
    const until = performance.now() + 15;
    while (performance.now() < until) {
      let step;
      try {
        step = job.generator.next();
      } catch (error) {  // nothing the page lets through should get here; say so rather than hang
        job = null;
        setBusy(false);
        status(`Writing stopped: ${error.message}`);
        return;
      }
      const {done, value} = step;
      if (done) {
        job.finish(value);
        job = null;
        render();
        setBusy(false);
        return;
      }
    }
    render();
    setTimeout(pump, 0);
  }

  function setBusy(busy) {
    $('write').disabled = busy;
    $('stop').disabled = !busy;
    for (const id of ['download-svg', 'download-png', 'download-json', 'download-gcode']) $(id).disabled = busy || !result;
  }

  $('write').addEventListener('click', startWriting);
  $('stop').addEventListener('click', () => {
    if (job) job.stopped = true;
    job = null;
    setBusy(false);
    status('Stopped.');
  });
  $('bias').addEventListener('input', () => { $('bias-value').textContent = Number($('bias').value).toFixed(1); });
  new ResizeObserver(render).observe(paper);

  // ------------------------------------------------------------------------- downloads

  function download(name, type, content) {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(content instanceof Blob ? content : new Blob([content], {type}));
    a.download = name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);  // some browsers read the blob after click() returns
  }

  function png() {
    const placed = layoutLines(result.lines, gap).flat(), {low, high} = bounds(placed.flat());
    const margin = 20, scale = 1600 / Math.max(high[0] - low[0], 1e-9);
    const canvas = document.createElement('canvas');
    canvas.width = 1600 + 2 * margin;
    canvas.height = Math.ceil((high[1] - low[1]) * scale) + 2 * margin;
    const ctx = canvas.getContext('2d');
    ctx.fillStyle = '#fff';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    drawStrokes(ctx, placed, scale, margin - low[0] * scale, margin + high[1] * scale, 3);
    return new Promise(resolve => canvas.toBlob(resolve, 'image/png'));
  }

  function plotterSettings() {
    const settings = {};
    for (const [key, value] of Object.entries(bundle.plotter)) {
      const field = $(key);
      settings[key] = typeof value === 'number' ? Number(field.value) : field.value;
    }
    return settings;
  }
  for (const [key, value] of Object.entries(bundle.plotter)) $(key).value = value;

  $('download-svg').addEventListener('click', () => download('handwriting.svg', 'image/svg+xml', svg(result.lines, gap)));
  $('download-png').addEventListener('click', async () => download('handwriting.png', 'image/png', await png()));
  $('download-json').addEventListener('click', () => download('handwriting.json', 'application/json',
    JSON.stringify(primeJSON(result.lines, result.texts, gap, bundle.max_line_chars)) + '\n'));
  $('download-gcode').addEventListener('click', () => {
    const plotter = plotterSettings();
    if (!(plotter.margin >= 0 && Math.min(plotter.page_width, plotter.page_height) > 2 * plotter.margin
          && plotter.line_height > 0 && plotter.feed_rate > 0)) {
      status('Plotter settings: the page must be larger than twice the margin, the line height and feed rate positive.');
      return;
    }
    download('handwriting.gcode', 'text/plain', gcode(result.lines, gap, plotter));
  });

  // ------------------------------------------------------------------------- your hand

  const padText = $('pad-text');
  const pad = new Pad($('pad'), updatePad);
  window.handwritingJSON = () => ({text: padText.value.trim(), strokes: pad.json()});

  function updatePad() {
    const n = pad.strokes.length, t = padText.value.trim();
    $('undo').disabled = $('clear').disabled = n === 0;
    $('use-hand').disabled = $('download-line').disabled = !(n && t);
    $('pad-status').textContent = !n ? 'Nothing written yet.'
      : `${n} stroke${n === 1 ? '' : 's'}. ` + (t ? 'Ready.' : 'Type what you wrote to use or download it.');
  }

  function lineFileName() {
    const slug = padText.value.normalize('NFKD').replace(/[\u0300-\u036f]/g, '').toLowerCase()
      .replace(/[^a-z0-9]+/g, '-').slice(0, 60).replace(/^-+|-+$/g, '');
    return slug ? `handwriting-${slug}.json` : 'handwriting.json';
  }

  $('undo').addEventListener('click', () => pad.undo());
  $('clear').addEventListener('click', () => pad.clear());
  padText.addEventListener('input', updatePad);
  $('download-line').addEventListener('click', () =>
    download(lineFileName(), 'application/json', JSON.stringify(handwritingJSON()) + '\n'));
  $('use-hand').addEventListener('click', () => {
    const line = handwritingJSON();
    if (Array.from(line.text).length > bundle.max_line_chars) {
      $('pad-status').textContent = `A hand is one line of at most ${bundle.max_line_chars} characters.`;
      return;
    }
    if (!line.strokes.some(s => s.length > 1)) {
      $('pad-status').textContent = 'A hand needs at least one stroke that moves: write a word or two.';
      return;
    }
    Object.assign(yours, {prime: Prime.fromJSON(line), strokes: line.strokes, note: line.text});
    yours.label.querySelector('span').textContent = `Yours: ${line.text}`;
    yours.input.disabled = false;
    yours.input.checked = true;
    preview(yours.canvas, line.strokes);
    $('pad-status').textContent = 'Your line is the hand now: press Write.';
  });
  // Ctrl/Cmd+Z undoes a stroke, except in a text field, where it undoes typing.
  document.addEventListener('keydown', e => {
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === 'z' && !e.shiftKey
        && !['INPUT', 'TEXTAREA'].includes(e.target.tagName) && pad.strokes.length) {
      e.preventDefault();
      pad.undo();
    }
  });
  updatePad();
  setBusy(false);

  // for the tests and bench.py --browser: the page's own writer, and what it wrote last
  window.handwritingPage = {writer, bundle, result: () => result, busy: () => job !== null};
})();
