// clt-bench report: sortable/filterable tables, the feature detail pane and the attribution
// graph explorer. Written for this report, inlined into report.html; no library, no network.
(function () {
  'use strict';
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => [...(root || document).querySelectorAll(sel)];
  const esc = s => String(s).replace(/[&<>"']/g,
    c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
  const fmt = v => typeof v === 'number' ? (Number.isInteger(v) ? String(v)
    : Number(v.toPrecision(3)).toString()) : (v === null || v === undefined ? '' : String(v));
  const data = id => { const e = document.getElementById(id); return e ? JSON.parse(e.textContent) : null; };

  // ---- tables: click a header to sort, type to filter, toggle the hidden columns
  function sortTable(table, col) {
    const th = table.tHead.rows[0].cells[col];
    const dir = th.getAttribute('aria-sort') === 'descending' ? 1 : -1;
    $$('th', table.tHead).forEach(h => h.removeAttribute('aria-sort'));
    th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
    const key = tr => {
      const c = tr.cells[col];
      return c.dataset.v !== undefined ? parseFloat(c.dataset.v) : (c.title || c.textContent);
    };
    const rows = [...table.tBodies[0].rows];
    rows.sort((a, b) => {
      const x = key(a), y = key(b);
      if (typeof x === 'number' && typeof y === 'number') return dir * (x - y);
      if (typeof x === 'number') return -1;
      if (typeof y === 'number') return 1;
      return dir * String(x).localeCompare(String(y));
    });
    rows.forEach(r => table.tBodies[0].appendChild(r));
  }
  $$('table.data').forEach(table => {
    $$('th', table.tHead).forEach((th, i) => {
      th.title = 'click to sort';
      th.addEventListener('click', () => sortTable(table, i));
    });
  });
  $$('input.filter').forEach(inp => inp.addEventListener('input', () => {
    const q = inp.value.trim().toLowerCase();
    const table = document.getElementById(inp.dataset.for);
    [...table.tBodies[0].rows].forEach(tr => {
      const text = [...tr.cells].map(c => c.title || c.textContent).join(' ').toLowerCase();
      tr.hidden = q !== '' && !text.includes(q);
    });
  }));
  $$('button.cols').forEach(b => b.addEventListener('click', () => {
    const table = document.getElementById(b.dataset.for);
    table.classList.toggle('all');
    b.textContent = table.classList.contains('all') ? 'show the main columns'
      : b.dataset.label || b.textContent;
  }));
  $$('button.cols').forEach(b => { b.dataset.label = b.textContent; });

  // ---- the feature detail pane
  const feats = data('features-data');
  const pane = $('#detail');
  let selectFeature = () => false;
  if (feats && pane) {
    selectFeature = fid => {
      const f = feats.features[fid];
      if (!f) return false;
      pane.dataset.feature = fid;
      const kv = feats.fields.filter(k => f[k] !== undefined && f[k] !== '' && f[k] !== null)
        .map(k => {
          const v = fmt(f[k]), cut = v.length > 150 ? v.slice(0, 149) + '…' : v;
          const title = cut === v ? '' : ` title="${esc(v)}"`;
          return `<tr><th>${esc(k)}</th><td${title}>${esc(cut)}</td></tr>`;
        }).join('');
      const pairs = (feats.pairs[fid] || []).map(p =>
        `<tr data-id="${esc(p.other)}"><td>${esc(p.other)}</td>` +
        feats.pair_fields.map(k => `<td>${esc(fmt(p[k]))}</td>`).join('') + '</tr>').join('');
      const heat = f.heatmap
        ? `<div class="scroll"><img src="${f.heatmap.src}" alt="heatmap of ${esc(fid)}" ` +
          `style="width:${f.heatmap.width}px"></div>`
        : `<p class="why">${esc(feats.no_heatmap)}</p>`;
      pane.innerHTML =
        `<h3>${esc(fid)}: ${esc(f.label || '')}</h3>` +
        `<div class="panes"><div>${heat}</div><div><table class="kv">${kv}</table></div></div>` +
        `<h4>Pair interactions</h4>` + (pairs
          ? `<div class="scroll"><table class="pairs"><thead><tr><th>with</th>` +
            feats.pair_fields.map(k => `<th>${esc(k)}</th>`).join('') +
            `</tr></thead><tbody>${pairs}</tbody></table></div>`
          : `<p class="why">${esc(feats.no_pairs)}</p>`);
      $$('tr[data-id]', pane).forEach(tr => tr.addEventListener('click', () =>
        selectFeature(tr.dataset.id)));
      $$('#tbl-features tbody tr').forEach(tr =>
        tr.classList.toggle('sel', tr.dataset.id === fid));
      return true;
    };
    $$('#tbl-features tbody tr').forEach(tr => tr.addEventListener('click', () =>
      selectFeature(tr.dataset.id)));
    const first = $('#tbl-features tbody tr');
    if (first) selectFeature(first.dataset.id);
  }

  // ---- the attribution graph: layer x position grid, size = influence, colour = label
  const g = data('graph-data');
  const box = $('#graph');
  if (g && box) {
    const NS = 'http://www.w3.org/2000/svg';
    const el = (tag, attrs, parent) => {
      const e = document.createElementNS(NS, tag);
      for (const k in attrs) e.setAttribute(k, attrs[k]);
      if (parent) parent.appendChild(e);
      return e;
    };
    const nodeT = $('#node-threshold'), edgeT = $('#edge-threshold'), info = $('#graph-info');
    const rows = g.n_layers + 2;  // embeddings, layers, logits
    const rowOf = n => n.kind === 'token' ? 0 : n.kind === 'logit' ? rows - 1 : n.layer + 1;
    // nodes of one (layer, position) cell side by side, most influential in the middle; a
    // position's column is as wide as its fullest cell needs
    const cells = {}, need = g.tokens.map(() => 1);
    g.nodes.forEach((n, i) => { (cells[rowOf(n) + ',' + n.pos] ||= []).push(i); });
    const PER_LINE = 14;  // a fuller cell wraps onto more lines within its row
    const lines = n => Math.ceil(n / PER_LINE), perLine = n => Math.ceil(n / lines(n));
    Object.entries(cells).forEach(([k, ids]) => {
      const pos = +k.split(',')[1];
      need[pos] = Math.max(need[pos], perLine(ids.length));
    });
    const STEP = 22, left = 60;
    const base = need.map(c => Math.max(56, c * STEP + 16));
    const avail = Math.max(box.clientWidth, 600) - left - 10;
    const sum = base.reduce((a, b) => a + b, 0);
    const colW = base.map(w => sum < avail ? w * avail / sum : w);
    const x0 = colW.map((w, i) => left + colW.slice(0, i).reduce((a, b) => a + b, 0));
    const W = left + 10 + colW.reduce((a, b) => a + b, 0), rowH = 70, H = rows * rowH + 90;
    const maxRaw = Math.max(1e-12, ...g.nodes.map(n => n.raw));
    const maxW = Math.max(1e-12, ...g.links.map(l => Math.abs(l[2])));
    const labels = [...new Set(g.nodes.filter(n => n.kind === 'feature').map(n => n.label))].sort();
    const palette = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2',
      '#bcbd22', '#17becf', '#393b79', '#637939', '#8c6d31'];
    const colour = n => n.kind === 'feature'
      ? palette[labels.indexOf(n.label) % palette.length]
      : ({error: '#bbbbbb', token: '#555555', logit: '#000000'}[n.kind] || '#999999');
    const svg = el('svg', {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img'}, box);
    const y = r => H - 70 - r * rowH;
    for (let r = 0; r < rows; r++) {
      el('line', {x1: left, x2: W - 5, y1: y(r), y2: y(r), class: 'grid'}, svg);
      const t = el('text', {x: 6, y: y(r) + 5, class: 'axis'}, svg);
      t.textContent = r === 0 ? 'emb' : r === rows - 1 ? 'out' : 'L' + (r - 1);
    }
    g.tokens.forEach((tok, i) => {
      const cx = x0[i] + colW[i] / 2, chars = Math.max(3, Math.floor(colW[i] / 9));
      const t = el('text', {x: cx, y: H - 36, class: 'axis tok', 'text-anchor': 'middle'}, svg);
      t.textContent = tok.length > chars ? tok.slice(0, chars - 1) + '…' : tok;
      el('title', {}, t).textContent = JSON.stringify(tok);
      const p = el('text', {x: cx, y: H - 14, class: 'axis', 'text-anchor': 'middle'}, svg);
      p.textContent = i;
    });
    const xy = [];
    Object.values(cells).forEach(ids => {
      ids.sort((a, b) => g.nodes[b].raw - g.nodes[a].raw);
      const nl = lines(ids.length);
      ids.forEach((i, k) => {
        const n = g.nodes[i], line = k % nl, j = Math.floor(k / nl);
        const off = (j % 2 ? 1 : -1) * Math.ceil(j / 2) * STEP;
        xy[i] = [x0[n.pos] + colW[n.pos] / 2 + off, y(rowOf(n)) + (line - (nl - 1) / 2) * 20];
      });
    });
    const edgeLayer = el('g', {}, svg), nodeLayer = el('g', {}, svg);
    const edges = g.links.map(([s, t, w]) => el('line', {x1: xy[s][0], y1: xy[s][1], x2: xy[t][0],
      y2: xy[t][1], stroke: w > 0 ? '#2166ac' : '#b2182b',
      'stroke-width': 0.6 + 4 * Math.abs(w) / maxW, class: 'edge'}, edgeLayer));
    let selected = -1;
    const circles = g.nodes.map((n, i) => {
      const c = el('circle', {cx: xy[i][0], cy: xy[i][1], r: 4 + 8 * Math.sqrt(n.raw / maxRaw),
        fill: colour(n), class: 'node', 'data-node': n.id, 'data-feature': n.feature || ''},
        nodeLayer);
      el('title', {}, c).textContent = describe(n);
      c.addEventListener('mouseenter', () => { info.textContent = describe(n); });
      c.addEventListener('click', () => select(i));
      return c;
    });
    function describe(n) {
      const parts = [n.name, n.label ? 'label: ' + n.label : ''];
      if (n.scores) parts.push(n.scores);
      parts.push('influence ' + fmt(n.raw) + ' (cumulative ' + fmt(n.cum) + ')');
      if (n.act !== null && n.act !== undefined) parts.push('activation ' + fmt(n.act));
      return parts.filter(Boolean).join(' · ');
    }
    function visible(i) {
      const n = g.nodes[i];
      return n.kind === 'token' || n.kind === 'logit' || n.cum <= parseFloat(nodeT.value);
    }
    function draw() {
      const nt = parseFloat(nodeT.value), et = parseFloat(edgeT.value);
      $('#node-threshold-value').textContent = fmt(nt);
      $('#edge-threshold-value').textContent = fmt(et);
      circles.forEach((c, i) => c.classList.toggle('off', !visible(i)));
      let shown = 0;
      g.links.forEach(([s, t, w], k) => {
        const on = visible(s) && visible(t) && Math.abs(w) >= et * maxW;
        const touch = selected < 0 || s === selected || t === selected;
        edges[k].classList.toggle('off', !on);
        edges[k].classList.toggle('dim', on && !touch);
        edges[k].classList.toggle('hi', on && selected >= 0 && touch);
        if (on && selected >= 0 && touch) shown++;
      });
      circles.forEach((c, i) => c.classList.toggle('sel', i === selected));
      box.dataset.selectedEdges = selected < 0 ? '' : String(shown);
      return shown;
    }
    function select(i) {
      selected = selected === i ? -1 : i;
      const n = g.nodes[i];
      box.dataset.selected = selected < 0 ? '' : n.id;
      const k = draw();
      info.textContent = selected < 0 ? 'click a node' : describe(n) + ` · ${k} edges above ` +
        'the threshold in or out';
      if (selected >= 0 && n.feature) selectFeature(n.feature);
    }
    nodeT.addEventListener('input', draw);
    edgeT.addEventListener('input', draw);
    draw();
    const legend = $('#graph-legend');
    if (legend) {
      legend.innerHTML = labels.map(l => `<span><i style="background:${colour({kind: 'feature',
        label: l})}"></i>${esc(l)}</span>`).join('') +
        ['error', 'token', 'logit'].map(k => `<span><i style="background:${colour({kind: k})}">` +
        `</i>${k === 'error' ? 'reconstruction error' : k === 'token' ? 'embedding' : 'output'}` +
        '</span>').join('');
    }
  }
})();
