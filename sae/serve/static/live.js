// The live panel of `python -m sae serve`: type a text, see its tokens coloured by a latent's activation and the
// latents most active on it; steer or ablate latents and see the model's output change. It sits above the
// browser's list and detail (front page and every latent's page) and calls the server's JSON API.
// Everything the server answers (tokens, generated text, reference sentences) is inserted with textContent.
"use strict";
(function () {
  let INFO = null;
  let last = null;        // the latest /api/activations answer
  let colourBy = null;    // the latent the tokens are coloured by
  let seq = 0;            // answers older than the latest request are dropped

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function fmt(x) {
    if (x === 0) return "0";
    const a = Math.abs(x);
    return a >= 0.01 && a < 1e4 ? x.toFixed(a >= 100 ? 1 : 3) : x.toExponential(2);
  }
  function openLatent() {
    const m = /latent=(\d+)/.exec(location.hash);
    return m ? parseInt(m[1], 10) : null;
  }
  async function post(path, body) {
    const r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    let data = null;
    try { data = await r.json(); } catch (e) { data = { error: "HTTP " + r.status }; }
    if (!r.ok) throw new Error((data && data.error) || ("HTTP " + r.status));
    return data;
  }
  function parseLatents(s) {
    return s.split(/[\s,]+/).filter((x) => x !== "").map((x) => parseInt(x, 10)).filter((x) => Number.isInteger(x));
  }

  // --- the panel -----------------------------------------------------------------------------
  const root = el("section", null, "live");
  root.id = "live";
  root.appendChild(el("h2", "try a text"));
  const box = el("textarea");
  box.id = "live-text";
  box.rows = 3;
  box.placeholder = "type any text: its tokens are coloured by the open latent's activation";
  box.setAttribute("aria-label", "text to inspect");
  root.appendChild(box);
  const status = el("div", null, "label");
  status.id = "live-status";
  root.appendChild(status);
  const tokens = el("div", null, "ctx live-tokens");
  tokens.id = "live-tokens";
  root.appendChild(tokens);
  const top = el("div", null, "live-top");
  top.id = "live-top";
  root.appendChild(top);

  const controls = el("div", null, "live-controls");
  const latentsIn = el("input");
  latentsIn.id = "live-latents";
  latentsIn.placeholder = "latents, e.g. 7, 12";
  const strengthIn = el("input");
  strengthIn.id = "live-strength";
  strengthIn.type = "number";
  strengthIn.step = "0.5";
  strengthIn.value = "4";
  const maxIn = el("input");
  maxIn.id = "live-max";
  maxIn.type = "number";
  maxIn.min = "1";
  maxIn.value = "20";
  const steerBtn = el("button", "steer");
  steerBtn.id = "live-steer";
  steerBtn.type = "button";
  const ablateBtn = el("button", "ablate");
  ablateBtn.id = "live-ablate";
  ablateBtn.type = "button";
  [["latents", latentsIn], ["strength", strengthIn], ["max tokens", maxIn]].forEach(([name, input]) => {
    const l = el("label", name + " ");
    l.appendChild(input);
    controls.appendChild(l);
  });
  controls.appendChild(steerBtn);
  controls.appendChild(ablateBtn);
  root.appendChild(controls);
  const result = el("div", null, "live-result");
  result.id = "live-result";
  root.appendChild(result);

  const main = document.querySelector("main");
  if (main && main.parentNode) main.parentNode.insertBefore(root, main);
  else document.body.appendChild(root);

  // --- activations -----------------------------------------------------------------------------
  function renderTokens() {
    tokens.replaceChildren();
    if (!last) return;
    const row = last.latents.find((r) => r.latent === colourBy) || last.latents[0];
    const acts = row ? row.acts : last.tokens.map(() => 0);
    const max = Math.max(1e-9, ...acts.map((a) => Math.abs(a)));
    if (row) tokens.appendChild(el("span", "latent " + row.latent, "val"));
    last.tokens.forEach((t, j) => {
      const s = el("span", t, "tok");
      const a = acts[j];
      if (a > 0) s.style.background = "rgba(255, 120, 0, " + Math.min(1, 0.15 + 0.85 * a / max).toFixed(3) + ")";
      s.title = fmt(a);
      s.dataset.act = String(a);
      tokens.appendChild(s);
    });
  }
  function renderTop() {
    top.replaceChildren();
    if (!last) return;
    top.appendChild(el("span", last.top.length ? "most active latents: " : "no latent is active on this text", "label"));
    last.top.forEach((t) => {
      const a = el("a", "#" + t.latent, "latent-link");
      a.href = "#latent=" + t.latent;
      a.dataset.latent = String(t.latent);
      top.appendChild(a);
      top.appendChild(el("span", " " + fmt(t.max) + " ", "val"));
    });
  }
  async function inspect() {
    const text = box.value;
    const mine = ++seq;
    if (!text.trim()) { last = null; renderTokens(); renderTop(); status.textContent = ""; return; }
    const open = openLatent();
    const started = performance.now();
    status.textContent = "…";
    try {
      const data = await post("/api/activations", { text: text, latents: open === null ? [] : [open] });
      if (mine !== seq) return;
      last = data;
      colourBy = open !== null ? open : (data.top.length ? data.top[0].latent : null);
      renderTokens();
      renderTop();
      const ms = performance.now() - started;
      status.textContent = data.tokens.length + " tokens · " + ms.toFixed(0) + " ms";
      document.body.dataset.liveMs = ms.toFixed(1);
      document.body.dataset.liveDone = String(mine);
    } catch (e) {
      if (mine === seq) status.textContent = "error: " + e.message;
    }
  }
  let timer = null;
  box.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(inspect, 200); });
  window.addEventListener("hashchange", () => {
    const open = openLatent();
    if (open !== null) latentsIn.value = String(open);
    if (box.value.trim()) inspect();
  });

  // --- steering and ablation -------------------------------------------------------------------
  function pair(title) {
    const t = el("table", null, "live-pair");
    const head = el("tr");
    [title, "without", "with"].forEach((h) => head.appendChild(el("th", h)));
    t.appendChild(head);
    return t;
  }
  function row(t, name, a, b) {
    const tr = el("tr");
    tr.appendChild(el("td", name, "label"));
    tr.appendChild(el("td", a, "ctx without"));
    tr.appendChild(el("td", b, "ctx with"));
    t.appendChild(tr);
  }
  function neighbours(t, n) {
    const list = (xs) => xs.map((x) => fmt(x.cosine) + "  " + x.text).join("\n");
    row(t, "nearest references", list(n.without), list(n.with));
  }
  function renderEffect(kind, data) {
    result.replaceChildren();
    const t = pair(kind);
    if (data.kind === "causal") {
      if (data.loss) row(t, "loss on the text", fmt(data.loss.without), fmt(data.loss.with));
      row(t, "greedy", data.greedy.without, data.greedy.with);
      if (data.sampled) row(t, "sampled", data.sampled.without, data.sampled.with);
    } else {
      row(t, "embedding cosine with the clean one", "1", fmt(data.cosine));
      if (data.neighbours) neighbours(t, data.neighbours);
    }
    result.appendChild(t);
    if (data.timed_out) result.appendChild(el("p", "generation stopped at the time limit", "hint"));
    document.body.dataset.liveEffect = kind;
  }
  async function effect(kind) {
    const text = box.value;
    const latents = parseLatents(latentsIn.value || (openLatent() === null ? "" : String(openLatent())));
    if (!text.trim() || !latents.length) { result.replaceChildren(el("p", "type a text and name latents first", "hint")); return; }
    const body = { text: text, latents: latents, max_new_tokens: parseInt(maxIn.value, 10) || 20 };
    if (kind === "steer") body.strengths = latents.map(() => parseFloat(strengthIn.value) || 0);
    result.replaceChildren(el("p", kind + "ing…", "hint"));
    try {
      renderEffect(kind, await post("/api/" + kind, body));
    } catch (e) {
      result.replaceChildren(el("p", "error: " + e.message, "hint"));
    }
  }
  steerBtn.addEventListener("click", () => effect("steer"));
  ablateBtn.addEventListener("click", () => effect("ablate"));

  fetch("/api/info").then((r) => r.json()).then((info) => {
    INFO = info;
    box.maxLength = info.limits.max_text_chars;
    maxIn.max = String(info.limits.max_new_tokens);
    if (info.kind === "encoder") maxIn.parentNode.style.display = "none";
    status.textContent = info.model + " · " + info.hook + " · " + info.n_latents + " latents (" + info.kind + ")";
    const open = openLatent();
    if (open !== null) latentsIn.value = String(open);
    document.body.dataset.live = "1";
  }).catch((e) => { status.textContent = "the live server does not answer: " + e.message; });
})();
