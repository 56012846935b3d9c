// The attribution graph's view: nodes by position (x) and layer (y), edges by weight, a threshold on |weight|,
// hover values, feature links, pins and named groups kept in the address (#graph=&t=&pin=&group=name:ids).
// Every token, target and group name is inserted with textContent, never as markup; nothing loads from the network.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const SLUG = /^[A-Za-z0-9_-]{1,100}$/;
  const ID = /^(f\d+\.\d+\.\d+|e\d+\.\d+|t\d+|o\d+)$/;
  const ROW = 72, STEP = 15, MIN_COL = 58, LEFT = 64, LABEL_CHARS = 40;
  const RISE = 6.5 * Math.sin(35 * Math.PI / 180);  // height of one character of a token label (rotated 35 degrees)
  const TARGET_RISE = 6.5 * Math.sin(50 * Math.PI / 180);  // targets' labels, steeper: they sit 15 px apart
  const SLIDER_MAX = 1000;
  const $ = (id) => document.getElementById(id);
  const state = { threshold: 0, pins: [], groups: [] };  // pins: node ids; groups: {name, ids}
  let G = null;  // the graph: its data, and per node and edge the drawn element
  const byId = new Map();

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }
  function fmt(x) {
    if (x === 0) return "0";
    const a = Math.abs(x);
    return a >= 0.01 && a < 1e4 ? x.toFixed(a >= 100 ? 1 : 3) : x.toExponential(2);
  }
  function short(text) {
    const t = String(text);
    return t.length > LABEL_CHARS ? t.slice(0, LABEL_CHARS - 1) + "…" : t;
  }
  function message(text) {
    $("plot").replaceChildren(el("p", text, "hint"));
    document.body.dataset.ready = "1";
  }
  function safeHref(href) {
    try {
      const u = new URL(href, location.href);
      return ["file:", "http:", "https:"].includes(u.protocol) ? u.href : null;
    } catch (e) {
      return null;
    }
  }

  // --- the address ---------------------------------------------------------------------------
  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    const t = parseFloat(p.get("t") || "0");
    state.threshold = isFinite(t) && t > 0 ? t : 0;
    const ids = (s) => (s || "").split(",").filter((i) => ID.test(i) && byId.has(i));
    state.pins = [...new Set(ids(p.get("pin")))];
    state.groups = p.getAll("group").map((g) => {
      const at = g.lastIndexOf(":");
      return { name: at < 0 ? g : g.slice(0, at), ids: [...new Set(ids(at < 0 ? "" : g.slice(at + 1)))] };
    }).filter((g) => g.ids.length);
  }
  function writeHash() {
    const p = new URLSearchParams();
    p.set("graph", G.slug);
    if (state.threshold > 0) p.set("t", String(state.threshold));
    if (state.pins.length) p.set("pin", state.pins.join(","));
    state.groups.forEach((g) => p.append("group", g.name + ":" + g.ids.join(",")));
    history.replaceState(null, "", "#" + p.toString());
  }

  // --- layout and drawing --------------------------------------------------------------------
  function layout() {
    const L = G.n_layers, P = G.tokens.length;
    const cells = new Map();  // "layer|pos" -> nodes, features by index then the error
    G.nodes.forEach((n) => {
      const k = n.key[1] + "|" + n.key[2];
      if (!cells.has(k)) cells.set(k, []);
      cells.get(k).push(n);
    });
    const width = new Array(P).fill(MIN_COL);
    cells.forEach((list) => {
      list.sort((a, b) => a.key[0] - b.key[0] || a.key[3] - b.key[3] || a.id.localeCompare(b.id));
      const p = list[0].key[2];
      if (p >= 0 && p < P) width[p] = Math.max(width[p], list.length * STEP + 12);
    });
    const start = [LEFT];
    width.forEach((w, p) => start.push(start[p] + w));
    const chars = (texts) => Math.min(LABEL_CHARS, Math.max(4, ...texts.map((t) => String(t).length + 10)));
    const targetChars = chars(G.nodes.filter((n) => n.kind === "target").map((n) => n.label));
    const top = 40 + TARGET_RISE * targetChars;
    const bottom = 40 + RISE * chars(G.tokens);
    const rowY = (layer) => top + (L - layer) * ROW;  // tokens (-1) lowest, targets (L) at the top
    cells.forEach((list) => {
      const p = Math.min(Math.max(list[0].key[2], 0), P - 1);
      list.forEach((n, j) => {
        n.x = start[p] + (j + 0.5) * width[p] / list.length;
        n.y = rowY(n.key[1]);
      });
    });
    const right = 40 + 5.4 * Math.max(0.8 * targetChars, chars(G.tokens.slice(-3)));  // labels run to the right
    return { W: start[P] + right, H: rowY(-1) + bottom, rowY, start, width };
  }
  function shape(n) {
    const base = { "data-node": n.id, class: "node " + n.kind + (n.href ? " linked" : "") };
    if (n.kind === "feature") return svg("circle", { ...base, cx: n.x, cy: n.y, r: 5.5 });
    if (n.kind === "target") {
      const pts = [[n.x, n.y - 8], [n.x + 8, n.y], [n.x, n.y + 8], [n.x - 8, n.y]].map((q) => q.join(",")).join(" ");
      return svg("polygon", { ...base, points: pts });
    }
    const s = n.kind === "token" ? 11 : 9;
    return svg("rect", { ...base, x: n.x - s / 2, y: n.y - s / 2, width: s, height: s, rx: n.kind === "token" ? 2 : 0 });
  }
  function draw() {
    const geo = layout();
    const root = svg("svg", { width: geo.W, height: geo.H, role: "img", id: "graph" });
    const axes = svg("g", { class: "axes" });
    for (let layer = -1; layer <= G.n_layers; layer++) {
      const name = layer < 0 ? "tokens" : layer === G.n_layers ? "targets" : "layer " + layer;
      const t = svg("text", { x: 6, y: geo.rowY(layer) + 4, class: "axis" });
      t.textContent = name;
      axes.appendChild(t);
      axes.appendChild(svg("line", { x1: LEFT, x2: geo.W - 30, y1: geo.rowY(layer), y2: geo.rowY(layer), stroke: "#f0f0f0" }));
    }
    G.tokens.forEach((tok, p) => {  // the prompt's tokens along the bottom, as text
      const x = geo.start[p] + geo.width[p] / 2 - 4, y = geo.rowY(-1) + 16;
      const t = svg("text", { x, y, transform: `rotate(35 ${x} ${y})`, class: "tokens", "data-pos": p });
      t.textContent = short(tok);
      const title = svg("title");
      title.textContent = p + ": " + tok;
      t.appendChild(title);
      axes.appendChild(t);
    });
    G.nodes.filter((n) => n.kind === "target").forEach((n) => {
      const y = n.y - 12;
      const t = svg("text", { x: n.x, y, transform: `rotate(-50 ${n.x} ${y})`, class: "targets", "data-for": n.id });
      t.textContent = short(n.label) + (G.target_kind === "direction" ? " (w=" : " (p=") + fmt(n.value) + ")";
      axes.appendChild(t);
    });
    root.appendChild(axes);
    const edges = svg("g", { class: "edges" });
    const top = weightRange()[1];
    G.edges.forEach((e, k) => {
      const [s, d, w] = e, a = G.nodes[s], b = G.nodes[d], r = Math.abs(w) / top;
      const line = svg("line", {
        x1: a.x, y1: a.y, x2: b.x, y2: b.y, class: "edge", "data-edge": k,
        stroke: w >= 0 ? "#e65100" : "#1565c0", "stroke-width": (0.6 + 3.4 * r).toFixed(2),
        "stroke-opacity": (0.2 + 0.6 * r).toFixed(3),
      });
      G.edgeEls.push(line);
      edges.appendChild(line);
    });
    root.appendChild(edges);
    const nodes = svg("g", { class: "nodes" });
    G.nodes.forEach((n) => {
      n.el = shape(n);
      nodes.appendChild(n.el);
    });
    root.appendChild(nodes);
    $("plot").replaceChildren(root);
  }

  // --- the threshold, pins and groups --------------------------------------------------------
  function apply() {
    const t = state.threshold;
    const degree = new Array(G.nodes.length).fill(0);
    let shownEdges = 0;
    G.edges.forEach((e, k) => {
      const on = Math.abs(e[2]) >= t;
      G.edgeEls[k].classList.toggle("hidden", !on);
      if (on) { degree[e[0]]++; degree[e[1]]++; shownEdges++; }
    });
    const pinned = new Set(state.pins), grouped = new Map();
    state.groups.forEach((g, k) => g.ids.forEach((i) => { if (!grouped.has(i)) grouped.set(i, k); }));
    let shownNodes = 0;
    G.nodes.forEach((n, j) => {
      const always = n.kind === "token" || n.kind === "target" || pinned.has(n.id) || grouped.has(n.id);
      const on = always || degree[j] > 0;
      n.el.classList.toggle("hidden", !on);
      n.el.classList.toggle("pinned", pinned.has(n.id));
      n.el.classList.toggle("grouped", grouped.has(n.id));
      if (grouped.has(n.id)) n.el.style.stroke = groupColour(grouped.get(n.id));
      else n.el.style.removeProperty("stroke");
      if (on) shownNodes++;
    });
    $("counts").textContent = shownEdges + " of " + G.edges.length + " edges, " + shownNodes + " of " + G.nodes.length + " nodes";
    const b = document.body.dataset;
    b.threshold = String(t);
    b.edgesShown = String(shownEdges);
    b.nodesShown = String(shownNodes);
    if (document.activeElement !== $("threshold")) $("threshold").value = String(t);
    $("slider").value = String(sliderOf(t));
    renderSide();
  }
  function groupColour(k) { return ["#2e7d32", "#c2185b", "#0277bd", "#f9a825", "#4e342e", "#00838f"][k % 6]; }
  function weightRange() {  // [weakest, strongest] nonzero |weight|, computed once (no spread: graphs can be large)
    if (!G.range) {
      let lo = Infinity, hi = 0;
      G.edges.forEach((e) => { const a = Math.abs(e[2]); if (a > 0) { lo = Math.min(lo, a); hi = Math.max(hi, a); } });
      G.range = hi > 0 ? [lo, hi] : [1, 1];
    }
    return G.range;
  }
  function thresholdOf(s) {  // the slider is logarithmic from the weakest edge to the strongest; 0 shows all
    if (s <= 0) return 0;
    const [lo, hi] = weightRange();
    return Number((lo * Math.pow(hi / lo, s / SLIDER_MAX)).toPrecision(4));
  }
  function sliderOf(t) {
    if (t <= 0) return 0;
    const [lo, hi] = weightRange();
    if (hi <= lo) return SLIDER_MAX;
    return Math.max(1, Math.min(SLIDER_MAX, Math.round(SLIDER_MAX * Math.log(t / lo) / Math.log(hi / lo))));
  }
  function setThreshold(t) {
    state.threshold = t > 0 && isFinite(t) ? t : 0;
    apply();
    writeHash();
  }
  function togglePin(id) {
    const at = state.pins.indexOf(id);
    if (at >= 0) state.pins.splice(at, 1); else state.pins.push(id);
    apply();
    writeHash();
  }
  function nodeName(n) {
    const [, layer, pos, index] = n.key;
    if (n.kind === "feature") return "feature " + index + " · layer " + layer + " · position " + pos;
    if (n.kind === "error") return "error · layer " + layer + " · position " + pos;
    if (n.kind === "token") return "token " + pos + ": " + n.label;
    return "target: " + n.label;
  }
  function nodeItem(n, remove) {
    const li = el("li");
    li.dataset.node = n.id;
    if (n.href && safeHref(n.href)) {
      const a = el("a", nodeName(n));
      a.href = safeHref(n.href);
      li.appendChild(a);
    } else {
      li.appendChild(el("span", nodeName(n)));
    }
    li.appendChild(el("span", " " + fmt(n.value), "label"));
    if (remove) {
      const b = el("button", "×", "small");
      b.type = "button";
      b.title = "remove";
      b.addEventListener("click", remove);
      li.appendChild(b);
    }
    return li;
  }
  function renderSide() {
    const pins = $("pins");
    pins.replaceChildren();
    state.pins.forEach((id) => pins.appendChild(nodeItem(byId.get(id), () => togglePin(id))));
    if (!state.pins.length) pins.appendChild(el("li", "none: shift-click a node", "hint"));
    const groups = $("groups");
    groups.replaceChildren();
    state.groups.forEach((g, k) => {
      const li = el("li");
      li.dataset.group = String(k);
      const name = el("strong", g.name, "group-name");
      name.style.color = groupColour(k);
      li.appendChild(name);
      li.appendChild(el("span", " (" + g.ids.length + ")", "label"));
      const b = el("button", "ungroup", "small");
      b.type = "button";
      b.addEventListener("click", () => { state.groups.splice(k, 1); apply(); writeHash(); });
      li.appendChild(b);
      const ul = el("ul");
      g.ids.forEach((id) => ul.appendChild(nodeItem(byId.get(id))));
      li.appendChild(ul);
      groups.appendChild(li);
    });
    if (!state.groups.length) groups.appendChild(el("li", "none: pin nodes, name them, group them", "hint"));
  }

  // --- hover and click -----------------------------------------------------------------------
  function tipTable(title, rows) {
    const tip = $("tip");
    tip.replaceChildren(el("div", title, "title"));
    const t = el("table");
    rows.forEach(([field, label, value]) => {
      const tr = el("tr");
      tr.dataset.field = field;
      tr.appendChild(el("td", label));
      tr.appendChild(el("td", value));
      t.appendChild(tr);
    });
    tip.appendChild(t);
    tip.hidden = false;
  }
  function showNode(n) {
    const [kind, layer, pos, index] = n.key;
    const what = { feature: "activation", target: G.target_kind === "direction" ? "weight" : "probability" }[n.kind] || "value";
    const rows = [["key", "key (kind, layer, pos, index)", "(" + [kind, layer, pos, index].join(", ") + ")"]];
    if (n.kind !== "target" && pos >= 0 && pos < G.tokens.length) rows.push(["token", "at token", G.tokens[pos]]);
    rows.push(["value", what, String(n.value)], ["influence", "influence (cumulative)", String(n.influence)]);
    if (n.href) rows.push(["href", "feature page", n.href]);
    tipTable(nodeName(n), rows);
    G.edges.forEach((e, k) => G.edgeEls[k].classList.toggle("lit", G.nodes[e[0]] === n || G.nodes[e[1]] === n));
  }
  function showEdge(k) {
    const [s, d, w] = G.edges[k];
    tipTable(nodeName(G.nodes[s]) + " → " + nodeName(G.nodes[d]), [["weight", "weight", String(w)]]);
  }
  function place(ev) {
    const tip = $("tip");
    tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 4) + "px";
    tip.style.top = Math.min(ev.clientY + 14, window.innerHeight - tip.offsetHeight - 4) + "px";
  }
  function wire() {
    const plot = $("plot");
    plot.addEventListener("mouseover", (ev) => {
      const node = ev.target.closest("[data-node]"), edge = ev.target.closest("[data-edge]");
      if (node && byId.has(node.dataset.node)) showNode(byId.get(node.dataset.node));
      else if (edge) showEdge(Number(edge.dataset.edge));
      else return;
      place(ev);
    });
    plot.addEventListener("mousemove", (ev) => { if (!$("tip").hidden) place(ev); });
    plot.addEventListener("mouseout", (ev) => {
      if (ev.target.closest("[data-node], [data-edge]")) {
        $("tip").hidden = true;
        G.edgeEls.forEach((e) => e.classList.remove("lit"));
      }
    });
    plot.addEventListener("click", (ev) => {
      const node = ev.target.closest("[data-node]");
      if (!node || !byId.has(node.dataset.node)) return;
      const n = byId.get(node.dataset.node);
      const href = n.href && safeHref(n.href);
      if (href && !ev.shiftKey) location.assign(href);
      else togglePin(n.id);
    });
    $("slider").addEventListener("input", (ev) => setThreshold(thresholdOf(Number(ev.target.value))));
    $("threshold").addEventListener("input", (ev) => {
      const t = parseFloat(ev.target.value);
      if (isFinite(t) && t >= 0) setThreshold(t);
    });
    $("group").addEventListener("click", () => {
      if (!state.pins.length) return;
      const name = $("group-name").value.trim() || "group " + (state.groups.length + 1);
      state.groups.push({ name, ids: state.pins.slice() });
      state.pins = [];
      $("group-name").value = "";
      apply();
      writeHash();
    });
    $("unpin").addEventListener("click", () => { state.pins = []; apply(); writeHash(); });
    window.addEventListener("hashchange", () => {
      const slug = new URLSearchParams(location.hash.slice(1)).get("graph");
      if (slug && slug !== G.slug) { location.reload(); return; }
      readHash();
      apply();
    });
  }

  // --- loading -------------------------------------------------------------------------------
  window.SAE_GRAPH = function (data) {
    if (!data || data.format !== "saekit-graph-view/1") { message("data/graph-*.js is not a graph view's data"); return; }
    G = data;
    G.edgeEls = [];
    G.nodes.forEach((n) => byId.set(n.id, n));
    const info = [G.info.model, G.info.transcoders].filter((x) => x).join(" · ");
    $("summary").textContent = "“" + G.prompt + "”" + (info ? " · " + info : "") + " · " + G.nodes.length +
      " nodes, " + G.edges.length + " edges (pruned at node " + G.node_threshold + ", edge " + G.edge_threshold + ")";
    document.title = G.slug + " · saekit attribution graph";
    draw();
    readHash();
    wire();
    apply();
    writeHash();
    document.body.dataset.graph = G.slug;
    document.body.dataset.ready = "1";
  };
  function listGraphs(list) {
    const ul = el("ul");
    list.forEach((g) => {
      if (!SLUG.test(g.slug)) return;
      const li = el("li");
      const a = el("a", g.slug);
      a.href = "#graph=" + g.slug;
      li.appendChild(a);
      li.appendChild(el("span", " “" + g.prompt + "” · " + g.nodes + " nodes, " + g.edges + " edges", "label"));
      ul.appendChild(li);
    });
    $("plot").replaceChildren(el("p", "Pick a graph:", "hint"), ul);
    document.body.dataset.ready = "1";
    window.addEventListener("hashchange", () => location.reload(), { once: true });
  }
  const list = window.SAE_GRAPHS || [];
  const slug = new URLSearchParams(location.hash.slice(1)).get("graph") || (list.length === 1 ? list[0].slug : null);
  if (!slug) { listGraphs(list); return; }
  if (!SLUG.test(slug) || !list.some((g) => g.slug === slug)) { message("no graph named " + slug + " in data/graphs.js"); return; }
  const s = document.createElement("script");
  s.src = "data/graph-" + slug + ".js";
  s.onerror = () => message("cannot load " + s.src);
  document.head.appendChild(s);
})();
