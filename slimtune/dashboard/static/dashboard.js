// slimtune dashboard: views of the studies of one Optuna storage, drawn with plotly.js.
// Live mode reads the server's JSON API and polls /api/version to redraw what changed;
// report mode reads the same answers from a snapshot embedded in the page.
(function () {
  "use strict";
  const CFG = window.SLIMTUNE || { mode: "live", poll_ms: 1500 };
  const LIVE = CFG.mode === "live";
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const SYMBOLS = ["circle", "square", "diamond", "triangle-up", "triangle-down", "pentagon", "hexagon", "star-square"];
  const RESOURCES = { flops: "FLOPs", params: "parameters", size: "size", latency: "latency", memory: "peak memory" };
  const ABS_UNIT = { flops: "MACs per sample", params: "count", size: "bytes", latency: "ms", memory: "bytes" };
  const PLOT_CONFIG = { displaylogo: false, responsive: true };

  const S = {
    studies: [], byName: {}, version: null,
    trials: {}, progress: {}, sensitivity: null,
    selected: null, selectionTouched: false,
    x: null, y: null, color: "study", scale: "rel", progressX: "number",
    view: "pareto", trial: null, rendering: false, again: false,
  };
  window.slimtuneState = S;

  // ------------------------------------------------------------------ data
  async function api(path) {
    if (!LIVE) {
      const key = "/" + path.replace(/^\//, "");
      if (!(key in CFG.snapshot)) throw new Error(`not in this report: ${decodeURIComponent(key)}`);
      return CFG.snapshot[key];
    }
    const res = await fetch(path, { cache: "no-store" });
    let body = null;
    try { body = await res.json(); } catch (e) { /* not JSON */ }
    if (!res.ok) throw new Error((body && body.error) || `${res.status} ${res.statusText}`);
    return body;
  }
  // percent-encodes like Python's urllib.parse.quote(name, safe=""), which keys the report's snapshot
  const encode = (name) => encodeURIComponent(name).replace(/[!'()*]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());
  const studyPath = (name) => "api/studies/" + encode(name);

  async function loadStudies() {
    const data = await api("api/studies");
    S.studies = data.studies;
    S.byName = Object.fromEntries(S.studies.map((s) => [s.name, s]));
    const names = S.studies.map((s) => s.name);
    if (S.selected === null || !S.selectionTouched) S.selected = names.slice();
    else S.selected = S.selected.filter((n) => names.includes(n));
    S.storage = CFG.storage || data.storage || "";
  }

  async function ensure(kind, names) {
    const cache = S[kind];
    await Promise.all(names.map(async (name) => {
      const s = S.byName[name];
      if (!s || (cache[name] && cache[name].token === s.token)) return;
      const data = await api(`${studyPath(name)}/${kind}`);
      cache[name] = { token: s.token, data };
    }));
  }

  // ------------------------------------------------------------------ helpers
  function el(id) { return document.getElementById(id); }
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "style") node.setAttribute("style", v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) node.append(c instanceof Node ? c : String(c));
    return node;
  }
  function fmt(v, digits = 4) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (typeof v !== "number") return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(3);
    if (Number.isInteger(v) && a >= 1000) return v.toLocaleString("en-US");
    return String(+v.toPrecision(digits));
  }
  function fmtRatio(v) { return v === null || v === undefined ? "–" : v.toFixed(3) + "×"; }
  function colorOf(name) { return COLORS[S.studies.findIndex((s) => s.name === name) % COLORS.length]; }
  function symbolOf(name) { return SYMBOLS[S.studies.findIndex((s) => s.name === name) % SYMBOLS.length]; }
  function showError(msg) {
    const f = el("error");
    f.textContent = msg || "";
    f.classList.toggle("shown", !!msg);
  }
  function setLive(ok, msg) {
    const l = el("live");
    if (!LIVE) { l.className = "live"; l.textContent = `report of ${CFG.generated}`; return; }
    l.className = "live " + (ok ? "on" : "off");
    l.textContent = ok ? `live · ${new Date().toLocaleTimeString()}` : `disconnected: ${msg}`;
  }

  // measures as axes: key -> value of trial i of study payload p in the current scale
  function axisKeys(payloads) {
    const keys = [];
    for (const p of payloads) {
      const m = p.trials.measures;
      for (const o of p.meta.objectives) if (!keys.includes(o) && (m[o] || m[o + "_abs"])) keys.push(o);
      for (const k of ["accuracy", "accuracy_drop", "flops", "params", "size", "latency", "memory"]) {
        if (!keys.includes(k) && (m[k] || m[k + "_abs"])) keys.push(k);
      }
      for (const k of Object.keys(m)) if (!k.endsWith("_abs") && !keys.includes(k)) keys.push(k);
    }
    return keys;
  }
  function axisTitle(key, meta) {
    const metric = escapeHtml((meta && meta.metric_name) || "accuracy");
    if (key === "accuracy") return S.scale === "rel" ? `${metric} (× original)` : metric;
    if (key === "accuracy_drop") return `${metric} drop (original − trial)`;
    if (RESOURCES[key]) return S.scale === "rel" ? `${RESOURCES[key]} (× original)` : `${RESOURCES[key]} (${ABS_UNIT[key]})`;
    return escapeHtml(key);
  }
  function value(p, key, i) {
    const m = p.trials.measures, base = p.meta.baseline || {};
    if (key === "accuracy") {
      const v = m.accuracy ? m.accuracy[i] : null;
      if (S.scale === "rel") return v === null || !base.accuracy ? null : v / base.accuracy;
      return v;
    }
    if (RESOURCES[key]) {
      const col = S.scale === "rel" ? m[key] : m[key + "_abs"];
      return col ? col[i] : null;
    }
    return m[key] ? m[key][i] : null;
  }
  function original(meta, key) {
    const base = meta.baseline || {};
    if (key === "accuracy") return base.accuracy === undefined || base.accuracy === null ? null : (S.scale === "rel" ? 1 : base.accuracy);
    if (key === "accuracy_drop") return base.accuracy === undefined ? null : 0;
    if (RESOURCES[key]) return base[key] === undefined || base[key] === null ? null : (S.scale === "rel" ? 1 : base[key]);
    return null;
  }
  function hoverText(p, name, i) {
    const m = p.trials.measures, t = p.trials;
    const parts = [`<b>${escapeHtml(name)}</b> · trial ${t.number[i]}`];
    if (m.accuracy) parts.push(`${escapeHtml(p.meta.metric_name || "accuracy")} ${fmt(m.accuracy[i])}` + (m.accuracy_drop ? ` (drop ${fmt(m.accuracy_drop[i], 3)})` : ""));
    const res = Object.keys(RESOURCES).filter((k) => m[k]).map((k) => `${RESOURCES[k]} ${fmtRatio(m[k][i])}`);
    if (res.length) parts.push(res.join(" · "));
    for (const k of Object.keys(m)) if (!(k in RESOURCES) && !k.endsWith("_abs") && !k.startsWith("accuracy")) parts.push(`${escapeHtml(k)} ${fmt(m[k][i])}`);
    if (t.front[i]) parts.push("on the Pareto front");
    if (t.feasible[i] === false) parts.push("infeasible (violates a constraint)");
    if (t.duplicate_of[i] !== null) parts.push(`repeats trial ${t.duplicate_of[i]}`);
    return parts.join("<br>");
  }
  function escapeHtml(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]); }

  // ------------------------------------------------------------------ studies view
  function renderStudies() {
    const table = el("studies-table");
    const objectives = [...new Set(S.studies.flatMap((s) => s.objectives))];
    const head = h("tr", {}, h("th", {}, "compare"), h("th", {}, "study"), h("th", {}, "task"), h("th", {}, "strategy"),
      h("th", {}, "objectives"), h("th", {}, "complete"), h("th", {}, "pruned"), h("th", {}, "failed"),
      h("th", {}, "running"), h("th", {}, "waiting"), h("th", {}, "budget"), h("th", {}, "front"),
      objectives.map((o) => h("th", {}, `best ${o}`)), h("th", {}, "hypervolume"), h("th", {}, "status"), h("th", {}, "last trial"));
    const rows = S.studies.map((s) => {
      const box = h("input", { type: "checkbox", checked: S.selected.includes(s.name), onchange: (ev) => {
        S.selectionTouched = true;
        S.selected = ev.target.checked ? [...S.selected, s.name] : S.selected.filter((n) => n !== s.name);
      } });
      const link = h("a", { href: "#pareto", onclick: () => { S.selectionTouched = true; S.selected = [s.name]; } }, s.name);
      const objs = s.objectives.map((o, i) => `${o} (${(s.directions[i] || "").slice(0, 3)})`).join(", ") + (s.weights ? " weighted" : "");
      const cons = s.constraints.length ? h("div", { class: "note" }, s.constraints.join("; ")) : null;
      return h("tr", { "data-study": s.name },
        h("td", {}, box), h("td", {}, h("span", { class: "swatch", style: `background:${colorOf(s.name)}` }), link),
        h("td", {}, s.task || "–"), h("td", {}, s.strategy || "–"), h("td", {}, objs, cons),
        ["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"].map((k) => h("td", { class: "num" }, s.counts[k] || 0)),
        h("td", { class: "num" }, s.n_trials ?? "–"), h("td", { class: "num" }, s.front_size),
        objectives.map((o) => {
          const b = s.best[o];
          return h("td", { class: "num" }, b && b.value !== null ? [fmt(b.value), " ", h("a", { href: `#trial/${encode(s.name)}/${b.trial}`, class: "note" }, `#${b.trial}`)] : "–");
        }),
        h("td", { class: "num", title: `reference point ${JSON.stringify(s.reference)}` }, fmt(s.hypervolume)),
        h("td", {}, h("span", { class: `badge ${s.status}` }, s.status)), h("td", {}, s.last_complete || "–"));
    });
    table.replaceChildren(h("thead", {}, head), h("tbody", {}, rows));
    if (!S.studies.length) table.replaceChildren(h("tr", {}, h("td", {}, "no studies in this storage yet")));
  }

  // ------------------------------------------------------------------ Pareto view
  function renderPicker() {
    const picker = el("study-picker");
    picker.replaceChildren(...S.studies.map((s) => h("label", {},
      h("input", { type: "checkbox", value: s.name, checked: S.selected.includes(s.name), onchange: (ev) => {
        S.selectionTouched = true;
        S.selected = S.studies.map((x) => x.name).filter((n) => n === s.name ? ev.target.checked : S.selected.includes(n));
        render();
      } }),
      h("span", { class: "swatch", style: `background:${colorOf(s.name)}` }), s.name)));
  }
  function fillSelect(select, options, current) {
    const keys = options.map((o) => o.join("=")).join("|");
    if (select.dataset.keys !== keys) {
      select.replaceChildren(...options.map(([v, label]) => h("option", { value: v }, label)));
      select.dataset.keys = keys;
    }
    select.value = current;
  }

  async function renderPareto() {
    renderPicker();
    const names = S.selected.filter((n) => S.byName[n]);
    await ensure("trials", names);
    const payloads = names.map((n) => S.trials[n].data);
    const keys = axisKeys(payloads);
    const first = payloads[0];
    if (!keys.includes(S.y)) S.y = first ? first.meta.objectives[0] : keys[0];
    if (!keys.includes(S.x) || S.x === S.y) S.x = (first && first.meta.objectives.find((o) => o !== S.y && keys.includes(o))) || keys.find((k) => k !== S.y) || keys[0];
    if (S.color !== "study" && !keys.includes(S.color)) S.color = "study";
    const meta = first ? first.meta : null;
    fillSelect(el("x-axis"), keys.map((k) => [k, axisTitle(k, meta)]), S.x);
    fillSelect(el("y-axis"), keys.map((k) => [k, axisTitle(k, meta)]), S.y);
    fillSelect(el("color-axis"), [["study", "study"], ...keys.map((k) => [k, axisTitle(k, meta)])], S.color);

    const t0 = performance.now();
    const byMeasure = S.color !== "study";
    let cmin = Infinity, cmax = -Infinity;
    if (byMeasure) payloads.forEach((p) => p.trials.state.forEach((st, i) => {
      const c = st === "COMPLETE" ? value(p, S.color, i) : null;
      if (c !== null && c !== undefined) { cmin = Math.min(cmin, c); cmax = Math.max(cmax, c); }
    }));
    const traces = [];
    let points = 0, frontPoints = 0, colorbarShown = false;
    const originals = new Map();
    names.forEach((name) => {
      const p = S.trials[name].data, t = p.trials, k = S.studies.findIndex((x) => x.name === name);
      // three traces per study, each styled as a whole: dominated (faded), infeasible (crosses), front
      const groups = { dominated: [], infeasible: [], front: [] };
      for (let i = 0; i < t.number.length; i++) {
        if (t.state[i] !== "COMPLETE") continue;
        const x = value(p, S.x, i), y = value(p, S.y, i);
        if (x === null || y === null || x === undefined || y === undefined) continue;
        const kind = t.front[i] ? "front" : (t.feasible[i] === false ? "infeasible" : "dominated");
        groups[kind].push({ x, y, i, c: byMeasure ? value(p, S.color, i) : null });
      }
      groups.front.sort((a, b) => a.x - b.x || a.y - b.y);
      points += groups.dominated.length + groups.infeasible.length + groups.front.length;
      frontPoints += groups.front.length;
      const colorbar = byMeasure && !colorbarShown ? { title: { text: axisTitle(S.color, p.meta) } } : undefined;
      const colors = (g) => (byMeasure ? { color: g.map((f) => f.c), colorscale: "Viridis", cmin, cmax } : { color: colorOf(name) });
      const base = (kind, label, g) => ({
        type: "scatter", mode: "markers", name: `${name}: ${label}`, legendgroup: name, uid: `${kind}-${k}`,
        x: g.map((f) => f.x), y: g.map((f) => f.y), hovertext: g.map((f) => hoverText(p, name, f.i)), hoverinfo: "text",
        customdata: g.map((f) => [name, t.number[f.i]]), meta: { kind, study: name },
      });
      traces.push({
        ...base("dominated", "dominated", groups.dominated),
        marker: { size: 7, opacity: 0.45, symbol: byMeasure ? symbolOf(name) : "circle", ...colors(groups.dominated),
          ...(byMeasure ? { showscale: !colorbarShown, colorbar } : {}) },
      });
      colorbarShown = colorbarShown || byMeasure;
      traces.push({
        ...base("infeasible", "infeasible", groups.infeasible),
        marker: { size: 7, opacity: 0.35, symbol: "x-thin-open", line: { width: 1.5 }, ...colors(groups.infeasible) },
      });
      traces.push({
        ...base("front", `Pareto front (${groups.front.length})`, groups.front), mode: "lines+markers",
        line: { color: colorOf(name), width: 2 },
        marker: { size: 11, symbol: byMeasure ? symbolOf(name) : "circle", line: { width: 1.5, color: "#111" }, ...colors(groups.front) },
      });
      const ox = original(p.meta, S.x), oy = original(p.meta, S.y);
      if (ox !== null && oy !== null) {
        const k = `${ox}|${oy}`;
        if (!originals.has(k)) originals.set(k, { x: ox, y: oy, studies: [] });
        originals.get(k).studies.push(name);
      }
    });
    for (const [k, o] of [...originals.values()].entries()) {
      traces.push({
        type: "scatter", mode: "markers", uid: `original-${k}`, name: originals.size > 1 ? `original (${o.studies.join(", ")})` : "original model",
        x: [o.x], y: [o.y], hoverinfo: "text", hovertext: [`original model<br>${o.studies.map(escapeHtml).join(", ")}`],
        marker: { symbol: "star", size: 18, color: "#111", line: { width: 1, color: "#fff" } }, meta: { kind: "original" },
      });
    }
    const layout = {
      margin: { l: 70, r: 30, t: 20, b: 60 }, hovermode: "closest",
      xaxis: { title: { text: axisTitle(S.x, meta) }, zeroline: false }, yaxis: { title: { text: axisTitle(S.y, meta) }, zeroline: false },
      legend: { orientation: "h", y: -0.18 }, uirevision: [S.x, S.y, S.scale, names.join(",")].join("|"),
    };
    const div = el("pareto-plot");
    if (!names.length) layout.annotations = [{ text: "no study selected", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }];
    const t1 = performance.now();
    await Plotly.react(div, traces, layout, PLOT_CONFIG);
    if (!div.dataset.clickable) {
      div.on("plotly_click", (ev) => {
        const id = ev.points && ev.points[0] && ev.points[0].customdata;
        if (Array.isArray(id)) location.hash = `#trial/${encode(id[0])}/${id[1]}`;
      });
      div.dataset.clickable = "1";
    }
    div.dataset.points = points;
    div.dataset.front = frontPoints;
    div.dataset.axes = `${S.x},${S.y},${S.scale}`;
    div.dataset.ready = (+div.dataset.ready || 0) + 1;
    if (window.slimtuneReadyAt === undefined) {  // the first plot: timings for benchmarks/dashboard.py
      window.slimtuneReadyAt = performance.now();
      window.slimtuneFirstDraw = { traces_ms: t1 - t0, plotly_ms: window.slimtuneReadyAt - t1 };
    }
  }

  // ------------------------------------------------------------------ progress view
  async function renderProgress() {
    const names = S.selected.filter((n) => S.byName[n]);
    await ensure("progress", names);
    const by = S.progressX === "time" ? "by_time" : "by_number";
    const objectives = [...new Set(names.flatMap((n) => S.progress[n].data.objectives))];
    const panels = [["hypervolume", "hypervolume"], ...objectives.map((o) => [o, `best ${o} so far`])];
    const box = el("progress-plots");
    if (box.dataset.panels !== panels.map((p) => p[0]).join("|")) {
      box.replaceChildren(...panels.map(([key]) => h("div", { id: `progress-${key}`, class: "plot small" })));
      box.dataset.panels = panels.map((p) => p[0]).join("|");
    }
    for (const [key, title] of panels) {
      const traces = names.filter((n) => key === "hypervolume" || S.progress[n].data.objectives.includes(key)).map((n) => {
        const d = S.progress[n].data[by];
        return {
          type: "scatter", mode: "lines", name: n, line: { color: colorOf(n), shape: "hv", width: 2 },
          x: S.progressX === "time" ? d.elapsed : d.number, y: key === "hypervolume" ? d.hypervolume : d.best[key],
          hovertemplate: `${escapeHtml(n)}<br>${S.progressX === "time" ? "%{x:.1f} s" : "trial %{x}"}<br>${escapeHtml(title)} %{y:.4g}<extra></extra>`,
        };
      });
      const ref = names.length === 1 && key === "hypervolume" ? ` (reference ${JSON.stringify(S.progress[names[0]].data.reference)})` : "";
      await Plotly.react(`progress-${key}`, traces, {
        margin: { l: 70, r: 20, t: 36, b: 45 }, title: { text: title + ref, font: { size: 14 } },
        xaxis: { title: { text: S.progressX === "time" ? "seconds since the study's first trial" : "trial number" } },
        showlegend: true, legend: { orientation: "h", y: -0.25 },
      }, PLOT_CONFIG);
    }
    box.dataset.ready = "1";
  }

  // ------------------------------------------------------------------ trial view
  async function renderTrial() {
    const sel = el("trial-study");
    fillSelect(sel, S.studies.map((s) => [s.name, s.name]), S.trial ? S.trial.study : (S.selected[0] || ""));
    const body = el("trial-body");
    if (!S.trial) {
      const s = S.byName[sel.value];
      body.replaceChildren(h("p", {}, "Choose a trial: click a point of the Pareto view, or give a number above."),
        s && s.front.length ? h("p", {}, "Pareto front of ", s.name, ": ", s.front.map((n) => [h("a", { href: `#trial/${encode(s.name)}/${n}` }, `#${n}`), " "])) : null);
      return;
    }
    el("trial-number").value = S.trial.number;
    const path = `${studyPath(S.trial.study)}/trials/${S.trial.number}`;
    let t;
    try { t = await api(path); } catch (e) {
      body.replaceChildren(h("div", { class: "error-box" }, e.message));
      body.dataset.ready = "error";
      return;
    }
    const s = S.byName[t.study] || {};
    const head = h("h2", {}, `${t.study} · trial ${t.number} `, h("span", { class: `badge ${t.state}` }, t.state),
      t.front ? " " : null, t.front ? h("span", { class: "badge finished" }, "Pareto front") : null,
      t.feasible === false ? " " : null, t.feasible === false ? h("span", { class: "badge FAIL" }, "infeasible") : null);
    const facts = h("p", { class: "note" }, [
      t.hostname ? `host ${t.hostname}` : null, t.device ? `on ${t.device}` : null, t.datetime_start ? `started ${t.datetime_start}` : null,
      t.duration !== null ? `took ${fmt(t.duration, 3)} s` : null, t.duplicate_of !== null ? `repeats trial ${t.duplicate_of}` : null,
    ].filter(Boolean).join(" · "));
    const parts = [head, facts];
    if (t.fail_reason) parts.push(h("h3", {}, "Error"), h("div", { class: "error-box", id: "trial-error" }, t.fail_reason));
    const measures = h("table", { class: "grid", id: "trial-measures" },
      h("tr", {}, h("th", {}, "measure"), h("th", {}, "trial"), h("th", {}, "original"), h("th", {}, "× original")),
      t.measures.map((m) => h("tr", {}, h("td", {}, m.name), h("td", { class: "num" }, fmt(m.value)), h("td", { class: "num" }, fmt(m.original)), h("td", { class: "num" }, m.ratio === null ? "–" : fmtRatio(m.ratio)))));
    const left = [h("h3", {}, "Measures"), t.measures.length ? measures : h("p", { class: "note" }, "no measures (the trial did not complete)")];
    const cons = Object.entries(t.constraints);
    if (cons.length) left.push(h("h3", {}, "Constraints (≤ 0 is met)"), h("table", { class: "grid" }, cons.map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", { class: "num" }, fmt(v))))));
    if (t.values) left.push(h("p", {}, "objective values: ", t.values.map((v, i) => `${(s.objectives && !s.weights && s.objectives[i]) || (s.weights ? "weighted cost" : `value ${i}`)} ${fmt(v)}`).join(", ")));
    const times = Object.entries(t.times);
    if (times.length) left.push(h("h3", {}, "Time (s)"), h("table", { class: "grid" }, h("tr", {}, times.map(([k]) => h("th", {}, k))), h("tr", {}, times.map(([, v]) => h("td", { class: "num" }, fmt(v, 3))))));
    const right = [h("h3", {}, "Compressed model")];
    if (t.download && LIVE) right.push(h("p", {}, h("a", { href: t.download, id: "trial-download", download: "" }, "download the model (safetensors state file: slimtune.load(file, base_model))")));
    if (t.export_command) right.push(h("pre", { class: "cmd", id: "trial-export" }, t.export_command));
    else right.push(h("p", { class: "note" }, "no saved model for this trial"));
    const params = Object.entries(t.params);
    right.push(h("h3", {}, "Parameters"), params.length ? h("table", { class: "grid", id: "trial-params" }, params.map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", { class: "num" }, fmt(v))))) : h("p", { class: "note" }, "none"));
    if (Object.keys(t.user_attrs).length) right.push(h("h3", {}, "Other attributes"), h("pre", {}, JSON.stringify(t.user_attrs, null, 1)));
    parts.push(h("div", { class: "cols" }, h("div", {}, left), h("div", {}, right)));
    parts.push(h("h3", {}, "Plan"), h("p", { class: "note" }, t.plan.granularity ? `granularity ${t.plan.granularity}` + (t.plan.compressor ? `, compressor ${t.plan.compressor}` : "") : "no plan stored"));
    if (t.prune.length) parts.push(h("div", { id: "plan-sparsity", class: "plot small" }));
    if (t.quantize.length) parts.push(h("div", { id: "plan-bits", class: "plot small" }));
    body.replaceChildren(...parts);
    if (t.prune.length) {
      await Plotly.newPlot("plan-sparsity", [{
        type: "bar", x: t.prune.map((p) => p.group), y: t.prune.map((p) => p.sparsity), marker: { color: colorOf(t.study) },
        hovertemplate: "%{x}<br>sparsity %{y:.3f}<extra></extra>", text: t.prune.map((p) => p.criterion), name: "sparsity",
      }], { margin: { l: 60, r: 20, t: 36, b: 90 }, title: { text: "sparsity per group (fraction of channels removed)", font: { size: 14 } }, yaxis: { range: [0, 1] } }, PLOT_CONFIG);
    }
    if (t.quantize.length) {
      const bits = (v) => (v === null || v === undefined ? 32 : v);
      await Plotly.newPlot("plan-bits", [
        { type: "bar", name: "weight bits", x: t.quantize.map((q) => q.layer), y: t.quantize.map((q) => bits(q.bits_w)) },
        { type: "bar", name: "activation bits", x: t.quantize.map((q) => q.layer), y: t.quantize.map((q) => bits(q.bits_a)) },
      ], { barmode: "group", margin: { l: 60, r: 20, t: 36, b: 90 }, title: { text: "bits per layer (32 = float)", font: { size: 14 } } }, PLOT_CONFIG);
    }
    body.dataset.ready = `${t.study}/${t.number}`;
  }

  // ------------------------------------------------------------------ sensitivity view
  async function renderSensitivity() {
    S.sensitivity = await api("api/sensitivity");
    const tables = S.sensitivity.tables.slice().sort((a, b) =>
      (+!a.studies.some((n) => S.selected.includes(n))) - (+!b.studies.some((n) => S.selected.includes(n))));
    const sel = el("sens-table");
    const label = (t) => `${t.kind === "bits" ? "bit-width" : "pruning"} ${t.criterion || ""} · ${t.studies.length ? t.studies.join(", ") : t.name}`;
    fillSelect(sel, tables.map((t) => [t.name, label(t)]), sel.value && tables.some((t) => t.name === sel.value) ? sel.value : (tables[0] || {}).name);
    const t = tables.find((x) => x.name === sel.value);
    const div = el("sens-plot");
    if (!t) {
      await Plotly.react(div, [], { annotations: [{ text: "no sensitivity table in this storage (computed by slimtune run / slimtune sensitivity)", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }] }, PLOT_CONFIG);
      el("sens-note").textContent = "";
      return;
    }
    const cols = t.columns.map((c) => (t.kind === "pruning" ? `${+(c * 100).toFixed(2)}%` : `${c} bits`));
    await Plotly.react(div, [{
      type: "heatmap", z: t.drop, x: cols, y: t.rows, colorscale: "Reds", zmin: 0,
      customdata: t.metric, colorbar: { title: { text: "metric drop" } },
      hovertemplate: `${t.row_label} %{y}<br>${t.column_label} %{x}<br>drop %{z:.4f}<br>metric %{customdata:.4f}<extra></extra>`,
    }], {
      margin: { l: 140, r: 30, t: 20, b: 60 }, xaxis: { title: { text: t.column_label }, type: "category" },
      yaxis: { title: { text: t.row_label }, autorange: "reversed", type: "category" },
    }, PLOT_CONFIG);
    el("sens-note").textContent = `Metric drop when only that ${t.row_label} is compressed (original metric ${fmt(t.baseline)}, ` +
      `criterion ${t.criterion || "–"}). Stored as ${t.name}.`;
    div.dataset.ready = t.name;
  }

  // ------------------------------------------------------------------ routing and the live loop
  function parseHash() {
    const parts = location.hash.replace(/^#/, "").split("/");
    const view = ["studies", "pareto", "progress", "trial", "sensitivity"].includes(parts[0]) ? parts[0] : "pareto";
    S.view = view;
    if (view === "trial" && parts.length >= 3) S.trial = { study: decodeURIComponent(parts[1]), number: +parts[2] };
  }
  async function render() {
    if (S.rendering) { S.again = true; return; }
    S.rendering = true;
    try {
      do {
        S.again = false;
        el("storage").textContent = S.storage || "";
        for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === S.view);
        for (const v of document.querySelectorAll(".view")) v.classList.toggle("active", v.id === `view-${S.view}`);
        if (S.view === "studies") renderStudies();
        else if (S.view === "pareto") await renderPareto();
        else if (S.view === "progress") await renderProgress();
        else if (S.view === "trial") await renderTrial();
        else if (S.view === "sensitivity") await renderSensitivity();
        showError("");
      } while (S.again);
    } catch (e) {
      showError(e.message);
    } finally {
      S.rendering = false;
    }
  }
  async function poll() {
    try {
      const v = await api("api/version");
      setLive(true);
      if (v.token !== S.version) {
        S.version = v.token;
        await loadStudies();
        await render();
      }
    } catch (e) {
      setLive(false, e.message);
    } finally {
      setTimeout(poll, CFG.poll_ms || 1500);
    }
  }

  function wire() {
    window.addEventListener("hashchange", () => { parseHash(); render(); });
    el("x-axis").addEventListener("change", (e) => { S.x = e.target.value; render(); });
    el("y-axis").addEventListener("change", (e) => { S.y = e.target.value; render(); });
    el("color-axis").addEventListener("change", (e) => { S.color = e.target.value; render(); });
    for (const r of document.querySelectorAll("input[name=scale]")) r.addEventListener("change", (e) => { S.scale = e.target.value; render(); });
    for (const r of document.querySelectorAll("input[name=progress-x]")) r.addEventListener("change", (e) => { S.progressX = e.target.value; render(); });
    el("sens-table").addEventListener("change", () => render());
    const goTrial = (study, n) => { if (study && n >= 0) location.hash = `#trial/${encode(study)}/${n}`; };
    el("trial-study").addEventListener("change", (e) => { S.trial = null; location.hash = "#trial"; render(); });
    el("trial-number").addEventListener("change", (e) => goTrial(el("trial-study").value, +e.target.value));
    el("trial-prev").addEventListener("click", () => goTrial(el("trial-study").value, (S.trial ? S.trial.number : 1) - 1));
    el("trial-next").addEventListener("click", () => goTrial(el("trial-study").value, (S.trial ? S.trial.number : -1) + 1));
  }

  // Started while the page loads (this script runs before plotly.js is parsed): the data of the
  // first view is on its way while the browser compiles plotly.js.
  async function boot() {
    if (LIVE) S.version = (await api("api/version")).token;
    await loadStudies();
    const first = location.hash.replace(/^#/, "").split("/")[0];
    if (first === "" || first === "pareto") await ensure("trials", S.selected);
  }
  const booting = boot();

  async function start() {
    wire();
    parseHash();
    setLive(true);
    try {
      await booting;
    } catch (e) {
      showError(e.message);
      setLive(false, e.message);
    }
    await render();
    if (LIVE) setTimeout(poll, CFG.poll_ms || 1500);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
