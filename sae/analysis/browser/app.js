// The feature browser: a latent list (search, sort, pages) and one latent's panels, from data/*.js.
// Every string from the corpus, and every explanation (model output), is inserted with textContent, never as markup.
"use strict";
(function () {
  const INDEX = window.SAE_INDEX;
  const PAGE = 100;
  const shards = {};
  const waiting = {};
  const state = { sort: "frequency", desc: true, query: "", page: 0, order: null, current: null };
  const $ = (id) => document.getElementById(id);
  const EXPL = INDEX.columns.explanation || null;  // per latent: its explanation or null
  const METHODS = INDEX.meta.score_methods || [];
  const LAYER = INDEX.columns.layer || null;  // a CLT's: per feature, the layer it reads

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function tokenText(id) {
    const t = INDEX.vocab[id];
    return t === undefined ? "<" + id + ">" : t;
  }
  function fmt(x) {
    if (x === 0) return "0";
    const a = Math.abs(x);
    return a >= 0.01 && a < 1e4 ? x.toFixed(a >= 100 ? 1 : 3) : x.toExponential(2);
  }
  function link(i) {
    const a = el("a", "#" + i);
    a.href = "#latent=" + i;
    a.className = "latent-link";
    return a;
  }

  // --- the list -------------------------------------------------------------------------------
  function matches() {
    const n = INDEX.meta.n_latents;
    const q = state.query.trim().toLowerCase();
    if (!q) return null;
    if (/^\d+$/.test(q)) {
      const i = parseInt(q, 10);
      return i < n ? [i] : [];
    }
    const hit = new Set();
    for (const [id, text] of Object.entries(INDEX.vocab)) {
      if (text.toLowerCase().includes(q)) hit.add(Number(id));
    }
    const out = [];
    const toks = INDEX.columns.tokens, w = INDEX.meta.tokens_per_row;
    for (let i = 0; i < n; i++) {
      if (EXPL && EXPL[i] && EXPL[i].toLowerCase().includes(q)) { out.push(i); continue; }
      for (let j = i * w; j < (i + 1) * w; j++) {
        if (hit.has(toks[j])) { out.push(i); break; }
      }
    }
    return out;
  }
  function computeOrder() {
    const n = INDEX.meta.n_latents;
    const found = matches();
    let ids;
    if (found === null && state.sort === "frequency" && state.desc) {
      state.order = INDEX.order_frequency;  // the default order comes precomputed
      return;
    }
    if (found === null) {
      ids = new Int32Array(n);
      for (let i = 0; i < n; i++) ids[i] = i;
    } else {
      ids = Int32Array.from(found);
    }
    if (state.sort !== "id") {
      const col = INDEX.columns[state.sort];
      const sign = state.desc ? -1 : 1;
      const none = (x) => x === null || x === undefined;  // latents without a score go last either way
      ids.sort((a, b) => {
        const na = none(col[a]), nb = none(col[b]);
        if (na || nb) return na === nb ? a - b : (na ? 1 : -1);
        return sign * (col[a] - col[b]) || a - b;
      });
    } else if (state.desc) {
      ids.reverse();
    }
    state.order = ids;
  }
  function renderList() {
    const ids = state.order;
    const pages = Math.max(1, Math.ceil(ids.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    const body = document.querySelector("#latents tbody");
    body.replaceChildren();
    const c = INDEX.columns;
    for (let r = state.page * PAGE; r < Math.min(ids.length, (state.page + 1) * PAGE); r++) {
      const i = ids[r];
      const tr = el("tr");
      tr.dataset.latent = String(i);
      if (i === state.current) tr.className = "current";
      const td = el("td");
      td.appendChild(link(i));
      tr.appendChild(td);
      if (LAYER) tr.appendChild(el("td", String(LAYER[i]), "num layer"));
      tr.appendChild(el("td", fmt(c.frequency[i]), "num"));
      tr.appendChild(el("td", fmt(c.max[i]), "num"));
      tr.appendChild(el("td", fmt(c.mean[i]), "num"));
      const w = INDEX.meta.tokens_per_row;
      tr.appendChild(el("td", c.tokens.slice(i * w, (i + 1) * w).filter((x) => x >= 0).map(tokenText).join(" · ")));
      if (EXPL) {
        const e = el("td", EXPL[i] === null ? "" : EXPL[i], "expl");
        if (EXPL[i] !== null) e.title = EXPL[i];
        tr.appendChild(e);
        METHODS.forEach((m) => {
          const v = c["score_" + m][i];
          tr.appendChild(el("td", v === null || v === undefined ? "" : v.toFixed(2), "num score"));
        });
      }
      body.appendChild(tr);
    }
    $("count").textContent = ids.length + " of " + INDEX.meta.n_latents + " latents";
    $("page").textContent = "page " + (state.page + 1) + " / " + pages;
  }
  function refresh() { computeOrder(); renderList(); }

  // --- one latent ----------------------------------------------------------------------------
  function loadShard(k) {
    if (shards[k]) return Promise.resolve(shards[k]);
    if (!waiting[k]) {
      waiting[k] = new Promise((resolve, reject) => {
        const s = document.createElement("script");
        s.src = "data/shard_" + String(k).padStart(5, "0") + ".js";
        s.onload = () => resolve(shards[k]);
        s.onerror = () => reject(new Error("cannot load " + s.src));
        document.head.appendChild(s);
      });
    }
    return waiting[k];
  }
  window.SAE_SHARD = function (k, latents) { shards[k] = latents; };

  function context(ex, max) {
    const p = el("div", null, "ctx");
    p.appendChild(el("span", fmt(ex.value), "val"));
    ex.ids.forEach((id, j) => {
      const a = ex.acts[j];
      const s = el("span", tokenText(id), "tok" + (j === ex.peak ? " peak" : ""));
      if (a > 0) s.style.background = "rgba(255, 120, 0, " + Math.min(1, 0.15 + 0.85 * a / (max || 1)).toFixed(3) + ")";
      s.title = fmt(a);
      p.appendChild(s);
    });
    return p;
  }
  function panel(title) {
    const d = el("div", null, "panel");
    d.appendChild(el("h3", title));
    return d;
  }
  function histogram(h) {
    const NS = "http://www.w3.org/2000/svg";
    const W = 480, H = 110, n = h.counts.length;
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("width", W);
    svg.setAttribute("height", H + 16);
    svg.setAttribute("role", "img");
    const top = Math.max(1, ...h.counts);
    h.counts.forEach((c, b) => {
      const r = document.createElementNS(NS, "rect");
      const bh = H * c / top;
      r.setAttribute("x", (b * W / n).toFixed(1));
      r.setAttribute("y", (H - bh).toFixed(1));
      r.setAttribute("width", (W / n - 1).toFixed(1));
      r.setAttribute("height", bh.toFixed(1));
      r.setAttribute("fill", "#ef6c00");
      const t = document.createElementNS(NS, "title");
      t.textContent = fmt(b * h.upper / n) + "–" + fmt((b + 1) * h.upper / n) + ": " + c;
      r.appendChild(t);
      svg.appendChild(r);
    });
    [[0, "start", "0"], [W, "end", fmt(h.upper)]].forEach(([x, anchor, label]) => {
      const t = document.createElementNS(NS, "text");
      t.setAttribute("x", x);
      t.setAttribute("y", H + 13);
      t.setAttribute("font-size", "11");
      t.setAttribute("text-anchor", anchor);
      t.textContent = label;
      svg.appendChild(t);
    });
    return svg;
  }
  function tokenTable(title, rows) {
    const d = el("div");
    d.appendChild(el("div", title, "label"));
    const t = el("table");
    rows.forEach(([id, v]) => {
      const tr = el("tr");
      tr.appendChild(el("td", tokenText(id)));
      tr.appendChild(el("td", fmt(v), "num"));
      t.appendChild(tr);
    });
    d.appendChild(t);
    return d;
  }
  function writesPanel(L) {
    const p = panel("writes to layers (norm of its decoder slice per target layer)");
    p.id = "writes";
    const top = Math.max(1e-12, ...L.writes.map(([, w]) => w));
    const t = el("table", null, "writes");
    L.writes.forEach(([layer, w]) => {
      const tr = el("tr");
      tr.dataset.layer = String(layer);
      tr.appendChild(el("td", "layer " + layer));
      tr.appendChild(el("td", fmt(w), "num"));
      const bar = el("td");
      const b = el("div", null, "bar");
      b.style.width = (100 * w / top).toFixed(1) + "%";
      bar.appendChild(b);
      tr.appendChild(bar);
      t.appendChild(tr);
    });
    p.appendChild(t);
    return p;
  }
  function explanationPanel(A) {
    const p = panel("explanation");
    p.id = "explanation";
    if (A.explanation === null || A.explanation === undefined) {
      p.appendChild(el("p", "no explanation" + (A.skipped ? ": " + A.skipped : ""), "hint"));
    } else {
      p.appendChild(el("p", A.explanation, "explanation-text"));
    }
    const methods = Object.keys(A.scores || {});
    if (methods.length) {
      const t = el("table", null, "scores");
      const head = el("tr");
      ["score", "balanced accuracy", "95% CI", "AUROC", "positives / negatives", "unparsed"].forEach((h) => head.appendChild(el("th", h)));
      t.appendChild(head);
      methods.forEach((m) => {
        const sc = A.scores[m];
        const tr = el("tr");
        tr.dataset.method = m;
        tr.appendChild(el("td", m));
        tr.appendChild(el("td", sc.balanced_accuracy === null ? "–" : sc.balanced_accuracy.toFixed(3), "num"));
        tr.appendChild(el("td", sc.ci95 ? sc.ci95[0].toFixed(2) + "–" + sc.ci95[1].toFixed(2) : "–", "num"));
        tr.appendChild(el("td", sc.auroc === null || sc.auroc === undefined ? "–" : sc.auroc.toFixed(3), "num"));
        tr.appendChild(el("td", sc.n_positive + " / " + sc.n_negative, "num"));
        tr.appendChild(el("td", String(sc.unparsed), "num"));
        t.appendChild(tr);
      });
      p.appendChild(t);
    }
    const who = "explained by " + A.judge + (A.scorer && A.scorer !== A.judge ? ", scored by " + A.scorer : "") +
      " · prompts " + A.prompt_version;
    p.appendChild(el("div", who, "label"));
    return p;
  }
  function renderLatent(L) {
    const d = $("detail");
    d.replaceChildren();
    d.appendChild(el("h2", LAYER ? "feature " + L.id + " · layer " + L.layer + ", latent " + L.local : "latent " + L.id));
    const s = panel("summary");
    s.appendChild(el("div", "fires on " + L.count + " of " + INDEX.meta.tokens + " tokens (frequency " +
      fmt(L.frequency) + "), mean when active " + fmt(L.mean) + ", max " + fmt(L.max)));
    if (INDEX.meta.target_hook) {
      const reads = LAYER ? INDEX.meta.hook.replace("{}", L.layer) : INDEX.meta.hook;
      const predicts = LAYER ? "layers " + L.writes.map(([l]) => l).join(", ") + " of " + INDEX.meta.target_hook : INDEX.meta.target_hook;
      s.appendChild(el("div", "reads " + reads + " · predicts " + predicts, "label hooks"));
    }
    d.appendChild(s);
    if (L.writes) d.appendChild(writesPanel(L));
    if (L.autointerp) d.appendChild(explanationPanel(L.autointerp));
    if (L.count > 0) {
      const h = panel("activation histogram (when active)");
      h.appendChild(histogram(L.hist));
      d.appendChild(h);
    }
    const top = panel("top activating contexts");
    if (!L.top.length) top.appendChild(el("p", "never active on these tokens", "hint"));
    L.top.forEach((ex) => top.appendChild(context(ex, L.max)));
    d.appendChild(top);
    if (L.quantiles.length) {
      const q = panel("samples by activation quantile");
      L.quantiles.forEach((g) => {
        q.appendChild(el("div", "quantile " + fmt(g.low) + "–" + fmt(g.high), "label"));
        g.examples.forEach((ex) => q.appendChild(context(ex, L.max)));
      });
      d.appendChild(q);
    }
    if (L.tokens_kind) {
      const t = panel(L.tokens_kind);
      const row = el("div");
      row.style.display = "flex";
      row.style.gap = "24px";
      row.appendChild(tokenTable("top", L.tokens_top));
      row.appendChild(tokenTable("bottom", L.tokens_bottom));
      t.appendChild(row);
      d.appendChild(t);
    }
    const c = panel("co-occurring latents (Jaccard index on " + INDEX.meta.cooc_sample_tokens + " sampled tokens)");
    if (!L.cooccurring.length) c.appendChild(el("p", "none", "hint"));
    const ul = el("ul", null, "cooc");
    L.cooccurring.forEach(([j, s]) => {
      const li = el("li");
      li.appendChild(link(j));
      li.appendChild(el("span", " " + fmt(s), "val"));
      ul.appendChild(li);
    });
    c.appendChild(ul);
    d.appendChild(c);
  }
  function route() {
    const m = /latent=(\d+)/.exec(location.hash);
    if (!m) return;
    const i = parseInt(m[1], 10);
    if (i >= INDEX.meta.n_latents) return;
    state.current = i;
    const k = Math.floor(i / INDEX.meta.shard_size);
    loadShard(k).then((latents) => {
      renderLatent(latents[i - k * INDEX.meta.shard_size]);
      document.body.dataset.latent = String(i);
      renderList();
    }).catch((e) => { $("detail").replaceChildren(el("p", e.message, "hint")); });
  }

  // --- wiring --------------------------------------------------------------------------------
  const m = INDEX.meta;
  const what = LAYER ? m.n_latents + " features (" + m.layers + " layers × " + m.latents_per_layer + ")" : m.n_latents + " latents";
  const where = m.target_hook ? m.hook + " → " + m.target_hook : m.hook;
  $("summary").textContent = what + " · " + m.model + " · " + where + " · " + m.tokens + " tokens";
  if (LAYER) {
    const head = document.querySelector("#latents thead tr");
    head.insertBefore(el("th", "layer"), head.children[1]);
    const o = el("option", "layer");
    o.value = "layer";
    $("sort").appendChild(o);
  }
  if (EXPL) {
    document.body.classList.add("explained");
    const head = document.querySelector("#latents thead tr");
    head.appendChild(el("th", "explanation"));
    METHODS.forEach((k) => head.appendChild(el("th", k)));
    METHODS.forEach((k) => {
      const o = el("option", k + " score");
      o.value = "score_" + k;
      $("sort").appendChild(o);
    });
    $("search").placeholder = "latent id, token text or explanation";
  }
  let timer = null;
  $("search").addEventListener("input", (e) => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.query = e.target.value; state.page = 0; refresh(); }, 150);
  });
  $("sort").addEventListener("change", (e) => { state.sort = e.target.value; state.page = 0; refresh(); });
  $("order").addEventListener("click", (e) => {
    state.desc = !state.desc;
    e.target.textContent = state.desc ? "descending" : "ascending";
    refresh();
  });
  $("prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); renderList(); });
  $("next").addEventListener("click", () => { state.page += 1; renderList(); });
  window.addEventListener("hashchange", route);
  refresh();
  document.body.dataset.readyMs = performance.now().toFixed(1);  // first page drawn (read by bench/dashboard.py)
  document.body.dataset.ready = "1";
  route();
})();
