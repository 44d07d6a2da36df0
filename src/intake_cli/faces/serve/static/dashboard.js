// The intake dashboard. Everything it shows comes from `/api/events` (a
// snapshot per engine_metrics row, the JSON `intake watch --once --json`
// prints, and the webhook governors whenever they change) and the admin API. Text from the database is only ever set with
// textContent / createTextNode: a pool id or a webhook's error reason is
// data, never markup.
(function () {
  "use strict";

  const TOKEN_KEY = "intake.adminToken";
  const HISTORY_POINTS = 720; // an hour of 5 s collections
  const COLORS = ["#2f6fdb", "#d9480f", "#2b8a3e", "#ae3ec9", "#e8590c", "#0c8599", "#5c940d", "#c2255c"];
  const MAX_CHART_POOLS = COLORS.length;
  const DLQ_PAGE = 50;

  const $ = (id) => document.getElementById(id);
  const numberFormat = new Intl.NumberFormat("en-US");

  let retryMs = 2000;
  let stream = null; // the AbortController of the open event stream
  let latest = null; // { payload, receivedAt }
  let dlqDepthShown = null;

  // -- small helpers -----------------------------------------------------------

  function el(tag, options, children) {
    const node = document.createElement(tag);
    const opts = options || {};
    if (opts.className) node.className = opts.className;
    if (opts.data) {
      for (const [key, value] of Object.entries(opts.data)) node.dataset[key] = String(value);
    }
    if (opts.title !== undefined) node.title = String(opts.title);
    if (opts.type) node.type = opts.type;
    for (const child of children || []) {
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function text(value) {
    return value === null || value === undefined ? "—" : String(value);
  }

  function count(value) {
    return value === null || value === undefined ? "—" : numberFormat.format(value);
  }

  function percent(rate) {
    return rate === null || rate === undefined ? "—" : (rate * 100).toFixed(1) + " %";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.round(seconds);
    return s >= 60 ? Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0") : s + " s";
  }

  function setFigure(id, value, shown) {
    const node = $(id);
    node.dataset.value = value === null || value === undefined ? "" : String(value);
    node.textContent = shown;
  }

  function say(message, kind) {
    const node = $("message");
    node.dataset.kind = kind || "info";
    node.textContent = message;
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  // -- the token ---------------------------------------------------------------

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  // `intake serve` without INTAKE_ADMIN_TOKEN prints the dashboard's address
  // with its token after `#`: a fragment never reaches a server or its logs.
  // Kept for this tab, then taken out of the address bar and history.
  (function tokenFromAddress() {
    const found = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (!found) return;
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(found[1]));
    window.history.replaceState(null, "", location.pathname + location.search);
  })();

  function authHeaders(extra) {
    const headers = Object.assign({}, extra || {});
    const value = token();
    if (value) headers.Authorization = "Bearer " + value;
    return headers;
  }

  function reconnect() {
    if (stream) stream.abort();
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    say(value ? "token kept for this browser tab" : "no token entered", "info");
    reconnect();
    loadDlq();
  });

  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    say("token forgotten", "info");
    reconnect();
  });

  // -- the admin API -----------------------------------------------------------

  async function api(method, path, body) {
    const init = { method, headers: authHeaders({ Accept: "application/json" }), cache: "no-store" };
    if (method !== "GET") {
      // serve refuses a change that is not JSON (no form can send one).
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body === undefined ? {} : body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      return { ok: false, status: 0, data: null, error: "server unreachable: " + err.message };
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    let error = null;
    if (!response.ok) {
      error = data && typeof data.error === "string" ? data.error : "HTTP " + response.status;
      if (response.status === 401) error += " (enter the admin token above)";
    }
    return { ok: response.ok, status: response.status, data, error };
  }

  // -- the event stream --------------------------------------------------------

  function setConnection(state, label) {
    const node = $("connection");
    node.dataset.state = state;
    node.textContent = label;
  }

  // Server-sent events read with fetch: EventSource cannot send the token.
  async function readEvents(body, onEvent, watchdog) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let name = "message";
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      watchdog();
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        let line = buffer.slice(0, end);
        buffer = buffer.slice(end + 1);
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          if (data.length) onEvent(name, data.join("\n"));
          name = "message";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue; // a keepalive
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let fieldValue = colon < 0 ? "" : line.slice(colon + 1);
        if (fieldValue.startsWith(" ")) fieldValue = fieldValue.slice(1);
        if (field === "event") name = fieldValue;
        else if (field === "data") data.push(fieldValue);
        else if (field === "retry" && /^\d+$/.test(fieldValue)) retryMs = Number(fieldValue);
      }
    }
  }

  function onEvent(name, data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch (err) {
      return;
    }
    if (name === "snapshot") {
      $("problem").hidden = true;
      render(message);
    } else if (name === "webhook") {
      // Newer than the last snapshot's governors: a pause or a breaker lasts seconds.
      const receivedAt = Date.now();
      for (const [poolId, webhook] of Object.entries(message.pools || {})) {
        webhooks.set(poolId, { webhook, receivedAt });
      }
      drawWebhooks();
    } else if (name === "tick") {
      tickState = { state: message, receivedAt: Date.now() };
      drawTick();
    } else if (name === "problem") {
      $("problem").textContent = text(message.error);
      $("problem").hidden = false;
    }
  }

  async function listen() {
    for (;;) {
      const controller = new AbortController();
      stream = controller;
      // Keepalives come every 15 s: twice that in silence means the stream is gone.
      let timer = null;
      const watchdog = () => {
        clearTimeout(timer);
        timer = setTimeout(() => controller.abort(), 35000);
      };
      try {
        watchdog();
        const response = await fetch("api/events", {
          headers: authHeaders({ Accept: "text/event-stream" }),
          cache: "no-store",
          signal: controller.signal,
        });
        if (response.status === 401) {
          clearTimeout(timer);
          setConnection("token", "token needed");
          say("the API needs the admin token: enter it above", "error");
          await new Promise((resolve) => controller.signal.addEventListener("abort", resolve));
          continue;
        }
        if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
        setConnection("live", "live");
        await readEvents(response.body, onEvent, watchdog);
        setConnection("down", "reconnecting…");
      } catch (err) {
        if (!controller.signal.aborted) setConnection("down", "disconnected");
      } finally {
        clearTimeout(timer);
      }
      if (!controller.signal.aborted || stream !== controller) await sleep(retryMs);
    }
  }

  // -- drawing a snapshot ------------------------------------------------------

  function render(message) {
    latest = { payload: message, receivedAt: Date.now() };
    const snap = message.snapshot;
    $("collected").dataset.collectedAt = message.collected_at || "";
    $("collected").textContent = message.collected_at
      ? "collected " + new Date(message.collected_at).toLocaleTimeString()
      : "";
    $("schedule").textContent = snap.schedule ? "(" + text(snap.schedule.description) + ")" : "";
    setFigure("queue_depth", snap.queue_depth, count(snap.queue_depth));
    setFigure("in_flight", snap.in_flight, count(snap.in_flight));
    setFigure("oldest_msg_age_s", snap.oldest_msg_age_s, duration(snap.oldest_msg_age_s));
    setFigure("dlq_depth", snap.dlq_depth, count(snap.dlq_depth));
    $("dlq_depth").dataset.alarm = String(snap.dlq_depth > 0);
    setFigure("velocity", snap.velocity, count(Math.round(snap.velocity)) + " /s");
    setFigure("eta_s", snap.eta_s, snap.eta_s === 0 ? "drained" : duration(snap.eta_s));
    const rates = snap.pools.map((p) => p.webhook_error_rate).filter((r) => r !== null);
    const worst = rates.length ? Math.max(...rates) : null;
    setFigure("webhook_error_rate", worst, percent(worst));
    renderPools(snap.pools);
    renderWorkers();
    chartPoint(message);
    tick();
    if (snap.dlq_depth !== dlqDepthShown) loadDlq();
  }

  const poolRows = new Map(); // pool id → { row, cells, button }
  const webhooks = new Map(); // pool id → { webhook, receivedAt }: its governor, as last received

  function renderPools(pools) {
    const body = $("pools").tBodies[0];
    const present = new Set();
    pools.forEach((pool, index) => {
      present.add(pool.pool_id);
      let entry = poolRows.get(pool.pool_id);
      if (!entry) entry = addPoolRow(pool.pool_id);
      body.appendChild(entry.row); // keeps the snapshot's order
      const row = entry.row;
      row.dataset.paused = String(Boolean(pool.paused));
      row.dataset.recovering = String(Boolean(pool.recovering));
      const state = pool.recovering ? "recovering" : pool.paused ? "paused" : "open";
      entry.cells.state.textContent = state;
      for (const field of ["inventory", "available_slots", "locked", "consumed", "rejected", "dead_lettered"]) {
        entry.cells[field].dataset.value = String(pool[field]);
        entry.cells[field].textContent = count(pool[field]);
      }
      entry.cells.processing_velocity.dataset.value = String(pool.processing_velocity);
      entry.cells.processing_velocity.textContent = Number(pool.processing_velocity).toFixed(1);
      entry.cells.webhook_error_rate.dataset.value =
        pool.webhook_error_rate === null ? "" : String(pool.webhook_error_rate);
      entry.cells.webhook_error_rate.textContent = percent(pool.webhook_error_rate);
      if (!entry.button.dataset.busy) {
        entry.button.dataset.action = pool.paused ? "resume" : "pause";
        entry.button.textContent = pool.paused ? "Resume" : "Pause";
      }
      entry.row.dataset.index = String(index);
      if (pool.webhook) webhooks.set(pool.pool_id, { webhook: pool.webhook, receivedAt: latest.receivedAt });
    });
    for (const [poolId, entry] of poolRows) {
      if (!present.has(poolId)) {
        entry.row.remove();
        poolRows.delete(poolId);
      }
    }
    drawWebhooks();
  }

  function rate(value) {
    if (value === null || value === undefined) return "no limit";
    return (value > 0 && value < 10 ? value.toFixed(1) : count(Math.round(value))) + " /s";
  }

  // The countdowns run on in the browser between events, from when each arrived.
  function drawWebhooks() {
    for (const [poolId, entry] of poolRows) {
      const found = webhooks.get(poolId);
      const cells = entry.cells;
      if (!found) {
        entry.row.dataset.breaker = "";
        for (const field of ["governed_rate", "throttled_share", "retry_after_s", "breaker"]) {
          cells[field].dataset.value = "";
          cells[field].textContent = "—";
        }
        continue;
      }
      const { webhook, receivedAt } = found;
      const elapsed = (Date.now() - receivedAt) / 1000;
      cells.governed_rate.dataset.value = webhook.governed_rate === null ? "" : String(webhook.governed_rate);
      cells.governed_rate.textContent = rate(webhook.governed_rate);
      const limits = [];
      if (webhook.configured_rate > 0) limits.push("configured " + count(webhook.configured_rate) + " /s");
      if (webhook.learned_rate !== null) limits.push("learned from 429s " + rate(webhook.learned_rate));
      cells.governed_rate.title = limits.join("; ");
      cells.throttled_share.dataset.value = webhook.throttled_share === null ? "" : String(webhook.throttled_share);
      cells.throttled_share.textContent = percent(webhook.throttled_share);
      cells.throttled_share.title = count(webhook.throttled_total) + " of " + count(webhook.calls_total) + " calls refused for now";
      const left = webhook.retry_after_until === null ? 0 : Math.max(0, webhook.retry_after_s - elapsed);
      cells.retry_after_s.dataset.value = left > 0 ? left.toFixed(1) : "";
      cells.retry_after_s.dataset.paused = String(left > 0);
      cells.retry_after_s.textContent = left > 0 ? "Retry-After " + duration(Math.ceil(left)) : "—";
      const open = webhook.breaker === "open";
      entry.row.dataset.breaker = open ? "open" : "closed";
      cells.breaker.dataset.value = text(webhook.breaker);
      cells.breaker.dataset.state = open ? "open" : "closed";
      if (open && webhook.probe_in_s !== null) {
        const probe = Math.max(0, webhook.probe_in_s - elapsed);
        cells.breaker.textContent = "OPEN · probe in " + duration(Math.ceil(probe));
      } else {
        cells.breaker.textContent = open ? "OPEN" : text(webhook.breaker);
      }
    }
  }

  function addPoolRow(poolId) {
    const cells = {};
    const row = el("tr", { data: { pool: poolId } });
    cells.pool = el("td", { className: "text" }, [poolId]);
    cells.state = el("td", { className: "state" });
    row.append(cells.pool, cells.state);
    for (const field of [
      "inventory", "available_slots", "locked", "consumed", "rejected", "dead_lettered",
      "processing_velocity", "webhook_error_rate",
    ]) {
      cells[field] = el("td", { className: "num", data: { field } });
      row.appendChild(cells[field]);
    }
    cells.governed_rate = el("td", { className: "num", data: { field: "governed_rate" } });
    cells.throttled_share = el("td", { className: "num", data: { field: "throttled_share" } });
    cells.retry_after_s = el("td", { className: "pause", data: { field: "retry_after_s" } });
    cells.breaker = el("td", { className: "breaker", data: { field: "breaker" } });
    row.append(cells.governed_rate, cells.throttled_share, cells.retry_after_s, cells.breaker);
    const button = el("button", { type: "button", className: "pool-action" }, ["Pause"]);
    button.addEventListener("click", () => poolAction(poolId, button));
    row.appendChild(el("td", {}, [button]));
    const entry = { row, cells, button };
    poolRows.set(poolId, entry);
    return entry;
  }

  async function poolAction(poolId, button) {
    const action = button.dataset.action;
    button.dataset.busy = "1";
    button.disabled = true;
    const result = await api("POST", "api/pools/" + encodeURIComponent(poolId) + "/" + action);
    delete button.dataset.busy;
    button.disabled = false;
    if (result.ok) {
      // engine_config changed now; engine_metrics shows it at its next row.
      const done = action === "pause" ? "paused" : "resumed";
      say("pool " + poolId + ": " + done, "ok");
      button.dataset.action = action === "pause" ? "resume" : "pause";
      button.textContent = action === "pause" ? "Resume" : "Pause";
    } else {
      say("pool " + poolId + ": " + result.error, "error");
    }
  }

  function renderWorkers() {
    if (!latest) return;
    const { payload, receivedAt } = latest;
    const elapsed = (Date.now() - receivedAt) / 1000;
    const body = $("workers").tBodies[0];
    const rows = payload.snapshot.workers.map((w) => {
      const beat = w.heartbeat_age_s + (w.stopped ? 0 : elapsed);
      const state = w.stopped ? "stopped" : beat > payload.silent_after_s ? "silent" : "alive";
      return el("tr", { data: { worker: w.worker_id } }, [
        el("td", { className: "text", title: w.worker_id }, [w.hostname + ":" + w.pid]),
        el("td", { className: "text" }, [w.pool_filter === null ? "all" : w.pool_filter]),
        el("td", { className: "num" }, [count(w.concurrency)]),
        el("td", { className: "num", data: { field: "heartbeat" } }, [Math.round(beat) + " s ago"]),
        el("td", { className: "num" }, [count(w.batches)]),
        el("td", { className: "num", data: { field: "committed" } }, [count(w.committed)]),
        el("td", { className: "num" }, [count(w.rejected)]),
        el("td", { className: "num" }, [count(w.retried)]),
        el("td", { className: "num" }, [count(w.dead_lettered)]),
        el("td", { className: "state", data: { state } }, [state]),
      ]);
    });
    body.replaceChildren(...rows);
    $("workers-none").hidden = rows.length > 0;
  }

  // The age ticks in the browser between snapshots, so a server that went
  // quiet still shows its figures ageing into STALE.
  function tick() {
    if (!latest) return;
    const { payload, receivedAt } = latest;
    const node = $("age");
    const base = payload.snapshot.metrics_age_s;
    if (base === null) {
      node.dataset.stale = "true";
      node.textContent = "no metrics yet";
      return;
    }
    const age = base + (Date.now() - receivedAt) / 1000;
    const stale = age > payload.stale_after_s;
    node.dataset.stale = String(stale);
    node.dataset.age = age.toFixed(1);
    node.textContent = (stale ? "STALE: metrics " : "metrics ") + Math.round(age) + " s old";
  }

  // The drain's HTTP tick: shown only where ticks are expected; the age
  // counts on between pushes, which come only when something changed.
  let tickState = null; // { state, receivedAt }

  function drawTick() {
    const node = $("tick");
    if (!tickState || !tickState.state.expected) {
      node.hidden = true;
      return;
    }
    const { state, receivedAt } = tickState;
    const elapsed = (Date.now() - receivedAt) / 1000;
    const since = (Date.parse(state.since) || receivedAt) / 1000;
    const silent = Date.now() / 1000 - since;
    const stale = state.stale || silent > state.stale_after_s;
    node.hidden = false;
    node.title = text(state.expected_because);
    node.dataset.stale = String(stale);
    if (state.age_s === null) {
      node.textContent = stale ? "STALE: no drain tick since serve started" : "no drain tick yet";
    } else {
      const age = Math.round(state.age_s + elapsed);
      node.textContent = (stale ? "STALE: last drain tick " : "drain tick ") + age + " s ago";
    }
    node.dataset.age = state.age_s === null ? "" : (state.age_s + elapsed).toFixed(1);
  }

  setInterval(() => {
    tick();
    drawTick();
    renderWorkers();
    drawWebhooks();
  }, 1000);

  // -- charts --------------------------------------------------------------------

  const charts = {
    velocity: { target: "chart-velocity", field: "processing_velocity", format: (v) => v.toFixed(0) },
    errors: { target: "chart-errors", field: "webhook_error_rate", format: (v) => (v * 100).toFixed(0) + "%" },
  };
  const history = { xs: [], pools: [], series: {} }; // series: pool id → { velocity: [], errors: [] }

  // "2025-01-31 12:00:00.123456+00:00" or ISO: seconds since the epoch.
  function seconds(stamp) {
    const iso = String(stamp).replace(" ", "T").replace(/(\.\d{3})\d+/, "$1");
    return Date.parse(iso) / 1000;
  }

  let seeded = false;

  // The charts start with the last hour from engine_metrics, not empty.
  async function seedHistory(ids) {
    const replies = await Promise.all(
      ids.map((id) => api("GET", "api/pools/" + encodeURIComponent(id) + "/metrics?seconds=3600")),
    );
    const byX = new Map(); // x → { pool id → row }
    replies.forEach((reply, i) => {
      if (!reply.ok || !reply.data || !Array.isArray(reply.data.rows)) return;
      for (const row of reply.data.rows) {
        const x = seconds(row.collected_at);
        if (!byX.has(x)) byX.set(x, {});
        byX.get(x)[ids[i]] = row;
      }
    });
    const first = history.xs.length ? history.xs[0] : Infinity;
    const xs = [...byX.keys()].filter((x) => x < first).sort((a, b) => a - b);
    if (!xs.length) return;
    const pick = (x, id, field) => {
      const row = byX.get(x)[id];
      return row && row[field] !== undefined ? row[field] : null;
    };
    history.xs = xs.concat(history.xs);
    for (const id of history.pools) {
      const series = history.series[id];
      series.velocity = xs.map((x) => pick(x, id, "processing_velocity")).concat(series.velocity);
      series.errors = xs.map((x) => pick(x, id, "webhook_error_rate")).concat(series.errors);
    }
    const extra = history.xs.length - HISTORY_POINTS;
    if (extra > 0) {
      history.xs.splice(0, extra);
      for (const series of Object.values(history.series)) {
        series.velocity.splice(0, extra);
        series.errors.splice(0, extra);
      }
    }
    for (const [key, chart] of Object.entries(charts)) drawChart(key, chart, false);
  }

  function chartPoint(message) {
    if (!message.collected_at) return;
    const x = seconds(message.collected_at);
    const last = history.xs[history.xs.length - 1];
    if (last !== undefined && x <= last) return; // the same row again (a reconnect)
    const pools = message.snapshot.pools.slice(0, MAX_CHART_POOLS);
    const ids = pools.map((p) => p.pool_id);
    const changed = ids.length !== history.pools.length || ids.some((id, i) => id !== history.pools[i]);
    history.xs.push(x);
    for (const id of ids) {
      if (!history.series[id]) {
        history.series[id] = { velocity: history.xs.slice(0, -1).map(() => null), errors: history.xs.slice(0, -1).map(() => null) };
      }
    }
    for (const [id, series] of Object.entries(history.series)) {
      const pool = pools.find((p) => p.pool_id === id);
      series.velocity.push(pool ? pool.processing_velocity : null);
      series.errors.push(pool ? pool.webhook_error_rate : null);
    }
    if (history.xs.length > HISTORY_POINTS) {
      history.xs.shift();
      for (const series of Object.values(history.series)) {
        series.velocity.shift();
        series.errors.shift();
      }
    }
    history.pools = ids;
    for (const [key, chart] of Object.entries(charts)) drawChart(key, chart, changed);
    if (!seeded) {
      seeded = true;
      seedHistory(ids);
    }
  }

  function drawChart(key, chart, rebuild) {
    const data = [history.xs, ...history.pools.map((id) => history.series[id][key])];
    if (chart.plot && !rebuild) {
      chart.plot.setData(data);
      return;
    }
    if (chart.plot) chart.plot.destroy();
    const target = $(chart.target);
    const width = Math.max(target.clientWidth - 10, 300);
    chart.plot = new uPlot(
      {
        width,
        height: 220,
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max, key === "errors" ? 0.05 : 1)] } },
        axes: [{}, { values: (u, ticks) => ticks.map(chart.format), size: 50 }],
        series: [
          {},
          ...history.pools.map((id, i) => ({ label: id, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false })),
        ],
      },
      data,
      target,
    );
  }

  window.addEventListener("resize", () => {
    for (const chart of Object.values(charts)) {
      if (chart.plot) {
        const target = $(chart.target);
        chart.plot.setSize({ width: Math.max(target.clientWidth - 10, 300), height: 220 });
      }
    }
  });

  // -- dead letters ----------------------------------------------------------------

  let dlqLoading = false;
  let dlqAgain = false; // asked for while a load was in flight: its answer may be old

  function lettersOf(data) {
    if (Array.isArray(data)) return data;
    if (!data || typeof data !== "object") return [];
    for (const key of ["letters", "dead_letters", "items", "results"]) {
      if (Array.isArray(data[key])) return data[key];
    }
    return [];
  }

  async function loadDlq() {
    if (dlqLoading) {
      dlqAgain = true;
      return;
    }
    dlqLoading = true;
    try {
      const result = await api("GET", "api/dlq?limit=" + DLQ_PAGE);
      const body = $("dlq").tBodies[0];
      if (!result.ok) {
        $("dlq-note").textContent = "dead letters: " + result.error;
        renderLetters(body, []);
        return;
      }
      const letters = lettersOf(result.data);
      dlqDepthShown = latest ? latest.payload.snapshot.dlq_depth : null;
      renderLetters(body, letters);
      const total = latest ? latest.payload.snapshot.dlq_depth : null;
      $("dlq-note").textContent = letters.length === 0
        ? "The dead-letter queue is empty."
        : "Showing " + letters.length + (total !== null && total > letters.length ? " of " + count(total) : "") +
          " (oldest first).";
    } finally {
      dlqLoading = false;
      if (dlqAgain) {
        dlqAgain = false;
        loadDlq();
      }
    }
  }

  // Rows are kept per message id, not rebuilt: a reload that lands while the
  // operator moves to a Replay button must not swap the button from under
  // the click (seen in CI as a click on a detached element).
  const letterRows = new Map(); // msg id → { row, cells }
  const LETTER_FIELDS = [
    ["msg_id", "num"], ["pool_id", "text"], ["idempotency_key", "text"], ["user_id", "text"],
    ["state", ""], ["attempts", "num"], ["last_error", "text"], ["dead_at", ""],
  ];

  // A dead letter's fields were written by whoever wrote the message: a cell
  // shows at most this much of one (the API and `intake dlq show` have it whole).
  const LETTER_CELL_CHARS = 200;

  function letterText(value) {
    if (value === null || value === undefined) return "—";
    const shown = typeof value === "string" ? value : JSON.stringify(value);
    return shown.length > LETTER_CELL_CHARS ? shown.slice(0, LETTER_CELL_CHARS) + "…" : shown;
  }

  function letterTime(value) {
    const when = typeof value === "string" ? Date.parse(value) : NaN;
    return Number.isNaN(when) ? "—" : new Date(when).toLocaleString();
  }

  function renderLetters(body, letters) {
    const present = new Set();
    for (const letter of letters) {
      // A row needs an id to be kept by; anything else in the answer is not a letter.
      if (!letter || typeof letter !== "object" || !Number.isInteger(letter.msg_id)) continue;
      const key = String(letter.msg_id);
      present.add(key);
      let entry = letterRows.get(key);
      if (!entry) entry = addLetterRow(key, letter.msg_id);
      for (const [field] of LETTER_FIELDS) {
        const value = letter[field];
        entry.cells[field].textContent = field === "dead_at" ? letterTime(value) : letterText(value);
      }
      // One the server could not read is shown as far as it could, marked,
      // and cannot be replayed (the server would refuse it).
      const readable = letter.readable !== false;
      const problems = Array.isArray(letter.problems) ? letter.problems.map(letterText).join("; ") : "";
      entry.row.dataset.readable = String(readable);
      entry.row.title = readable ? "" : "unreadable: " + problems;
      if (!readable) entry.cells.state.textContent = "unreadable: " + letterText(letter.state);
      entry.button.disabled = !readable || entry.replaying;
      entry.button.title = readable ? "" : "cannot be replayed: " + problems;
      body.appendChild(entry.row); // keeps the answer's order
    }
    for (const [key, entry] of letterRows) {
      if (!present.has(key)) {
        entry.row.remove();
        letterRows.delete(key);
      }
    }
  }

  function addLetterRow(key, msgId) {
    const cells = {};
    const row = el("tr", { data: { msgId: key } });
    for (const [field, className] of LETTER_FIELDS) {
      cells[field] = el("td", { className, data: { field } });
      row.appendChild(cells[field]);
    }
    const button = el("button", { type: "button", className: "replay", data: { msgId: key } }, ["Replay"]);
    const entry = { row, cells, button, replaying: false };
    button.addEventListener("click", () => replay(msgId, entry));
    row.appendChild(el("td", {}, [button]));
    letterRows.set(key, entry);
    return entry;
  }

  async function replay(msgId, entry) {
    entry.replaying = true;
    entry.button.disabled = true;
    const result = await api("POST", "api/dlq/replay", { msg_ids: [msgId] });
    entry.replaying = false;
    const refused = result.ok && result.data && Array.isArray(result.data.refused) ? result.data.refused : [];
    if (result.ok && refused.length === 0) {
      say("dead letter " + msgId + " replayed: back on the queue", "ok");
      entry.row.remove();
      letterRows.delete(String(msgId));
      loadDlq(); // after any load that started before the replay

    } else {
      entry.button.disabled = false;
      const reason = result.ok ? letterText(refused[0].reason) : result.error;
      say("replay of " + msgId + ": " + reason, "error");
      loadDlq();
    }
  }

  $("dlq-refresh").addEventListener("click", () => loadDlq());

  listen();
})();
