// gatelens unit explorer: one script, no library. Every view is drawn on <canvas> from the JSON
// and binary answers of /api (service/explorer/app.py). Why no plotting library: each figure
// here is one ImageData write (spectrogram, heatmap) or a few dozen rectangles (histograms,
// bars, the phone tier), and the page must work offline with nothing fetched or built.
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
const main = $("#main");
const params = new URLSearchParams(location.search);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const fmt = (v, d = 3) => (v === null || v === undefined || Number.isNaN(v)) ? "–" : (Math.abs(v) >= 1000 ? v.toFixed(0) : Number(v).toPrecision(d));
const q = (o) => new URLSearchParams(Object.entries(o).filter(([, v]) => v !== undefined && v !== null && v !== "")).toString();
const FRAME_S = 0.01;

function status(text, cls = "") { const s = $("#status"); s.textContent = text; s.className = cls; }

// fetch with the store-busy protocol: a 503 shows "store busy, retrying" and tries again
async function api(path, binary = false, tries = 30) {
  for (let k = 0; ; k++) {
    const r = await fetch(path);
    if (r.status === 503 && k < tries) {
      status("store busy, retrying…", "busy");
      await new Promise((res) => setTimeout(res, 1000));
      continue;
    }
    if (!r.ok) {
      let msg = r.statusText;
      try { msg = (await r.json()).error; } catch (e) { /* not JSON */ }
      status(msg, "error");
      throw new Error(msg);
    }
    if ($("#status").className === "busy") status("");
    return binary ? r.arrayBuffer() : r.json();
  }
}

// /api/values: uint32 n, n bytes of JSON, then float32 [H, T]
function unpack(buf) {
  const n = new DataView(buf).getUint32(0, true);
  const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  meta.data = new Float32Array(buf, 4 + n);
  return meta;
}

// ---- colours -----------------------------------------------------------------------------------
// gates (i, f, o) in [0, 1]: viridis (its five anchor colours, interpolated); c, m, g: blue-white-red,
// symmetric around 0, so a unit's sign reads at a glance
const GATES = new Set(["i", "f", "o"]);
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function ramp(stops, t) {
  const x = Math.min(1, Math.max(0, t)) * (stops.length - 1), k = Math.min(stops.length - 2, Math.floor(x)), f = x - k;
  return [0, 1, 2].map((j) => stops[k][j] + f * (stops[k + 1][j] - stops[k][j]));
}
function colour(q, lo, hi) {
  if (GATES.has(q)) return (v) => ramp(VIRIDIS, v);
  const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
  return (v) => ramp([[33, 102, 172], [247, 247, 247], [178, 24, 43]], 0.5 + 0.5 * v / m);
}

function canvas(w, h, cls = "") {
  const c = document.createElement("canvas");
  c.width = w; c.height = h; if (cls) c.className = cls;
  return c;
}

// an [rows, cols] array drawn at one pixel per cell, then scaled (no smoothing)
function drawMatrix(c, data, rows, cols, col) {
  const off = canvas(cols, rows), ctx = off.getContext("2d");
  const img = ctx.createImageData(cols, rows), px = img.data;
  for (let r = 0; r < rows; r++) {
    for (let t = 0; t < cols; t++) {
      const [R, G, B] = col(data[r * cols + t]), k = 4 * (r * cols + t);
      px[k] = R; px[k + 1] = G; px[k + 2] = B; px[k + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
  const g = c.getContext("2d");
  g.imageSmoothingEnabled = false;
  g.drawImage(off, 0, 0, c.width, c.height);
}

function bars(c, values, labels, colourOf = () => "#468") {
  const g = c.getContext("2d"), n = values.length, max = Math.max(1e-12, ...values);
  g.clearRect(0, 0, c.width, c.height);
  const w = c.width / Math.max(1, n), base = c.height - (labels ? 14 : 2);
  values.forEach((v, k) => {
    const h = (base - 2) * v / max;
    g.fillStyle = colourOf(k); g.fillRect(k * w, base - h, Math.max(1, w - 1), h);
  });
  if (labels) {
    // each label centred under its bar, skipped where it would touch the last one drawn (the
    // bar's tooltip still names it); the boxes drawn are kept for the browser test
    g.fillStyle = "#333"; g.font = "10px sans-serif"; g.textAlign = "center";
    let end = -Infinity;
    const boxes = [];
    labels.forEach((l, k) => {
      const tw = g.measureText(l).width, x = (k + 0.5) * w;
      if (x - tw / 2 < end + 3 || x + tw / 2 > c.width) return;
      g.fillText(l, x, c.height - 2);
      boxes.push([x - tw / 2, x + tw / 2]);
      end = x + tw / 2;
    });
    g.textAlign = "start";
    c.dataset.labels = JSON.stringify(boxes);
  }
  c.dataset.drawn = "1";
}

function tip(ev, text) {
  const t = $("#tip");
  if (!text) { t.hidden = true; return; }
  t.textContent = text; t.hidden = false;
  t.style.left = (ev.clientX + 12) + "px"; t.style.top = (ev.clientY + 12) + "px";
}

function crumbs(html) { $("#crumbs").innerHTML = html; }
const unitHref = (ck, layer, unit) => `/unit?${q({checkpoint: ck, layer, unit})}`;
const uttHref = (o) => `/utterance?${q(o)}`;

// ---- overview ----------------------------------------------------------------------------------
async function overview() {
  document.body.dataset.view = "overview";
  const o = await api("/api/overview");
  let h = `<h2>Checkpoints</h2><p class="small">store ${esc(o.store)}; studies: ${esc(o.studies.join(", ") || "none")}</p>`;
  h += `<table id="checkpoints"><tr><th class="l">checkpoint</th><th class="l">run</th><th>cell</th><th>depth</th><th>H</th>` +
       `<th>seed</th><th>epoch</th><th>test PER</th><th>frame acc</th><th>analyses</th><th class="l">open</th></tr>`;
  for (const c of o.checkpoints) {
    h += `<tr data-checkpoint="${esc(c.checkpoint_id)}"><td class="l">${esc(c.checkpoint_id)}</td><td class="l">${esc(c.run_id)}</td>` +
         `<td>${esc(c.arch)}${c.residual ? "+res" : ""}</td><td>${c.layers}</td><td>${c.hidden}</td><td>${c.seed ?? "–"}</td>` +
         `<td>${c.epoch ?? "–"}</td><td>${c.per === null ? "–" : (100 * c.per).toFixed(2) + " %"}</td>` +
         `<td>${c.frame_acc === null ? "–" : (100 * c.frame_acc).toFixed(1) + " %"}</td><td>${c.analyses}</td>` +
         `<td class="l"><a href="${unitHref(c.checkpoint_id, 1, 0)}">unit L1 #0</a> · ` +
         `<a class="utts" href="${uttHref({checkpoint: c.checkpoint_id})}">utterances</a></td></tr>`;
  }
  h += `</table><h2>Claims</h2>` + (o.stale ? `<p class="small">the store changed since this overview was computed; ` +
       `reload for the new one</p>` : "");
  if (!o.claims.length) h += `<p class="small">No study in the training storage (--storage): no claims.</p>`;
  for (const c of o.claims) {
    const v = c.verdict.replace(" ", "-");
    const ci = (c.ci_low === null ? "no interval" : `95 % CI [${fmt(c.ci_low)}, ${fmt(c.ci_high)}]`) +
               (c.p_holm === null || c.p_holm === undefined ? "" : `, p = ${fmt(c.p_value, 2)} (Holm ${fmt(c.p_holm, 2)})`) +
               (c.kind === "sanity check" ? " — a sanity check, not a finding" : "");
    h += `<div class="claim" data-claim="${esc(c.key)}" data-verdict="${esc(c.verdict)}"><span class="verdict ${v}">${esc(c.verdict)}</span> ` +
         `<b>${esc(c.statement)}</b><br><span class="small">${esc(c.effect_name)}: ${fmt(c.effect)} ${esc(c.unit)}, ${ci}; ` +
         `${c.n_seeds} seed(s), ${c.n_utterances} utterances; ${esc(c.test)} ${esc(c.note)}</span>`;
    const n = c.links.units.length + c.links.figures.length;
    h += n ? `<details class="links"><summary>units and figures (${c.links.units.length} units, ` +
             `${c.links.figures.length} figures)</summary>` : `<div class="links small">no units or figures behind it yet`;
    for (const u of c.links.units) {
      h += `<a class="unit-link" href="${unitHref(u.checkpoint_id, u.layer, u.unit)}" title="${esc(u.why)}">` +
           `${esc(u.checkpoint_id)} L${u.layer} #${u.unit}</a>`;
    }
    for (const f of c.links.figures) {
      h += `<a class="figure-link" href="/api/figure/${encodeURIComponent(f.checkpoint_id)}/${encodeURIComponent(f.analysis)}/${f.index}">` +
           `${esc(f.analysis)} fig ${f.index + 1} (${esc(f.checkpoint_id)})</a>`;
    }
    h += n ? `</details></div>` : `</div></div>`;
  }
  main.innerHTML = h;
  document.body.dataset.ready = "1";
}

// ---- unit --------------------------------------------------------------------------------------
async function unitView() {
  document.body.dataset.view = "unit";
  const ck = params.get("checkpoint"), layer = +params.get("layer"), unit = +params.get("unit");
  const quantity = params.get("quantity") || "c";
  crumbs(`${esc(ck)} · layer ${layer} · unit ${unit}`);
  const u = await api(`/api/unit/${encodeURIComponent(ck)}/${layer}/${unit}`);
  const c = u.checkpoint;
  let h = `<h2>Unit ${unit} of layer ${layer}: ${esc(c.arch)} ${c.layers}x${c.hidden}${c.residual ? " residual" : ""}, seed ${c.seed ?? "–"}</h2>`;
  h += `<div class="controls">` + (unit > 0 ? `<a href="${unitHref(ck, layer, unit - 1)}">◀ unit ${unit - 1}</a>` : "") +
       (unit + 1 < c.hidden ? `<a href="${unitHref(ck, layer, unit + 1)}">unit ${unit + 1} ▶</a>` : "") +
       `<a href="${uttHref({checkpoint: ck, layer})}">utterances of this checkpoint</a></div>`;
  h += `<h3>Distributions (capture of the store)</h3><div class="grid" id="hists"></div>`;
  h += `<h3>Per-phone responsibility (Sec. 4.2)</h3><div id="resp"></div>`;
  if (u.memory) h += `<p>Memory: mean f ${fmt(u.memory.mean_f)}, implied τ ${fmt(u.memory.implied_tau)} frames, ` +
                     `measured ${fmt(u.memory.measured_frames)} frames${u.memory.censored ? " (censored)" : ""}.</p>`;
  h += `<h3>Top frames of ${esc(quantity)} over the probe utterances</h3><div id="top"><p class="small">capturing…</p></div>`;
  main.innerHTML = h;
  const stats = Object.fromEntries(u.stats.map((s) => [s.quantity, s]));
  for (const hist of u.histograms) {
    const s = stats[hist.quantity] || {};
    const div = document.createElement("div"); div.className = "panel";
    div.innerHTML = `<b>${esc(hist.quantity)}</b> <span class="small">mean ${fmt(s.mean)}, sd ${fmt(Math.sqrt(s.variance))}, ` +
                    `[${fmt(s.min)}, ${fmt(s.max)}]</span>`;
    const cv = canvas(220, 90, "hist"); cv.dataset.quantity = hist.quantity;
    div.appendChild(cv);
    const lab = document.createElement("div"); lab.className = "small";
    lab.textContent = `${fmt(hist.lo)} … ${fmt(hist.hi)}; under ${hist.underflow}, over ${hist.overflow}`;
    div.appendChild(lab);
    $("#hists").appendChild(div);
    bars(cv, hist.counts, null, () => "#357");
    cv.addEventListener("mousemove", (ev) => {
      const k = Math.floor(ev.offsetX / cv.width * hist.bins), w = (hist.hi - hist.lo) / hist.bins;
      tip(ev, `${hist.quantity} in [${fmt(hist.lo + k * w)}, ${fmt(hist.lo + (k + 1) * w)}): ${hist.counts[k]}`);
    });
    cv.addEventListener("mouseleave", (ev) => tip(ev, null));
  }
  const rules = [...new Set(u.responsibility.map((r) => r.rule))];
  for (const rule of rules) {
    const rows = u.responsibility.filter((r) => r.rule === rule && r.frames > 0).sort((a, b) => b.responsibility - a.responsibility);
    const div = document.createElement("div");
    div.innerHTML = `<span class="small">rule ${esc(rule)}: irregular frames / frames of each phone, highest first</span>`;
    const cv = canvas(Math.max(300, rows.length * 22), 110, "resp"); cv.dataset.rule = rule;
    div.appendChild(cv); $("#resp").appendChild(div);
    bars(cv, rows.map((r) => r.responsibility), rows.map((r) => r.phone));
    cv.addEventListener("mousemove", (ev) => {
      const r = rows[Math.floor(ev.offsetX / cv.width * rows.length)];
      if (r) tip(ev, `${r.phone}: ${r.irregular} / ${r.frames} = ${fmt(r.responsibility)}`);
    });
    cv.addEventListener("mouseleave", (ev) => tip(ev, null));
  }
  if (!rules.length) $("#resp").innerHTML = `<p class="small">no responsibility rows for this unit</p>`;
  const top = await api(`/api/top/${encodeURIComponent(ck)}/${layer}/${unit}?${q({quantity, k: 12})}`);
  let t = `<p class="small">${top.utterances} probe utterances, by ${esc(top.by)}; click a frame to open it and hear it.</p>` +
          `<table id="top-frames"><tr><th class="l">utterance</th><th>frame</th><th>time</th><th class="l">phone</th><th>value</th></tr>`;
  for (const f of top.frames) {
    const href = uttHref({checkpoint: ck, utt: f.utt_id, layer, quantity, frame: f.frame, unit});
    t += `<tr class="top-frame"><td class="l"><a href="${href}">${esc(f.utt_id)}</a></td><td>${f.frame}</td>` +
         `<td>${f.time.toFixed(2)} s</td><td class="l">${esc(f.phone)}</td><td>${fmt(f.value)}</td></tr>`;
  }
  $("#top").innerHTML = t + "</table>";
  document.body.dataset.ready = "1";
}

// ---- utterance ---------------------------------------------------------------------------------
function phoneTier(c, u, px) {
  const g = c.getContext("2d");
  g.font = "11px sans-serif"; g.textBaseline = "middle";
  u.phones.forEach((p, k) => {
    g.fillStyle = k % 2 ? "#eef" : "#dde"; g.fillRect(p.start * px, 0, (p.end - p.start) * px, c.height);
    g.fillStyle = "#222";
    if ((p.end - p.start) * px > 14) g.fillText(p.phone, p.start * px + 2, c.height / 2);
  });
  c.dataset.drawn = "1";
}

// the word tier (corpora with word timings): drawn as the phone tier is, one interval per word
function wordTier(c, u, px) {
  phoneTier(c, {phones: u.words.map((w) => ({start: w.start, end: w.end, phone: w.word}))}, px);
  c.dataset.words = String(u.words.length);
}

function phoneAt(u, t) { const p = u.phones.find((s) => s.start <= t && t < s.end); return p ? p.phone : ""; }

// spectrogram, phone tier, heatmap (hover, brush) and a cursor that follows the audio
function layerPanel(box, u, v, opts) {
  const T = v.frames, H = v.units.length;
  const px = Math.max(1, Math.min(6, Math.floor(1100 / T))), rowpx = Math.max(1, Math.min(8, Math.floor(420 / H)));
  const wrap = document.createElement("div"); wrap.className = "stack";
  const tier = canvas(T * px, 18, "tier");
  const heat = canvas(T * px, H * rowpx, "heatmap");
  const over = canvas(T * px, H * rowpx, "overlay");
  over.style.position = "absolute"; over.style.left = "0"; over.style.top = "0";
  const t0 = performance.now();
  drawMatrix(heat, v.data, H, T, colour(v.quantity, v.lo, v.hi));
  heat.dataset.drawMs = (performance.now() - t0).toFixed(1);
  heat.dataset.drawn = "1";
  phoneTier(tier, u, px);
  wrap.appendChild(tier);
  if (u.words && u.words.length) { const wt = canvas(T * px, 18, "words"); wordTier(wt, u, px); wrap.appendChild(wt); }
  const hw = document.createElement("div"); hw.style.position = "relative";
  hw.appendChild(heat); hw.appendChild(over); wrap.appendChild(hw);
  box.appendChild(wrap);
  const at = (ev) => [Math.floor(ev.offsetX / px), Math.floor(ev.offsetY / rowpx)];
  let brush = null;
  const g = over.getContext("2d");
  const redraw = (cursor) => {
    g.clearRect(0, 0, over.width, over.height);
    if (brush) { g.fillStyle = "rgba(255,200,0,0.25)"; g.fillRect(Math.min(brush[0], brush[1]) * px, 0, (Math.abs(brush[1] - brush[0]) + 1) * px, over.height); }
    if (opts.units) {
      g.strokeStyle = "rgba(0,160,0,0.9)";
      for (const u2 of opts.units) { const r = v.units.indexOf(u2); if (r >= 0) g.strokeRect(0, r * rowpx, over.width, rowpx); }
    }
    if (cursor !== undefined) { g.fillStyle = "#0a0"; g.fillRect(cursor * px, 0, Math.max(1, px), over.height); }
  };
  opts.redraw = redraw;
  over.addEventListener("mousemove", (ev) => {
    const [t, r] = at(ev);
    if (t < 0 || t >= T || r < 0 || r >= H) return tip(ev, null);
    tip(ev, `unit ${v.units[r]}, frame ${t} (${(t * FRAME_S).toFixed(2)} s), phone ${phoneAt(u, t)}, ${v.quantity} = ${fmt(v.data[r * T + t])}`);
    if (brush && ev.buttons === 1) { brush[1] = t; redraw(); }
  });
  over.addEventListener("mouseleave", (ev) => tip(ev, null));
  if (opts.onBrush) {
    over.addEventListener("mousedown", (ev) => { brush = [at(ev)[0], at(ev)[0]]; redraw(); });
    over.addEventListener("mouseup", () => {
      if (!brush) return;
      const s = Math.max(0, Math.min(brush[0], brush[1])), e = Math.min(T, Math.max(brush[0], brush[1]) + 1);
      opts.onBrush(s, e);
    });
    over.addEventListener("click", (ev) => { if (opts.onClick) opts.onClick(at(ev)[0]); });
  }
  return {px, redraw};
}

function spectrogram(box, u, px) {
  const D = u.fbank.length, T = u.frames, flat = new Float32Array(D * T);
  let lo = Infinity, hi = -Infinity;
  for (let d = 0; d < D; d++) for (let t = 0; t < T; t++) {
    const x = u.fbank[D - 1 - d][t]; flat[d * T + t] = x; lo = Math.min(lo, x); hi = Math.max(hi, x);
  }
  const c = canvas(T * px, D * 2, "spectrogram");
  drawMatrix(c, flat, D, T, (x) => { const t = (x - lo) / (hi - lo || 1); return [255 * (1 - t), 255 * (1 - t), 255 * (1 - t * 0.6)]; });
  c.dataset.drawn = "1";
  box.appendChild(c);
}

function playSpan(audio, start, end) {
  audio.currentTime = Math.max(0, start);
  const stop = () => { if (audio.currentTime >= end) { audio.pause(); audio.removeEventListener("timeupdate", stop); } };
  audio.addEventListener("timeupdate", stop);
  return audio.play().catch(() => status("press ▶ to play (the browser blocked autoplay)"));
}

async function fetchValues(ck, utt, layer, quantity, order, phone) {
  const t0 = performance.now();
  const v = unpack(await api(`/api/values/${encodeURIComponent(ck)}/${encodeURIComponent(utt)}?${q({layer, quantity, order, phone})}`, true));
  v.fetchMs = performance.now() - t0;
  return v;
}

async function utteranceView() {
  document.body.dataset.view = "utterance";
  const ck = params.get("checkpoint");
  let utt = params.get("utt");
  const layer = +(params.get("layer") || 1), quantity = params.get("quantity") || "c";
  const order = params.get("order") || "index", phone = params.get("phone") || "";
  const threshold = params.get("threshold") || (GATES.has(quantity) ? "0.9" : "0.5");
  if (!utt) {
    const list = await api(`/api/utterances/${encodeURIComponent(ck)}`);
    utt = list.probe[0];
    let h = `<h2>Utterances of ${esc(ck)} (split ${esc(list.split)})</h2><p class="small">the probe set (top frames and matches are searched here): </p><ul>`;
    for (const id of list.probe) h += `<li><a href="${uttHref({checkpoint: ck, utt: id, layer})}">${esc(id)}</a>${list.audio.includes(id) ? " 🔊" : ""}</li>`;
    main.innerHTML = h + "</ul>";
    document.body.dataset.ready = "1";
    return;
  }
  crumbs(`${esc(ck)} · ${esc(utt)} · layer ${layer} · ${esc(quantity)}`);
  const u = await api(`/api/utterance/${encodeURIComponent(ck)}/${encodeURIComponent(utt)}`);
  const v = await fetchValues(ck, utt, layer, quantity, order, phone);
  const phones = [...new Set(u.phones.map((p) => p.phone))].sort();
  const sel = (name, opts, cur) => `<label>${name} <select name="${name}">` +
    opts.map((o) => `<option ${String(o) === String(cur) ? "selected" : ""}>${esc(o)}</option>`).join("") + `</select></label>`;
  let h = `<h2>${esc(utt)}</h2><p>${esc(u.text)}</p><form class="controls" id="controls">` +
    `<input type="hidden" name="checkpoint" value="${esc(ck)}"><input type="hidden" name="utt" value="${esc(utt)}">` +
    sel("layer", Array.from({length: u.layers}, (_, k) => k + 1), layer) + sel("quantity", u.quantities, quantity) +
    sel("order", ["index", "variance", "cluster", "responsibility"], order) + sel("phone", ["", ...phones], phone) +
    `<label>threshold <input name="threshold" size="5" value="${esc(threshold)}"></label><button>show</button>` +
    `<a href="/compare?${q({a: ck, utt, layer, quantity})}">compare with…</a></form>`;
  h += `<p class="small">values from the ${v.source === "sample" ? "store's raw sample" : "checkpoint, captured now"}; ` +
       `${v.units.length} units × ${v.frames} frames, ${esc(quantity)} in [${fmt(v.lo)}, ${fmt(v.hi)}]; drag over the heatmap to select a span.</p>`;
  h += u.audio ? `<audio id="audio" controls preload="auto" src="/api/audio/${encodeURIComponent(ck)}/${encodeURIComponent(utt)}"></audio>`
               : `<p class="small">no audio for this utterance in the corpus (wav.scp)</p>`;
  h += `<div id="spec" class="stack"></div><div id="layer"></div><div id="pattern"></div>`;
  main.innerHTML = h;
  const panel = {units: null};
  const px = Math.max(1, Math.min(6, Math.floor(1100 / v.frames)));
  spectrogram($("#spec"), u, px);
  panel.onBrush = async (s, e) => {
    const th = +$("#controls").threshold.value;
    const p = await api(`/api/pattern/${encodeURIComponent(ck)}/${encodeURIComponent(utt)}?${q({layer, quantity, start: s, end: e, threshold: th})}`);
    panel.units = p.units; panel.redraw();
    let h2 = `<h3>Pattern: frames ${s}–${e - 1} (${(s * FRAME_S).toFixed(2)}–${(e * FRAME_S).toFixed(2)} s), ${esc(quantity)} > ${th}</h3>` +
      `<p id="selected" data-units="${p.units.join(",")}">${p.units.length} units on inside and off around it: ` +
      p.units.slice(0, 40).map((x) => `<a href="${unitHref(ck, layer, x)}">#${x}</a>`).join(" ") + `</p>`;
    if (p.units.length) h2 += `<button id="match">match across the probe utterances</button><div id="matches"></div>`;
    $("#pattern").innerHTML = h2;
    if (!p.units.length) return;
    $("#match").addEventListener("click", async () => {
      const m = await api(`/api/match/${encodeURIComponent(ck)}?${q({units: p.units.join(","), layer, quantity, threshold: th})}`);
      let t = `<p class="small">${m.matches.length} segments over ${m.utterances} utterances where ≥ 80 % of these units are on</p>` +
              `<table id="match-list"><tr><th class="l">utterance</th><th>frames</th><th>share on</th><th class="l">phones</th><th></th></tr>`;
      m.matches.forEach((x, k) => {
        t += `<tr class="match"><td class="l"><a href="${uttHref({checkpoint: ck, utt: x.utt_id, layer, quantity, frame: x.start})}">${esc(x.utt_id)}</a></td>` +
             `<td>${x.start}–${x.end - 1}</td><td>${fmt(x.share, 2)}</td><td class="l">${esc(x.phones.join(" "))}</td>` +
             `<td>${x.audio ? `<button data-k="${k}" class="play">▶</button>` : ""}</td></tr>`;
      });
      $("#matches").innerHTML = t + "</table>";
      const player = new Audio();
      $("#matches").querySelectorAll("button.play").forEach((b) => b.addEventListener("click", () => {
        const x = m.matches[+b.dataset.k];
        player.src = `/api/audio/${encodeURIComponent(ck)}/${encodeURIComponent(x.utt_id)}`;
        player.addEventListener("loadedmetadata", () => playSpan(player, x.start * FRAME_S - 0.1, x.end * FRAME_S + 0.1), {once: true});
      }));
    });
  };
  const audio = $("#audio");
  panel.onClick = (t) => { if (audio) audio.currentTime = t * FRAME_S; };
  layerPanel($("#layer"), u, v, panel);
  $("#layer").firstChild.dataset.fetchMs = v.fetchMs.toFixed(1);
  if (audio) {
    const follow = () => { panel.redraw(Math.floor(audio.currentTime / FRAME_S)); if (!audio.paused) requestAnimationFrame(follow); };
    audio.addEventListener("play", follow); audio.addEventListener("seeked", follow);
    const frame = params.get("frame");
    if (frame !== null) {
      panel.redraw(+frame);
      const around = () => playSpan(audio, +frame * FRAME_S - 0.3, +frame * FRAME_S + 0.3);
      if (audio.readyState >= 1) around(); else audio.addEventListener("loadedmetadata", around, {once: true});
    }
  }
  const unit = params.get("unit");
  if (unit !== null) { panel.units = [+unit]; panel.redraw(params.get("frame") !== null ? +params.get("frame") : undefined); }
  document.body.dataset.ready = "1";
}

// ---- compare -----------------------------------------------------------------------------------
async function compareView() {
  document.body.dataset.view = "compare";
  const a = params.get("a"), b = params.get("b"), utt = params.get("utt");
  const layer = +(params.get("layer") || 1), quantity = params.get("quantity") || "c";
  const o = await api("/api/overview");
  const ids = o.checkpoints.map((c) => c.checkpoint_id);
  let h = `<h2>Compare on ${esc(utt)}, layer ${layer}, ${esc(quantity)}</h2><form class="controls">` +
    `<input type="hidden" name="utt" value="${esc(utt)}"><input type="hidden" name="layer" value="${layer}">` +
    `<input type="hidden" name="quantity" value="${esc(quantity)}">` +
    ["a", "b"].map((n) => `<label>${n} <select name="${n}">${ids.map((i) => `<option ${i === params.get(n) ? "selected" : ""}>${esc(i)}</option>`).join("")}</select></label>`).join("") +
    `<button>compare</button></form><div class="side"><div id="A"></div><div id="B"></div></div>`;
  main.innerHTML = h;
  if (!a || !b) { document.body.dataset.ready = "1"; return; }
  const u = await api(`/api/utterance/${encodeURIComponent(a)}/${encodeURIComponent(utt)}`);
  for (const [ck, box] of [[a, "#A"], [b, "#B"]]) {
    const v = await fetchValues(ck, utt, layer, quantity, "variance");
    $(box).innerHTML = `<p><a href="${uttHref({checkpoint: ck, utt, layer, quantity})}">${esc(ck)}</a> <span class="small">units by variance, ${esc(quantity)} in [${fmt(v.lo)}, ${fmt(v.hi)}]</span></p>`;
    layerPanel($(box), u, v, {});
  }
  document.body.dataset.ready = "1";
}

const VIEWS = {"/": overview, "/unit": unitView, "/utterance": utteranceView, "/compare": compareView};
(VIEWS[location.pathname] || overview)().catch((e) => {
  document.body.dataset.ready = "error";
  main.insertAdjacentHTML("afterbegin", `<p class="error" id="error">${esc(e.message)}</p>`);
});
