/* A pad to write one line of handwriting on with a mouse, pen or finger: the strokes as lists of
 * [x, y] points in CSS pixels of the pad, y down, as the JSON primes of generate.py --prime hold
 * them. Points are rounded to 0.1 px, and a point equal to the one before it is dropped (a resting
 * pen says nothing). Used by index.html; the page's tests drive it with real pointer input. */
(function (root) {
  'use strict';

  const BASELINE = 0.68;  // fraction of the height: leaves room below the line for descenders
  const round = v => Math.round(v * 10) / 10;

  /* Pad(canvas, onChange): onChange() after every stroke begun or ended, undone or cleared. */
  class Pad {
    constructor(canvas, onChange = () => {}) {
      this.canvas = canvas;
      this.context = canvas.getContext('2d');
      this.onChange = onChange;
      this.strokes = [];    // one array of [x, y] per stroke
      this.current = null;  // the stroke being written
      this.pointerId = null;
      canvas.addEventListener('pointerdown', e => this.down(e));
      canvas.addEventListener('pointermove', e => this.move(e));
      canvas.addEventListener('pointerup', e => this.end(e));
      canvas.addEventListener('pointercancel', e => this.end(e));
      new ResizeObserver(() => this.resize()).observe(canvas);
    }

    /* The backing store follows the CSS size times the pixel ratio, so ink stays sharp on any screen. */
    resize() {
      const dpr = window.devicePixelRatio || 1, canvas = this.canvas;
      canvas.width = Math.round(canvas.clientWidth * dpr);
      canvas.height = Math.round(canvas.clientHeight * dpr);
      this.context.setTransform(dpr, 0, 0, dpr, 0, 0);
      this.redraw();
    }

    redraw() {
      const ctx = this.context, w = this.canvas.clientWidth, y = Math.round(this.canvas.clientHeight * BASELINE) + 0.5;
      ctx.clearRect(0, 0, w, this.canvas.clientHeight);
      Object.assign(ctx, {strokeStyle: '#c3cedc', lineWidth: 1});
      ctx.setLineDash([6, 6]);
      ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(w, y); ctx.stroke();
      ctx.setLineDash([]);
      Object.assign(ctx, {strokeStyle: '#1d2433', fillStyle: '#1d2433', lineWidth: 2.5, lineCap: 'round', lineJoin: 'round'});
      this.strokes.forEach(s => s.forEach((p, i) => this.ink(s[i - 1] || p, p)));
    }

    /* Ink from a to b; a stroke's first point is a dot, so a single tap (the dot on an i) shows. */
    ink(a, b) {
      const ctx = this.context;
      ctx.beginPath();
      if (a === b) { ctx.arc(a[0], a[1], 1.25, 0, 2 * Math.PI); ctx.fill(); }
      else { ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]); ctx.stroke(); }
    }

    add(e) {
      const r = this.canvas.getBoundingClientRect();  // read each time: the page may have scrolled
      const p = [round(e.clientX - r.left), round(e.clientY - r.top)];
      const last = this.current[this.current.length - 1];
      if (last && last[0] === p[0] && last[1] === p[1]) return;
      this.current.push(p);
      this.ink(last || p, p);
    }

    down(e) {
      if (this.current || !e.isPrimary || e.button !== 0) return;  // one pen at a time; a second finger or right click is not ink
      e.preventDefault();
      if (e.pointerType === 'touch') document.activeElement?.blur();  // put the phone keyboard away while writing
      this.canvas.setPointerCapture(e.pointerId);  // keep the stroke when the pen strays outside the pad
      this.pointerId = e.pointerId;
      this.strokes.push(this.current = []);
      this.add(e);
      this.onChange();
    }

    move(e) {
      if (e.pointerId !== this.pointerId) return;
      // Browsers deliver one move per frame; the coalesced events hold every sample the pen gave.
      const all = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
      (all.length ? all : [e]).forEach(event => this.add(event));
    }

    end(e) {
      if (e.pointerId !== this.pointerId) return;
      if (e.type === 'pointerup') this.add(e);  // a cancelled pointer's position is not to be trusted
      this.current = this.pointerId = null;
      this.onChange();
    }

    undo() { this.strokes.pop(); this.current = this.pointerId = null; this.redraw(); this.onChange(); }
    clear() { this.strokes.length = 0; this.undo(); }

    /* The strokes, copied: [[[x, y], ...], ...] */
    json() { return this.strokes.map(s => s.map(p => p.slice())); }
  }

  root.Pad = Pad;
})(globalThis);
