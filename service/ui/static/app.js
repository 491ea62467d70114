// vitserve /ui: one image through the selected models, and every model's accuracy against its cost.
// Plain JavaScript, no build step, no dependency; only the public API: GET v1/models, POST v1/compare,
// GET metrics. URLs are relative to the page (served at <base>/ui), so the page works under a proxy prefix.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  // the copies export writes next to a model (export/build.py COPY_SUFFIX), longest suffix first
  const COPIES = [
    ["-openvino-bf16", "OpenVINO bf16"],
    ["-openvino", "OpenVINO f32"],
    ["-int8", "int8 (dynamic)"],
    ["-fp16", "fp16"],
  ];
  const METRICS = {
    compute: {
      name: "vitserve_compute_duration_seconds",
      what: "compute time per batch",
      series: () => true,
    },
    request: {
      name: "vitserve_request_duration_seconds",
      what: "whole-request time of classify and v2 infer requests (answered 200)",
      series: (labels) => labels.code === "200" && (labels.endpoint === "v1_classify" || labels.endpoint === "v2_infer"),
    },
  };
  const STATUS_TEXT = {
    400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 408: "Request Timeout", 413: "Content Too Large",
    415: "Unsupported Media Type", 431: "Request Header Fields Too Large", 499: "Client Closed Request",
    500: "Internal Server Error", 503: "Service Unavailable", 504: "Gateway Timeout",
  };

  const $ = (id) => document.getElementById(id);
  const state = {
    models: [],            // /v1/models' entries
    selected: null,        // Set of model names ticked (null until the first list: then the defaults)
    metricsText: null,     // the last /metrics
    baseline: null,        // {time, text}: the first /metrics this page read ("since this page opened")
    latency: new Map(),    // model -> {p50, lo, hi, count} in seconds for the chosen metric and window
    sort: { key: "name", dir: 1 },
    dataset: null,
  };

  // ---------- helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (v === true) node.setAttribute(k, "");
      else node.setAttribute(k, String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(x, digits) {
    return x === null || x === undefined || Number.isNaN(x) ? "—" : Number(x).toFixed(digits);
  }

  function pct(x) {
    return x === null || x === undefined ? "—" : `${(100 * x).toFixed(1)}%`;
  }

  function ms(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const v = seconds * 1000;
    return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  }

  function precisionOf(name) {
    for (const [suffix, label] of COPIES) if (name.endsWith(suffix)) return label;
    return "fp32";
  }

  function runtimeOf(m) {
    if (!m.provider) return m.state === "ready" ? "—" : "(not loaded)";
    if (m.provider.startsWith("OpenVINO")) return `OpenVINO · ${m.provider.slice("OpenVINO".length).trim()}`;
    if (m.provider.endsWith("ExecutionProvider")) return `ONNX Runtime · ${m.provider}`;
    return m.provider;
  }

  function datasetKey(m) {
    const ev = m.evaluation;
    if (!ev) return null;
    if (!ev.dataset) return "unknown dataset (manifest without a dataset identity)";
    return `${ev.dataset.name}@${ev.dataset.fingerprint.slice(0, 12)}`;  // DatasetIdentity.key
  }

  // The API's own words: "<status> <reason>: <its error message>".
  async function apiError(response) {
    let message = "";
    const text = await response.text();
    try {
      const body = JSON.parse(text);
      message = typeof body.error === "string" ? body.error : typeof body.detail === "string" ? body.detail : text;
    } catch (_) {
      message = text;
    }
    const reason = response.statusText || STATUS_TEXT[response.status] || "";
    return `${response.status}${reason ? " " + reason : ""}: ${message || "(no message)"}`;
  }

  function showError(text) {
    $("error").textContent = text || "";
  }

  // ---------- /metrics: Prometheus histograms -> p50 per model

  const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

  function parseLabels(text) {
    const labels = {};
    if (!text) return labels;
    for (const m of text.matchAll(LABEL)) labels[m[1]] = m[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    return labels;
  }

  // model -> Map(le -> cumulative count), summed over the series the metric counts (every version / endpoint)
  function histograms(text, metric) {
    const out = new Map();
    if (!text) return out;
    const bucket = `${metric.name}_bucket`;
    for (const line of text.split("\n")) {
      if (!line.startsWith(bucket)) continue;
      const m = LINE.exec(line);
      if (!m || m[1] !== bucket) continue;
      const labels = parseLabels(m[2]);
      if (!labels.model || !metric.series(labels)) continue;
      const le = labels.le === "+Inf" ? Infinity : Number(labels.le);
      const perModel = out.get(labels.model) || new Map();
      perModel.set(le, (perModel.get(le) || 0) + Number(m[3]));
      out.set(labels.model, perModel);
    }
    return out;
  }

  // As Prometheus' histogram_quantile: the bucket holding the quantile, linear inside it (from 0 for the first).
  function quantile(q, buckets) {
    const bounds = [...buckets.keys()].sort((a, b) => a - b);
    const total = buckets.get(Infinity) ?? (bounds.length ? buckets.get(bounds[bounds.length - 1]) : 0);
    if (!total || total <= 0) return null;
    const rank = q * total;
    let prevBound = 0;
    let prevCount = 0;
    for (const b of bounds) {
      const c = buckets.get(b);
      if (c >= rank) {
        if (b === Infinity) return { p50: prevBound, lo: prevBound, hi: Infinity, count: total };
        const inside = c - prevCount;
        const p = inside > 0 ? prevBound + ((b - prevBound) * (rank - prevCount)) / inside : b;
        return { p50: p, lo: prevBound, hi: b, count: total };
      }
      prevBound = b;
      prevCount = c;
    }
    return null;
  }

  function computeLatency() {
    const metric = METRICS[$("metric-select").value] || METRICS.compute;
    const windowed = $("window-select").value === "page" && state.baseline;
    const now = histograms(state.metricsText, metric);
    const before = windowed ? histograms(state.baseline.text, metric) : new Map();
    state.latency = new Map();
    for (const [model, buckets] of now) {
      const base = before.get(model);
      const delta = new Map();
      for (const [le, c] of buckets) delta.set(le, c - (base ? base.get(le) || 0 : 0));
      const q = quantile(0.5, delta);
      if (q) state.latency.set(model, q);
    }
    const since = windowed
      ? `since this page opened (${new Date(state.baseline.time).toLocaleTimeString()}, ` +
        `${Math.round((Date.now() - state.baseline.time) / 1000)} s ago)`
      : "since the server started (every process it ran)";
    $("window-note").textContent =
      `p50 latency = the median ${metric.what}, from the server's own /metrics histogram ${metric.name} ` +
      `${since}; estimated as Prometheus' histogram_quantile does (linear inside the bucket that holds the ` +
      "median: the bucket's bounds are shown in the table). Models with no observations in the window have no " +
      "latency point.";
  }

  // ---------- Pareto fronts (per dataset identity): lower cost, higher accuracy

  function paretoFront(points) {
    // points: [{x, y, name}]; a point is on the front when no other has x <= and y >= with one strictly better
    const sorted = [...points].sort((a, b) => a.x - b.x || b.y - a.y);
    const front = [];
    let best = -Infinity;
    for (const p of sorted) {
      const last = front[front.length - 1];
      if (p.y > best || (last && p.x === last.x && p.y === last.y)) {  // a tie with a front point is on it too
        front.push(p);
        best = p.y;
      }
    }
    return front;
  }

  function costPoints(models, axis) {
    const pts = [];
    for (const m of models) {
      if (!m.evaluation) continue;
      const x = axis === "latency" ? state.latency.get(m.name)?.p50 : m.flops !== null && m.flops !== undefined
        ? m.flops / 1e9 : undefined;
      if (x === undefined || x === null) continue;
      pts.push({ x, y: m.evaluation.top1, name: m.name });
    }
    return pts;
  }

  function fronts() {
    // model -> {latency: bool, flops: bool}; each dataset identity alone
    const groups = new Map();
    for (const m of state.models) {
      const key = datasetKey(m);
      if (key === null) continue;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(m);
    }
    const on = new Map();
    for (const group of groups.values()) {
      for (const axis of ["latency", "flops"]) {
        for (const p of paretoFront(costPoints(group, axis))) {
          on.set(p.name, { ...(on.get(p.name) || {}), [axis]: true });
        }
      }
    }
    return on;
  }

  // ---------- the models table

  const COLUMNS = [
    { key: "select", label: "Compare", sortable: false },
    { key: "name", label: "Model", value: (m) => m.name },
    { key: "state", label: "State", value: (m) => m.state },
    { key: "runtime", label: "Runtime · provider", value: (m) => runtimeOf(m) },
    { key: "precision", label: "Precision", value: (m) => precisionOf(m.name) },
    { key: "variants", label: "Variants", value: (m) => (m.variants || []).join("+") || "vanilla" },
    { key: "dataset", label: "Dataset", value: (m) => datasetKey(m) || "" },
    { key: "top1", label: "Top-1", num: true, value: (m) => m.evaluation?.top1 ?? null },
    { key: "top5", label: "Top-5", num: true, value: (m) => m.evaluation?.top5 ?? null },
    { key: "latency", label: "p50 ms", num: true, value: (m) => state.latency.get(m.name)?.p50 ?? null },
    { key: "flops", label: "GFLOPs", num: true, value: (m) => (m.flops === null || m.flops === undefined ? null : m.flops / 1e9) },
    { key: "params", label: "Params (M)", num: true, value: (m) => (m.parameters ? m.parameters / 1e6 : null) },
    { key: "pareto", label: "Pareto front", value: (m) => paretoLabel(state.front.get(m.name)) },
  ];

  function paretoLabel(on) {
    if (!on) return "";
    return [on.latency ? "latency" : "", on.flops ? "GFLOPs" : ""].filter(Boolean).join(", ");
  }

  function defaultSelected(m) {
    return m.state === "ready" && precisionOf(m.name) === "fp32";
  }

  function cellId(name) {
    return "select-" + name.replace(/[^A-Za-z0-9_-]/g, (c) => `_${c.charCodeAt(0).toString(16)}`);
  }

  function renderModelsHead() {
    const row = $("models-table").tHead.rows[0];
    row.replaceChildren();
    for (const col of COLUMNS) {
      const th = el("th", { scope: "col", class: col.num ? "num" : null });
      if (col.sortable === false) th.textContent = col.label;
      else {
        const button = el("button", { type: "button", class: "sort", "data-key": col.key, text: col.label });
        button.addEventListener("click", () => {
          state.sort = { key: col.key, dir: state.sort.key === col.key ? -state.sort.dir : 1 };
          renderModels();
        });
        th.append(button);
        if (state.sort.key === col.key) th.setAttribute("aria-sort", state.sort.dir > 0 ? "ascending" : "descending");
      }
      row.append(th);
    }
  }

  function sortedModels() {
    const col = COLUMNS.find((c) => c.key === state.sort.key) || COLUMNS[1];
    const dir = state.sort.dir;
    return [...state.models].sort((a, b) => {
      const va = col.value(a);
      const vb = col.value(b);
      if (va === null || va === "") return vb === null || vb === "" ? a.name.localeCompare(b.name) : 1;  // empties last
      if (vb === null || vb === "") return -1;
      const c = typeof va === "number" && typeof vb === "number" ? va - vb : String(va).localeCompare(String(vb));
      return c !== 0 ? dir * c : a.name.localeCompare(b.name);
    });
  }

  function renderModels() {
    const active = document.activeElement;
    const focusedSort = active?.classList?.contains("sort") ? active.dataset.key : null;
    const focusedBox = !focusedSort && active?.type === "checkbox" ? active.id : null;
    state.front = fronts();
    renderModelsHead();
    const body = $("models-table").tBodies[0];
    body.replaceChildren();
    for (const m of sortedModels()) {
      const tr = el("tr", { "data-model": m.name });
      const id = cellId(m.name);
      const box = el("input", { type: "checkbox", id, "aria-label": `compare ${m.name}` });
      box.checked = state.selected.has(m.name);
      box.addEventListener("change", () => {
        if (box.checked) state.selected.add(m.name);
        else state.selected.delete(m.name);
      });
      tr.append(el("td", {}, box));
      tr.append(el("th", { scope: "row" }, el("label", { for: id, text: m.name })));
      const st = el("td", { class: `state state-${m.state}` }, m.state);
      const why = m.reason || (m.state === "ready" ? m.last_error && `last batch failure: ${m.last_error}` : null);
      if (why) st.append(el("span", { class: "reason", text: why }));
      if (m.provider_note) st.append(el("span", { class: "reason", text: m.provider_note }));
      tr.append(st);
      tr.append(el("td", { text: runtimeOf(m) }));
      tr.append(el("td", { text: precisionOf(m.name) }));
      tr.append(el("td", { text: (m.variants || []).join("+") || "vanilla" }));
      tr.append(el("td", { text: datasetKey(m) || "no evaluation reported" }));
      tr.append(el("td", { class: "num", text: pct(m.evaluation?.top1) }));
      tr.append(el("td", { class: "num", text: pct(m.evaluation?.top5) }));
      const lat = state.latency.get(m.name);
      const latCell = el("td", { class: "num", "data-p50-ms": lat ? (lat.p50 * 1000).toFixed(4) : null },
        lat ? ms(lat.p50) : "—");
      if (lat) {
        latCell.append(el("span", { class: "reason",
          text: `bucket ${ms(lat.lo)}–${lat.hi === Infinity ? "∞" : ms(lat.hi)}, ${Math.round(lat.count)} obs.` }));
      }
      tr.append(latCell);
      tr.append(el("td", { class: "num", text: m.flops === null || m.flops === undefined ? "—" : fmt(m.flops / 1e9, 5) }));
      tr.append(el("td", { class: "num", text: m.parameters ? fmt(m.parameters / 1e6, 3) : "—" }));
      tr.append(el("td", { text: paretoLabel(state.front.get(m.name)) }));
      body.append(tr);
    }
    // the rows were rebuilt: keep the keyboard where it was
    const again = focusedSort ? document.querySelector(`#models-table button.sort[data-key="${CSS.escape(focusedSort)}"]`)
      : focusedBox ? document.getElementById(focusedBox) : null;
    if (again) again.focus();
  }

  // ---------- the scatter plots (inline SVG)

  // about n round values between lo and hi, and the decimals that tell them apart
  function ticks(lo, hi, n) {
    const span = hi - lo || Math.abs(hi) || 1;
    const mag = 10 ** Math.floor(Math.log10(span / n));
    const step = [1, 2, 2.5, 5, 10].map((s) => s * mag).find((s) => span / s <= n) || 10 * mag;
    const values = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) values.push(Number(t.toPrecision(12)));
    const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9)) + (String(step / mag).includes(".") ? 1 : 0);
    return { values, decimals };
  }

  function drawPlot(container, points, xLabel, xScale, xFmt, title) {
    // points' x in the data's unit; the axis shows x * xScale (seconds -> ms)
    const W = 560, H = 340, L = 58, R = 16, T = 14, B = 44;
    const ident = container.id;
    const root = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-labelledby": `${ident}-title ${ident}-desc` });
    root.append(svg("title", { id: `${ident}-title` }, title));
    const front = paretoFront(points);
    const onFront = new Set(front.map((p) => p.name));
    const desc = points.length
      ? `${points.length} models. Pareto front: ${front.map((p) => p.name).join(", ")}.`
      : "No model to plot.";
    root.append(svg("desc", { id: `${ident}-desc` }, desc));
    if (!points.length) {
      root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" },
        "no evaluated model with this cost in the window"));
      container.replaceChildren(root);
      return;
    }
    let [x0, x1] = [Math.min(...points.map((p) => p.x)), Math.max(...points.map((p) => p.x))];
    let [y0, y1] = [Math.min(...points.map((p) => p.y)), Math.max(...points.map((p) => p.y))];
    const xPad = (x1 - x0) * 0.08 || Math.abs(x1) * 0.1 || 1;
    const yPad = (y1 - y0) * 0.1 || 0.01;
    x0 = Math.max(0, x0 - xPad); x1 += xPad;
    y0 = Math.max(0, y0 - yPad); y1 = Math.min(1, y1 + yPad);
    if (y1 <= y0) y1 = y0 + 0.01;
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    const axes = svg("g", { class: "axis" });
    const xt = ticks(x0 * xScale, x1 * xScale, 6);
    for (const v of xt.values) {
      const t = v / xScale;
      axes.append(svg("line", { x1: sx(t), x2: sx(t), y1: T, y2: H - B, class: "grid" }));
      axes.append(svg("text", { x: sx(t), y: H - B + 14, "text-anchor": "middle" }, v.toFixed(xt.decimals)));
    }
    const yt = ticks(y0 * 100, y1 * 100, 5);
    for (const v of yt.values) {
      const t = v / 100;
      axes.append(svg("line", { x1: L, x2: W - R, y1: sy(t), y2: sy(t), class: "grid" }));
      axes.append(svg("text", { x: L - 6, y: sy(t) + 4, "text-anchor": "end" }, `${v.toFixed(yt.decimals)}%`));
    }
    axes.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B }));
    axes.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B }));
    axes.append(svg("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle" }, xLabel));
    axes.append(svg("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle",
      transform: `rotate(-90 14 ${(T + H - B) / 2})` }, "top-1 accuracy"));
    root.append(axes);
    // the front as a staircase: from each front point right to the next one's cost, then up
    if (front.length) {
      let d = `M ${sx(front[0].x)} ${sy(front[0].y)}`;
      for (let i = 1; i < front.length; i++) d += ` H ${sx(front[i].x)} V ${sy(front[i].y)}`;
      d += ` H ${sx(x1)}`;
      root.append(svg("path", { d, class: "pareto" }));
    }
    const g = svg("g", { class: "points" });
    const placed = [];  // label boxes already drawn: a label that would overlap one moves down a line
    for (const p of [...points].sort((a, b) => b.y - a.y || a.x - b.x)) {
      const c = svg("circle", { cx: sx(p.x), cy: sy(p.y), r: 5, class: onFront.has(p.name) ? "point front" : "point",
        "data-model": p.name });
      c.append(svg("title", {}, `${p.name}: top-1 ${pct(p.y)}, ${xLabel} ${xFmt(p.x)}`));
      g.append(c);
      const width = 6.2 * p.name.length;
      const left = sx(p.x) + 7 + width > W - R;
      const x = left ? sx(p.x) - 7 - width : sx(p.x) + 7;
      let y = sy(p.y) - 6;
      while (placed.some((b) => Math.abs(b.y - y) < 12 && x < b.x + b.w && b.x < x + width)) y += 12;
      placed.push({ x, y, w: width });
      g.append(svg("text", { x, y }, p.name));
    }
    root.append(g);
    container.replaceChildren(root);
  }

  function renderPlots() {
    const select = $("dataset-select");
    const groups = new Map();
    for (const m of state.models) {
      const key = datasetKey(m);
      if (key !== null) groups.set(key, (groups.get(key) || 0) + 1);
    }
    const keys = [...groups.keys()].sort((a, b) => groups.get(b) - groups.get(a) || a.localeCompare(b));
    if (!state.dataset || !groups.has(state.dataset)) state.dataset = keys[0] || null;
    const had = [...select.options].map((o) => o.value).join("\n");
    if (had !== keys.join("\n")) {
      select.replaceChildren(...keys.map((k) => el("option", { value: k, text: `${k} (${groups.get(k)} models)` })));
    }
    if (!keys.length) select.replaceChildren(el("option", { value: "", text: "no model is evaluated" }));
    select.value = state.dataset || "";
    const models = state.models.filter((m) => datasetKey(m) === state.dataset);
    drawPlot($("plot-latency"), costPoints(models, "latency"), "p50 latency (ms)", 1000, (v) => ms(v),
      `Top-1 accuracy on ${state.dataset || "no dataset"} against p50 latency`);
    drawPlot($("plot-flops"), costPoints(models, "flops"), "GFLOPs per image", 1, (v) => fmt(v, v < 0.1 ? 5 : 3),
      `Top-1 accuracy on ${state.dataset || "no dataset"} against GFLOPs per image`);
    const others = state.models.filter((m) => datasetKey(m) !== state.dataset);
    const unevaluated = others.filter((m) => !m.evaluation).map((m) => m.name);
    const elsewhere = others.filter((m) => m.evaluation).map((m) => `${m.name} (${datasetKey(m)})`);
    const parts = [];
    if (unevaluated.length) parts.push(`no evaluation reported: ${unevaluated.join(", ")}`);
    if (elsewhere.length) parts.push(`evaluated on another dataset (pick it above): ${elsewhere.join(", ")}`);
    $("not-plotted").textContent = parts.length ? `Not plotted: ${parts.join("; ")}.` : "";
  }

  // ---------- loading the models and metrics

  let pollTimer = null;

  async function refresh() {
    let models;
    try {
      const r = await fetch("v1/models", { headers: { Accept: "application/json" }, cache: "no-store" });
      if (!r.ok) {
        $("server-status").textContent = `Cannot list the models: ${await apiError(r)}`;
        return;
      }
      models = (await r.json()).models;
    } catch (e) {
      $("server-status").textContent = `Cannot reach the server: ${e.message}`;
      return;
    }
    try {
      const r = await fetch("metrics", { cache: "no-store" });
      if (r.ok) {
        state.metricsText = await r.text();
        if (!state.baseline) state.baseline = { time: Date.now(), text: state.metricsText };
      }
    } catch (_) { /* latency stays as it was */ }
    state.models = models;
    if (state.selected === null) state.selected = new Set(models.filter(defaultSelected).map((m) => m.name));
    const counts = {};
    for (const m of models) counts[m.state] = (counts[m.state] || 0) + 1;
    $("server-status").textContent = `${models.length} models: ` +
      Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ") + ".";
    computeLatency();
    renderModels();
    renderPlots();
    clearTimeout(pollTimer);
    if (models.some((m) => m.state === "loading" || m.state === "unloading")) pollTimer = setTimeout(refresh, 2000);
  }

  // ---------- compare

  function renderResults(data) {
    const table = $("results");
    const body = table.tBodies[0];
    body.replaceChildren();
    const ok = data.results.filter((r) => r.status === 200 && r.timings);
    const best = {
      score: Math.max(...ok.map((r) => r.predictions[0]?.score ?? -1)),
      queue_ms: Math.min(...ok.map((r) => r.timings.queue_ms)),
      preprocess_ms: Math.min(...ok.map((r) => r.timings.preprocess_ms)),
      compute_ms: Math.min(...ok.map((r) => r.timings.compute_ms)),
      total_ms: Math.min(...ok.map((r) => r.timings.total_ms)),
    };
    const cell = (value, text, key) => {
      const win = ok.length > 1 && value === best[key];
      const td = el("td", { class: win ? "num best" : "num" }, text);
      if (win) td.append(el("span", { "aria-hidden": "true", text: " ★" }), el("span", { class: "sr-only", text: " (best)" }));
      return td;
    };
    for (const r of data.results) {
      const tr = el("tr", { "data-model": r.model, class: r.status === 200 ? null : "failed-row" });
      tr.append(el("th", { scope: "row", text: r.version ? `${r.model} v${r.version}` : r.model }));
      if (r.status === 200 && r.predictions && r.timings) {
        const top = r.predictions[0];
        tr.append(el("td", { class: "top1", "data-label": top.label, text: top.label }));
        tr.append(cell(top.score, fmt(top.score, 4), "score"));
        tr.append(el("td", { text: r.predictions.slice(1).map((p) => `${p.label} ${fmt(p.score, 3)}`).join(", ") || "—" }));
        for (const key of ["queue_ms", "preprocess_ms", "compute_ms", "total_ms"]) {
          tr.append(cell(r.timings[key], fmt(r.timings[key], 2), key));
        }
        tr.append(el("td", { class: "num", text: String(r.timings.batch_size) }));
        tr.append(el("td", { text: "200" }));
      } else {
        tr.append(el("td", { class: "top1", text: "—" }));
        for (let i = 0; i < 7; i++) tr.append(el("td", { class: i === 1 ? null : "num", text: "—" }));
        const reason = STATUS_TEXT[r.status] ? ` ${STATUS_TEXT[r.status]}` : "";
        tr.append(el("td", { class: "status-error", text: `${r.status}${reason}: ${r.error || ""}` }));
      }
      body.append(tr);
    }
    table.hidden = false;
    const agree = data.top1_agree === null ? "no model answered" : data.top1_agree ? "every model that answered agrees on the top-1"
      : "the models disagree on the top-1";
    const same = data.same_dataset === false ? " Their accuracies come from different datasets: not comparable." : "";
    $("compare-status").textContent = `${ok.length} of ${data.results.length} models answered in ` +
      `${fmt(data.total_ms, 1)} ms; ${agree}.${same}`;
  }

  async function compare(event) {
    if (event) event.preventDefault();
    const file = $("image-input").files[0];
    showError("");
    if (!file) {
      showError("Pick an image first.");
      return;
    }
    const names = state.models.filter((m) => state.selected?.has(m.name)).map((m) => m.name);
    if (!names.length) {
      showError("Tick at least one model in the Models table.");
      return;
    }
    const topK = Math.max(1, Math.floor(Number($("top-k").value)) || 1);
    const form = new FormData();
    form.append("image", file, file.name);
    const headers = { Accept: "application/json" };
    const key = $("api-key").value.trim();
    if (key) headers["X-API-Key"] = key;
    const button = $("compare-button");
    button.disabled = true;
    $("compare-status").textContent = `Sending ${file.name} to ${names.length} models…`;
    try {
      const url = `v1/compare?models=${encodeURIComponent(names.join(","))}&top_k=${topK}`;
      const r = await fetch(url, { method: "POST", body: form, headers });
      if (!r.ok) {
        const text = await apiError(r);
        showError(text);
        $("compare-status").textContent = "The server refused the image.";
        $("results").hidden = true;
        return;
      }
      renderResults(await r.json());
    } catch (e) {
      showError(`Cannot reach the server: ${e.message}`);
      $("compare-status").textContent = "";
    } finally {
      button.disabled = false;
    }
    await refresh();  // the new observations' latency
  }

  function preview(file) {
    const img = $("preview");
    if (img.src) URL.revokeObjectURL(img.src);
    if (file && file.type.startsWith("image/")) {
      img.src = URL.createObjectURL(file);
      img.alt = `the picked image, ${file.name}`;
      img.hidden = false;
    } else {
      img.removeAttribute("src");
      img.alt = "";
      img.hidden = true;
    }
  }

  function init() {
    $("compare-form").addEventListener("submit", compare);
    $("image-input").addEventListener("change", () => {
      preview($("image-input").files[0]);
      if ($("image-input").files.length) compare();
    });
    const zone = $("drop-zone");
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      if (e.dataTransfer?.files?.length) {
        $("image-input").files = e.dataTransfer.files;
        preview(e.dataTransfer.files[0]);
        compare();
      }
    });
    $("refresh-button").addEventListener("click", refresh);
    $("dataset-select").addEventListener("change", () => { state.dataset = $("dataset-select").value; renderPlots(); });
    for (const id of ["metric-select", "window-select"]) {
      $(id).addEventListener("change", () => { computeLatency(); renderModels(); renderPlots(); });
    }
    refresh();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
