"use strict";
// The review page's script: every element is made from the data with textContent and
// setAttribute (never innerHTML), so no name, series or message can become markup.
// Location hash (for links and tests): all (every card and row, no paging), series=TEXT,
// min=P, max=P, label=0|1|none, decision=0|1, sort=n|s|l|z|p|d, desc.
(function () {
  const t0 = performance.now();
  const D = JSON.parse(document.getElementById("data").textContent);
  const items = D.items;
  const CARDS = 60, ROWS = 100;
  const hash = new Map(location.hash.slice(1).split("&").filter(Boolean).map(kv => {
    const i = kv.indexOf("=");
    return i < 0 ? [decodeURIComponent(kv), ""] : [decodeURIComponent(kv.slice(0, i)), decodeURIComponent(kv.slice(i + 1))];
  }));
  const ALL = hash.has("all");

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) e.setAttribute(k, String(v));
    for (const k of kids) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
    return e;
  }
  const fmt = (x, d) => (x === null || x === undefined) ? "NaN" : Number(x).toFixed(d);
  const decision = d => d === 1 ? "positive" : d === 0 ? "negative" : "—";
  const outcome = it => (it.l === null || it.d === null) ? null
    : it.l === 1 ? (it.d === 1 ? "TP" : "FN") : (it.d === 1 ? "FP" : "TN");

  function copyButton(text) {
    const b = el("button", { class: "copy", type: "button", title: "copy the file name" }, "copy");
    b.addEventListener("click", () => {
      const done = () => { b.textContent = "copied"; setTimeout(() => { b.textContent = "copy"; }, 1200); };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(text).then(done, () => selectText(b.previousSibling));
      } else {
        selectText(b.previousSibling);
      }
    });
    return b;
  }
  function selectText(node) {
    const r = document.createRange();
    r.selectNodeContents(node);
    const s = getSelection();
    s.removeAllRanges();
    s.addRange(r);
  }
  function thumb(it, cls) {
    if (it.t) return el("img", { src: it.t, loading: "lazy", decoding: "async", class: cls || null,
      alt: "axial, coronal and sagittal mid-slices of " + it.n });
    return el("div", { class: "noimg" }, "no image: " + (it.e || "no patch file"));
  }

  function card(i, section) {
    const it = items[i];
    const o = outcome(it);
    const cap = el("figcaption", null,
      el("div", null, el("code", { class: "name" }, it.n), copyButton(it.n)),
      el("div", null, "p ", el("b", null, fmt(it.p, 4)), " · logit ", fmt(it.z, 3), " · ",
        el("span", { class: it.d === 1 ? "pos" : it.d === 0 ? "neg" : null }, decision(it.d))),
      el("div", null, "label ", it.l === null ? "—" : String(it.l), o ? " · " + o : ""),
      it.s ? el("div", null, "series ", it.s) : null,
      it.c ? el("div", null, "centre (" + it.c.map(v => fmt(v, 1)).join(", ") + ") mm") : null,
      it.e ? el("div", { class: "problem" }, it.e) : null);
    return el("figure", { class: "card", "data-name": it.n, "data-section": section, "data-index": i }, thumb(it), cap);
  }

  function header() {
    const h = document.getElementById("head");
    h.append(el("h1", null, D.title));
    const dl = el("dl");
    const row = (k, v) => { if (v !== null && v !== undefined && v !== "") dl.append(el("dt", null, k), el("dd", null, v)); };
    row("scores", D.source);
    row("model sha256", D.model_sha256);
    row("patches", String(items.length));
    row("score shown", D.score_name);
    row("operating point", D.operating_point);
    row("slices", "axial (anterior up, patient's right on the left) · coronal (superior up) · sagittal (superior up, anterior on the left); lung window L −600 / W 1500 HU");
    row("scale", D.bar_mm ? "white bar = " + D.bar_mm + " mm (voxel " + D.spacing_mm + " mm)" : "unknown (no voxel size)");
    row("made by", D.tool);
    h.append(dl);
    if (D.warnings.length) h.append(el("ul", { class: "warn", id: "warnings" }, ...D.warnings.map(w => el("li", null, w))));
  }

  function section(s) {
    const grid = el("div", { class: "grid" });
    const more = el("button", { class: "more", type: "button" });
    let shown = 0;
    const step = () => {
      const n = ALL ? s.items.length : Math.min(s.items.length, shown + CARDS);
      const frag = document.createDocumentFragment();
      for (let k = shown; k < n; k++) frag.append(card(s.items[k], s.id));
      grid.append(frag);
      shown = n;
      more.textContent = "show " + Math.min(CARDS, s.items.length - shown) + " more (" + shown + " of " + s.items.length + " shown)";
      more.hidden = shown >= s.items.length;
    };
    more.addEventListener("click", step);
    step();
    return el("section", { id: s.id, "data-count": s.items.length },
      el("h2", null, s.title + " (" + s.items.length + ")"), el("p", { class: "note" }, s.note), grid, more);
  }

  function charts() {
    if (!D.charts.length) return null;
    return el("section", { id: "charts" }, el("h2", null, "Charts of the run"),
      el("div", { class: "charts" }, ...D.charts.map(c => el("figure", null, el("img", { src: c.src, alt: c.title }), el("figcaption", null, c.title)))));
  }

  // The table of every patch: filters, sort, pages.
  const COLS = [["t", "image"], ["n", "patch"], ["s", "series"], ["l", "label"], ["z", "logit"], ["p", "p"], ["d", "decision"], ["c", "centre (mm)"]];
  const state = {
    series: hash.get("series") || "", min: hash.get("min") || "", max: hash.get("max") || "",
    label: hash.get("label") || "", decision: hash.get("decision") || "",
    sort: hash.get("sort") || "p", desc: hash.has("desc") || !hash.has("sort"), page: 0,
  };
  function filtered() {
    const lo = state.min === "" ? -Infinity : Number(state.min), hi = state.max === "" ? Infinity : Number(state.max);
    const sub = state.series.toLowerCase();
    const keep = [];
    for (let i = 0; i < items.length; i++) {
      const it = items[i];
      if (sub && !(it.s || "").toLowerCase().includes(sub)) continue;
      if ((state.min !== "" || state.max !== "") && (it.p === null || it.p < lo || it.p > hi)) continue;
      if (state.label === "none" ? it.l !== null : state.label !== "" && it.l !== Number(state.label)) continue;
      if (state.decision !== "" && it.d !== Number(state.decision)) continue;
      keep.push(i);
    }
    const k = state.sort, sign = state.desc ? -1 : 1;
    keep.sort((a, b) => {
      const x = items[a][k], y = items[b][k];
      if (x === null || x === undefined) return (y === null || y === undefined) ? a - b : 1;
      if (y === null || y === undefined) return -1;
      const c = typeof x === "string" ? (x < y ? -1 : x > y ? 1 : 0) : x - y;
      return c !== 0 ? sign * c : items[a].n < items[b].n ? -1 : items[a].n > items[b].n ? 1 : 0;
    });
    return keep;
  }
  function table() {
    const tbody = el("tbody");
    const info = el("span", { id: "table-info" });
    const prev = el("button", { type: "button" }, "◀ previous"), next = el("button", { type: "button" }, "next ▶");
    const ths = COLS.map(([k, name]) => {
      const th = el("th", { "data-key": k, scope: "col" }, name);
      if (k !== "t" && k !== "c") th.addEventListener("click", () => {
        state.desc = state.sort === k ? !state.desc : (k === "p" || k === "z");
        state.sort = k; state.page = 0; draw();
      });
      return th;
    });
    function draw() {
      const rows = filtered();
      const pages = Math.max(1, Math.ceil(rows.length / ROWS));
      state.page = Math.min(state.page, pages - 1);
      const from = ALL ? 0 : state.page * ROWS, to = ALL ? rows.length : Math.min(rows.length, from + ROWS);
      const frag = document.createDocumentFragment();
      for (let k = from; k < to; k++) {
        const it = items[rows[k]];
        frag.append(el("tr", { "data-name": it.n },
          el("td", null, thumb(it)), el("td", null, el("code", { class: "name" }, it.n), copyButton(it.n)),
          el("td", null, it.s || ""), el("td", null, it.l === null ? "" : String(it.l)),
          el("td", { class: "num" }, fmt(it.z, 3)), el("td", { class: "num" }, fmt(it.p, 4)),
          el("td", { class: it.d === 1 ? "pos" : it.d === 0 ? "neg" : null }, decision(it.d)),
          el("td", { class: "num" }, it.c ? it.c.map(v => fmt(v, 1)).join(", ") : "")));
      }
      tbody.replaceChildren(frag);
      for (const th of ths) {
        if (th.dataset.key === state.sort) th.setAttribute("aria-sort", state.desc ? "descending" : "ascending");
        else th.removeAttribute("aria-sort");
      }
      info.textContent = rows.length ? "rows " + (from + 1) + "–" + to + " of " + rows.length : "no rows";
      info.dataset.rows = rows.length;
      prev.disabled = ALL || state.page === 0;
      next.disabled = ALL || state.page >= pages - 1;
    }
    prev.addEventListener("click", () => { state.page--; draw(); });
    next.addEventListener("click", () => { state.page++; draw(); });
    const input = (key, label, attrs) => {
      const i = el("input", Object.assign({ value: state[key] }, attrs));
      i.addEventListener("input", () => { state[key] = i.value.trim(); state.page = 0; draw(); });
      return el("label", null, label, i);
    };
    const select = (key, label, opts) => {
      const s = el("select", null, ...opts.map(([v, t]) => el("option", { value: v }, t)));
      s.value = state[key];
      s.addEventListener("change", () => { state[key] = s.value; state.page = 0; draw(); });
      return el("label", null, label, s);
    };
    const filters = el("div", { class: "filters" },
      input("series", "series contains", { type: "search", id: "f-series" }),
      input("min", "p from", { type: "number", step: "any", min: 0, max: 1, id: "f-min" }),
      input("max", "p to", { type: "number", step: "any", min: 0, max: 1, id: "f-max" }),
      select("label", "label", [["", "any"], ["1", "1"], ["0", "0"], ["none", "none"]]),
      select("decision", "decision", [["", "any"], ["1", "positive"], ["0", "negative"]]));
    draw();
    return el("section", { id: "table" }, el("h2", null, "All patches (" + items.length + ")"),
      el("p", { class: "note" }, "Click a column to sort; filters apply at once. " + ROWS + " rows a page."),
      filters, el("div", { class: "pager" }, prev, info, next),
      el("table", null, el("thead", null, el("tr", null, ...ths)), tbody));
  }

  header();
  const main = document.getElementById("main"), nav = document.getElementById("nav");
  const parts = [];
  for (const s of D.sections) parts.push([s.id, s.title, s.items.length, section(s)]);
  const ch = charts();
  if (ch) parts.push(["charts", "Charts", null, ch]);
  parts.push(["table", "All patches", items.length, table()]);
  for (const [id, title, count, node] of parts) {
    main.append(node);
    nav.append(el("a", { href: "#" + id, "data-target": id }, title, count === null ? "" : el("span", null, " " + count)));
  }
  // Links inside the page do not change the hash state (so a reload keeps the filters).
  nav.addEventListener("click", e => {
    const a = e.target.closest("a");
    if (!a) return;
    e.preventDefault();
    document.getElementById(a.dataset.target).scrollIntoView();
  });
  document.body.dataset.renderMs = (performance.now() - t0).toFixed(1);
  document.body.dataset.ready = "1";
})();
