// miko-stream dashboard: one EventSource (/events), plain DOM, uPlot charts. No build step.
"use strict";
(() => {
  const KEY_STORE = "miko-stream-api-key";
  const MAX_POINTS = 300;
  const MAX_POSTS = 40;
  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value);
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  };
  const fmt = (value, digits = 1) => (value == null ? "–" : Number(value).toFixed(digits));
  const pct = (value) => (value == null ? "–" : `${(100 * value).toFixed(1)}%`);

  // ---- API key: ?key=… once (then removed from the address bar), or the form; kept in localStorage.
  const params = new URLSearchParams(location.search);
  if (params.has("key")) {
    localStorage.setItem(KEY_STORE, params.get("key"));
    params.delete("key");
    history.replaceState(null, "", location.pathname + (params.toString() ? `?${params}` : ""));
  }
  const headers = () => {
    const key = localStorage.getItem(KEY_STORE);
    return key ? { "X-API-Key": key } : {};
  };
  async function api(path) {
    const response = await fetch(path, { headers: headers() });
    if (response.status === 401) { askForKey(); throw new Error("API key required"); }
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response;
  }
  function askForKey() {
    $("key-form").hidden = false;
  }
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(KEY_STORE, $("key-input").value);
    $("key-form").hidden = true;
    connect();
  });

  // ---- charts
  const state = { relations: [], points: [] };
  const charts = {};
  const nodeNames = ["caption", "extract", "generate", "verify"];
  const chartSpecs = {
    throughput: { el: "chart-throughput", series: [["posts in/s", "#2b6cb0"], ["events out/s", "#1a7f37"], ["dead letters/s", "#c53030"]],
                  values: (p) => [p.posts_in, p.events_out, p.dead_letters] },
    e2e: { el: "chart-e2e", series: [["p50", "#2b6cb0"], ["p95", "#b7791f"], ["p99", "#c53030"]],
           values: (p) => [seconds(p.e2e.p50), seconds(p.e2e.p95), seconds(p.e2e.p99)] },
    nodes: { el: "chart-nodes", series: nodeNames.map((n, i) => [n, ["#805ad5", "#2b6cb0", "#1a7f37", "#b7791f"][i]]),
             values: (p) => nodeNames.map((n) => seconds((p.nodes[n] || {}).p50)) },
  };
  function seconds(ms) { return ms == null ? null : ms / 1000; }
  function compact(value) {
    const abs = Math.abs(value);
    if (abs >= 1e6) return `${+(value / 1e6).toFixed(1)}M`;
    if (abs >= 1e3) return `${+(value / 1e3).toFixed(1)}k`;
    return `${+value.toFixed(abs < 1 ? 2 : 1)}`;
  }
  function chartData(spec) {
    const columns = [state.points.map((p) => p.t)];
    spec.series.forEach((_, i) => columns.push(state.points.map((p) => spec.values(p)[i])));
    return columns;
  }
  function makeChart(name) {
    const spec = chartSpecs[name];
    const box = $(spec.el);
    const opts = {
      width: Math.max(box.clientWidth, 200), height: 170,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max || 0) * 1.1] } },
      axes: [{ size: 30 }, { size: 44, values: (u, ticks) => ticks.map(compact) }],
      legend: { show: true, live: false },
      series: [{}, ...spec.series.map(([label, stroke]) => ({ label, stroke, width: 1.5, spanGaps: false, value: (u, v) => fmt(v, 2) }))],
    };
    charts[name] = new uPlot(opts, chartData(spec), box);
    // Resize in the next frame and only when the width changed: resizing inside the observer's callback can
    // trigger "ResizeObserver loop completed with undelivered notifications" errors.
    let width = opts.width;
    new ResizeObserver(() => requestAnimationFrame(() => {
      const now = Math.max(box.clientWidth, 200);
      if (now !== width) { width = now; charts[name].setSize({ width, height: 170 }); }
    })).observe(box);
  }
  function redrawCharts() {
    for (const [name, spec] of Object.entries(chartSpecs)) {
      if (!charts[name]) makeChart(name); else charts[name].setData(chartData(spec));
      $(spec.el).dataset.points = String(state.points.length);
    }
  }

  // ---- posts
  function postCard(post, fresh) {
    const link = el("a", { href: `/posts/${encodeURIComponent(post.post_id)}`, target: "_blank", rel: "noopener" }, post.post_id);
    link.addEventListener("click", (event) => { event.preventDefault(); showDocument(post.post_id); });
    const similarBox = el("div", { class: "similar" });
    const similarButton = el("button", { class: "similar-btn", type: "button", onclick: () => showSimilar(post.post_id, similarBox) }, "similar posts");
    const meta = el("div", { class: "meta" }, link, el("span", { class: `badge ${post.status}` }, post.status),
      post.e2e_ms != null ? el("span", { class: "muted" }, `e2e ${fmt(post.e2e_ms / 1000, 1)} s`) : null,
      post.parse_failures ? el("span", { class: "muted" }, `${post.parse_failures} parse failure(s)`) : null, similarButton);
    const list = el("ul");
    for (const item of post.intentions) {
      const score = item.score == null ? "" : fmt(item.score, 2);
      list.append(el("li", { class: item.verified ? "verified" : "rejected", title: item.verified ? "verified" : `rejected (verifier score ${score})` },
        el("span", { class: "rel" }, item.relation), el("span", {}, item.text || "∅"), el("span", { class: "score" }, score)));
    }
    const card = el("article", { class: `post ${post.status}${fresh ? " fresh" : ""}`, "data-post-id": post.post_id },
      meta, el("div", { class: "text" }, post.text || (post.caption ? `[image] ${post.caption}` : "")), list, similarBox);
    return card;
  }
  function findCard(postId) {
    return [...$("posts").children].find((node) => node.dataset && node.dataset.postId === postId);
  }
  function addPost(post, fresh = true) {
    const old = findCard(post.post_id);
    if (old) old.remove();
    $("posts-empty")?.remove();
    $("posts").prepend(postCard(post, fresh));
    while ($("posts").children.length > MAX_POSTS) $("posts").lastElementChild.remove();
  }
  function removePost(postId) {
    findCard(postId)?.remove();
  }
  async function showDocument(postId) {
    $("viewer-title").textContent = postId;
    try {
      const body = await (await api(`/posts/${encodeURIComponent(postId)}`)).json();
      $("viewer-body").textContent = JSON.stringify(body, null, 2);
    } catch (error) { $("viewer-body").textContent = String(error); }
    $("viewer").showModal();
  }
  async function showSimilar(postId, box) {
    box.replaceChildren(el("span", { class: "muted" }, "searching…"));
    try {
      const body = await (await api(`/similar/${encodeURIComponent(postId)}?k=5`)).json();
      box.replaceChildren(body.results.length ? el("ol", {}, ...body.results.map((hit) =>
        el("li", {}, el("b", {}, hit.post_id), ` ${fmt(hit.score, 2)} · ${hit.relation}: ${hit.text}`))) : el("span", { class: "muted" }, "no similar posts yet"));
    } catch (error) { box.replaceChildren(el("span", { class: "muted" }, String(error))); }
  }

  // ---- status panels
  function renderStatus(status) {
    const totals = status.totals;
    $("c-posts-in").textContent = totals.posts_in;
    $("c-events-out").textContent = totals.events_out;
    $("c-dead-letters").textContent = totals.dead_letters;
    $("viewers").textContent = status.viewers;
    const k = status.knowledge;
    $("c-partial").textContent = pct(k.partial_rate);
    $("c-parse").textContent = `parse failures ${k.parse_failures}`;
    const bars = state.relations.filter((r) => k.acceptance[r]).map((relation) => {
      const a = k.acceptance[relation];
      return el("div", { class: "bar", title: `${a.hits} of ${a.trials} verified` }, el("span", {}, relation),
        el("div", { class: "track" }, el("div", { class: "fill", style: `width:${(100 * a.rate).toFixed(1)}%` })), el("span", {}, pct(a.rate)));
    });
    $("acceptance").replaceChildren(...(bars.length ? bars : [el("span", { class: "muted" }, "no events yet")]));
    const lagRow = (name, partitions) => {
      const entries = Object.entries(partitions || {});
      const total = entries.reduce((sum, [, v]) => sum + (v || 0), 0);
      return el("tr", {}, el("td", {}, name), el("td", {}, entries.length ? entries.map(([p, v]) => `${p}: ${v ?? "?"}`).join("  ") : "–"), el("td", {}, entries.length ? String(total) : "–"));
    };
    $("lag").replaceChildren(lagRow("processor", status.lag.processor), lagRow("indexer", status.lag.indexer));
    const stages = Object.entries(k.dead_letter_stages);
    $("dlq-stages").textContent = stages.length ? stages.map(([s, n]) => `${s}: ${n}`).join(", ") : "none";
    $("health").replaceChildren(...Object.entries(status.health).map(([name, h]) => {
      const cls = h.status === "ok" ? "ok" : ["failing", "down", "unreachable"].includes(h.status) ? "bad" : "warn";
      return el("span", { class: `pill ${cls}`, title: h.detail || "", "data-service": name }, `${name}: ${h.status}`,
        h.detail && h.status !== "ok" ? el("span", { class: "detail" }, ` (${h.detail})`) : null);
    }));
  }
  function renderPoint(point) {
    $("r-posts-in").textContent = `${fmt(point.posts_in, 2)}/s`;
    $("r-events-out").textContent = `${fmt(point.events_out, 2)}/s`;
    $("r-dead-letters").textContent = `${fmt(point.dead_letters, 2)}/s`;
    $("node-p95").textContent = `p95: ${nodeNames.map((n) => `${n} ${fmt(seconds((point.nodes[n] || {}).p95), 2)} s`).join(" · ")}`;
    $("c-e2e").textContent = point.e2e.p50 == null ? "–" : `${fmt(point.e2e.p50 / 1000, 1)} / ${fmt(point.e2e.p95 / 1000, 1)} s`;
  }
  function renderTrending(trending) {
    $("trending-window").textContent = `last ${Math.round(trending.window_s / 60)} min`;
    const items = trending.clusters.map((c) => el("li", {}, el("b", {}, c.label), ` `,
      el("span", { class: "muted" }, `${c.posts} posts · ${c.size} intentions · ${Object.keys(c.relations).join(", ")}`),
      c.examples.length ? el("div", { class: "ex" }, c.examples.join(" · ")) : null));
    $("trending").replaceChildren(...(items.length ? items : [el("li", { class: "muted" }, "no groups of similar intentions yet")]));
  }
  function addDeadLetter(letter) {
    const list = $("dlq-recent");
    list.prepend(el("li", {}, `${letter.stage}: ${letter.post_id ?? "(no id)"} ${letter.error_class ?? ""} ${letter.error_message ?? ""}`));
    while (list.children.length > 5) list.lastElementChild.remove();
  }

  // ---- search
  $("search-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const q = $("search-q").value.trim();
    const relation = $("search-relation").value;
    const query = new URLSearchParams({ q, k: "10" });
    if (relation) query.set("relation", relation);
    $("search-title").textContent = "searching…";
    try {
      const body = await (await api(`/search?${query}`)).json();
      $("search-title").textContent = `${body.results.length} result(s) for “${body.query}”${relation ? ` in ${relation}` : ""}`;
      $("search-results").replaceChildren(...body.results.map((hit) => el("li", { class: "hit" },
        el("b", {}, `${fmt(hit.score, 3)} `), `${hit.relation}: ${hit.text} `,
        el("span", { class: "muted" }, `— ${hit.post_id}: ${hit.post_text.slice(0, 140)}`))));
    } catch (error) { $("search-title").textContent = String(error); }
  });

  // ---- the event stream
  let source = null;
  function setConnected(on, text) {
    $("conn").className = `dot ${on ? "on" : "off"}`;
    $("conn-text").textContent = text;
  }
  async function connect() {
    if (source) source.close();
    let token = null;
    try { token = (await (await api("/dashboard/token")).json()).token; } catch (error) { setConnected(false, String(error)); return; }
    source = new EventSource(`/events${token ? `?token=${encodeURIComponent(token)}` : ""}`);
    source.onopen = () => setConnected(true, "live");
    source.onerror = () => setConnected(false, "reconnecting…");
    source.addEventListener("snapshot", (event) => {
      const snap = JSON.parse(event.data);
      state.relations = snap.relations;
      if ($("search-relation").options.length === 1) for (const r of snap.relations) $("search-relation").append(el("option", { value: r }, r));
      state.points = snap.history.slice(-MAX_POINTS);
      $("posts").replaceChildren();
      for (const post of [...snap.posts].reverse()) addPost(post, false);
      renderStatus(snap); renderTrending(snap.trending); redrawCharts();
      if (state.points.length) renderPoint(state.points[state.points.length - 1]);
    });
    source.addEventListener("posts", (event) => {
      const batch = JSON.parse(event.data);
      for (const postId of batch.deletes) removePost(postId);
      for (const post of batch.posts) addPost(post);
    });
    source.addEventListener("dead_letters", (event) => JSON.parse(event.data).latest.forEach(addDeadLetter));
    source.addEventListener("trending", (event) => renderTrending(JSON.parse(event.data)));
    source.addEventListener("tick", (event) => {
      const tick = JSON.parse(event.data);
      state.points.push(tick.point);
      if (state.points.length > MAX_POINTS) state.points.shift();
      renderPoint(tick.point); renderStatus(tick); redrawCharts();
    });
  }
  window.mikoDashboard = { state, charts };
  connect();
})();
