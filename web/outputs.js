/* What the page makes of written lines (offsets [end_of_stroke, dx, dy] in pen units, y up):
 * the layout, the SVG and the G-code that utils.py writes in Python (layout_lines, write_svg,
 * gcode; tests/test_web.py holds them to it), and the JSON that generate.py --prime reads.
 * The constants (the gap between lines, the plotter's defaults) come from the exported bundle. */
(function (root) {
  'use strict';

  const {offsetsToStrokes} = root.Handwriting;
  // loops, not Math.min of spread values: a long page holds more points than a call takes arguments
  const minOf = values => values.reduce((a, b) => Math.min(a, b), Infinity);
  const maxOf = values => values.reduce((a, b) => Math.max(a, b), -Infinity);

  /* utils.layout_lines: each line's left edge at x = 0, stacked top to bottom `gap` heights (of
   * the tallest line) apart, y up. Returns a list (per line) of strokes of [x, y] points. */
  function layoutLines(lines, gap) {
    const perLine = lines.map(offsetsToStrokes);
    const heights = perLine.map(strokes => {
      const ys = strokes.flat().map(p => p[1]);
      return ys.length ? maxOf(ys) - minOf(ys) : 0;
    });
    const spacing = gap * maxOf([...heights, 1]);
    const placed = [];
    let top = 0;
    for (const strokes of perLine) {
      const points = strokes.flat();
      if (!points.length) { placed.push([]); continue; }
      const left = minOf(points.map(p => p[0]));
      const ys = points.map(p => p[1]), shift = top - maxOf(ys);
      placed.push(strokes.map(s => s.map(([x, y]) => [x - left, y + shift])));
      top = minOf(ys) + shift - spacing;
    }
    return placed;
  }

  function bounds(points) {
    const xs = points.map(p => p[0]), ys = points.map(p => p[1]);
    return points.length ? {low: [minOf(xs), minOf(ys)], high: [maxOf(xs), maxOf(ys)]}
      : {low: [0, 0], high: [1, 1]};
  }

  const escapeXML = text => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

  /* utils.write_svg: one centre-line <path> per stroke, no fill, coordinates in pen units, y down */
  function svg(lines, gap, displayWidth = 1000) {
    const strokes = layoutLines(lines, gap).flat().map(s => s.map(([x, y]) => [x, -y]));
    let {low, high} = bounds(strokes.flat());
    const strokeWidth = Math.max(high[0] - low[0], high[1] - low[1], 1e-3) / 500;
    low = low.map(v => v - 5 * strokeWidth);  // room for the round pen tip
    high = high.map(v => v + 5 * strokeWidth);
    const [width, height] = [high[0] - low[0], high[1] - low[1]];
    const fmt = v => v.toFixed(2);
    const paths = strokes.map(s => {
      const points = s.length > 1 ? s : [s[0], s[0]];  // a dot: the round cap draws it
      return `  <path d="${escapeXML('M ' + points.map(([x, y]) => `${fmt(x)} ${fmt(y)}`).join(' L '))}"/>`;
    });
    return ['<?xml version="1.0" encoding="UTF-8"?>',
      `<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="${displayWidth}" ` +
      `height="${fmt(displayWidth * height / width)}" viewBox="${fmt(low[0])} ${fmt(low[1])} ${fmt(width)} ${fmt(height)}">`,
      `<g fill="none" stroke="black" stroke-width="${fmt(strokeWidth)}" stroke-linecap="round" stroke-linejoin="round">`,
      ...paths, '</g>', '</svg>', ''].join('\n');
  }

  /* utils.plotter_strokes: the layout in millimetres on the plotter's page, y up from its bottom edge */
  function plotterStrokes(lines, gap, plotter) {
    const strokes = layoutLines(lines, gap).flat();
    if (!strokes.length) return {strokes, scale: 1};
    const {low, high} = bounds(strokes.flat());
    const width = Math.max(high[0] - low[0], 1e-9), height = Math.max(high[1] - low[1], 1e-9);
    const scale = Math.min(plotter.line_height * lines.length / height, (plotter.page_width - 2 * plotter.margin) / width,
                           (plotter.page_height - 2 * plotter.margin) / height);
    const corner = [plotter.margin, plotter.page_height - plotter.margin];
    return {strokes: strokes.map(s => s.map(([x, y]) => [corner[0] + (x - low[0]) * scale, corner[1] + (y - high[1]) * scale])),
            scale};
  }

  /* utils.gcode: per stroke a pen-up move to its start, pen down, G1 to each further point, pen up */
  function gcode(lines, gap, plotter) {
    const {strokes, scale} = plotterStrokes(lines, gap, plotter);
    const at = ([x, y]) => `X${x.toFixed(3)} Y${y.toFixed(3)}`;
    const out = [`; ${lines.length} line(s) of handwriting, ${strokes.length} strokes, ${scale.toFixed(6)} mm per pen unit, ` +
                 `on a ${plotter.page_width} x ${plotter.page_height} mm page`,
                 'G21 ; millimetres', 'G90 ; absolute coordinates', plotter.pen_up];
    for (const stroke of strokes) {
      out.push(`G0 ${at(stroke[0])}`, plotter.pen_down);
      stroke.slice(1).forEach((point, i) => out.push(`G1 ${at(point)}` + (i === 0 ? ` F${plotter.feed_rate}` : '')));
      out.push(plotter.pen_up);
    }
    out.push('G0 X0 Y0');
    return out.join('\n') + '\n';
  }

  /* The lines as a prime for generate.py --prime: {"text", "strokes"} (y down, pen units), the
   * first lines one after another on one baseline, each a gap right of the last, as one long line
   * (a prime is read as one line), as many as fit in `longest` characters (at least the first);
   * and "lines", every line's own {"text", "strokes"}. */
  function primeJSON(lines, texts, gap, longest) {
    const own = lines.map(offsetsToStrokes);
    const heights = own.map(s => { const b = bounds(s.flat()); return b.high[1] - b.low[1]; });
    const space = gap * maxOf([...heights, 1]);
    let count = 1;
    while (count < lines.length && Array.from(texts.slice(0, count + 1).join(' ')).length <= longest) count += 1;
    const strokes = [];
    let right = 0;
    own.slice(0, count).forEach((line, i) => {
      const b = bounds(line.flat()), shift = i === 0 ? 0 : right + space - b.low[0];
      line.forEach(s => strokes.push(s.map(([x, y]) => [x + shift, y])));
      right = b.high[0] + shift;
    });
    const yDown = s => s.map(([x, y]) => [+x.toFixed(2), +(-y).toFixed(2) + 0]);
    return {text: texts.slice(0, count).join(' '), strokes: strokes.map(yDown),
            lines: own.map((line, i) => ({text: texts[i], strokes: line.map(yDown)}))};
  }

  root.HandwritingOutputs = {layoutLines, bounds, svg, plotterStrokes, gcode, primeJSON};
})(globalThis);
