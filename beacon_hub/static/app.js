// beacon-hub dashboard: plain ES module, no build step, no CDN (the demo runs offline).
// Data: /api/... (JSON, docs/api.md) and /api/sites/{site}/stream (server-sent events, one
// `tick` per site tick). The DOM ids and data attributes are a contract (docs/api.md,
// "Dashboard DOM"): the browser test reads them.

const SVG = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "beacon-hub-token";
const HEAT_REFRESH_MS = 30000; // heat map and dwell: a period's statistics change slowly
const DOT_RADIUS_M = 0.45;
const COARSE_ACCURACY_M = 6; // beyond this the accuracy circle is drawn as a faint outline
const CROWDED_DOTS = 150; // beyond this many dots on a level, accuracy circles only on hover or search
const BEHIND_S = 5; // a tick this late is "behind": a hub in step runs it within 1.4 s (docs/hub.md)

const state = {
  sites: [],
  site: null, // geometry of the selected site (/api/sites/{site})
  level: 0,
  stream: null,
  tick: null, // the last tick received
  highlight: null, // beacon id found by the search
  heatTimer: null,
  maxY: 0,
};

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, text) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== null && v !== undefined) node.setAttribute(k, String(v));
  }
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---------------------------------------------------------------------------- API + token

function token() {
  return localStorage.getItem(TOKEN_KEY);
}

async function api(path, retry = true) {
  const headers = {};
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  const res = await fetch(path, { headers });
  if (res.status === 401 && retry) {
    const given = window.prompt("This hub needs an access token (http.token):");
    if (given) {
      localStorage.setItem(TOKEN_KEY, given.trim());
      return api(path, false);
    }
  }
  if (!res.ok) {
    let detail = res.statusText;
    try {
      detail = (await res.json()).detail ?? detail;
    } catch {
      /* not JSON */
    }
    throw new Error(`${path}: ${res.status} ${detail}`);
  }
  return res.json();
}

// --------------------------------------------------------------------------------- format

function clock(t) {
  if (t === null || t === undefined) return "—";
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}

function when(t) {
  if (t === null || t === undefined) return "—";
  const d = new Date(t * 1000);
  const today = new Date();
  return d.toDateString() === today.toDateString()
    ? clock(t)
    : d.toLocaleString([], { hour12: false });
}

function duration(s) {
  if (s === null || s === undefined) return "—";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function zoneName(id) {
  const z = state.site?.zones.find((z) => z.id === id);
  return z ? z.name || z.id : id ?? "—";
}

function setStatus(text, st) {
  const s = $("#status");
  s.textContent = text;
  s.dataset.state = st;
}

// ------------------------------------------------------------------------------------ map

const sy = (y) => state.maxY - y; // site y grows north; SVG y grows down

function points(poly) {
  return poly.map(([x, y]) => `${x},${sy(y)}`).join(" ");
}

function drawSite() {
  const site = state.site;
  const lv = site.levels.find((l) => l.level === state.level) ?? site.levels[0];
  const xs = lv.outline.map((p) => p[0]);
  const ys = lv.outline.map((p) => p[1]);
  const minX = Math.min(...xs), maxX = Math.max(...xs);
  const minY = Math.min(...ys);
  state.maxY = Math.max(...ys);
  const pad = 2;
  const map = $("#map");
  map.setAttribute(
    "viewBox",
    `${minX - pad} ${-pad} ${maxX - minX + 2 * pad} ${state.maxY - minY + 2 * pad}`,
  );
  map.dataset.site = site.id;
  map.dataset.level = String(lv.level);
  const floor = $("#floor");
  floor.replaceChildren(el("svg:polygon", { class: "outline", points: points(lv.outline) }));
  for (const o of lv.obstacles) {
    floor.append(
      el("svg:polygon", { class: `obstacle ${o.kind}`, points: points(o.polygon), "data-obstacle": o.id }),
    );
  }
  const walls = $("#walls");
  walls.replaceChildren();
  for (const w of lv.walls) {
    walls.append(
      el("svg:line", { class: "wall", x1: w.start[0], y1: sy(w.start[1]), x2: w.end[0], y2: sy(w.end[1]) }),
    );
  }
  const zones = $("#zones");
  const heat = $("#heat");
  zones.replaceChildren();
  heat.replaceChildren();
  for (const z of site.zones.filter((z) => z.level === lv.level)) {
    const g = el("svg:g", { class: `zone ${z.kind}`, "data-zone": z.id });
    g.append(el("svg:polygon", { points: points(z.polygon) }));
    const cx = z.polygon.reduce((a, p) => a + p[0], 0) / z.polygon.length;
    const cy = z.polygon.reduce((a, p) => a + p[1], 0) / z.polygon.length;
    // Label only where it fits: a warehouse has hundreds of bays a few metres wide.
    const label = z.name || z.id;
    const zx = z.polygon.map((p) => p[0]), zy = z.polygon.map((p) => p[1]);
    const w = Math.max(...zx) - Math.min(...zx), h = Math.max(...zy) - Math.min(...zy);
    const size = Math.min(1.6, h * 0.4, (w * 0.9) / (0.6 * label.length));
    if (size >= 0.55) {
      g.append(el("svg:text", { x: cx, y: sy(cy), class: "zone-label", "font-size": size.toFixed(2) }, label));
    }
    g.append(el("svg:title", {}, `${z.name || z.id} (${z.kind})`));
    zones.append(g);
    heat.append(el("svg:polygon", { points: points(z.polygon), "data-zone": z.id, class: "heat-cell" }));
  }
  const gws = $("#gateway-marks");
  gws.replaceChildren();
  for (const g of site.gateways.filter((g) => g.level === lv.level)) {
    const m = el("svg:g", { class: "gw", "data-gateway": g.id, "data-state": "offline", transform: `translate(${g.x},${sy(g.y)})` });
    m.append(el("svg:rect", { x: -0.5, y: -0.5, width: 1, height: 1, rx: 0.15 }));
    m.append(el("svg:title", {}, g.name || g.id));
    gws.append(m);
  }
  $("#dots").replaceChildren();
  $("#trail").setAttribute("d", "");
}

function drawDots(positions) {
  const layer = $("#dots");
  const existing = new Map();
  for (const node of layer.children) existing.set(node.dataset.beacon, node);
  for (const p of positions) {
    let g = existing.get(p.beacon);
    existing.delete(p.beacon);
    if (!g) {
      g = el("svg:g", { class: "dot", "data-beacon": p.beacon });
      g.append(el("svg:circle", { class: "accuracy", cx: 0, cy: 0 }));
      g.append(el("svg:circle", { class: "pos", cx: 0, cy: 0, r: DOT_RADIUS_M }));
      g.append(el("svg:title"));
      layer.append(g);
    }
    g.setAttribute("transform", `translate(${p.x},${sy(p.y)})`);
    g.firstChild.setAttribute("r", Math.max(p.accuracy_m, DOT_RADIUS_M));
    // A fix still settling can be tens of metres uncertain: outline only, so it cannot bury the map.
    g.classList.toggle("coarse", p.accuracy_m > COARSE_ACCURACY_M);
    g.dataset.label = p.label ?? "";
    g.dataset.kind = p.kind ?? "";
    g.dataset.zone = p.zone ?? "";
    g.dataset.x = String(p.x);
    g.dataset.y = String(p.y);
    g.dataset.level = String(p.level);
    g.classList.toggle("other-level", p.level !== state.level);
    g.classList.toggle("highlight", p.beacon === state.highlight);
    g.lastChild.textContent = `${p.label ?? p.beacon} · ${zoneName(p.zone)} · ±${p.accuracy_m} m`;
  }
  for (const stale of existing.values()) stale.remove();
  const hl = layer.querySelector(".dot.highlight");
  if (hl) layer.append(hl); // drawn last: on top
  const onLevel = positions.filter((p) => p.level === state.level);
  // 600 pallets' circles bury the racks: then only the searched or hovered dot shows its circle.
  layer.classList.toggle("crowded", onLevel.length > CROWDED_DOTS);
  const kinds = {};
  for (const p of onLevel) kinds[p.kind ?? "other"] = (kinds[p.kind ?? "other"] ?? 0) + 1;
  $("#counts").textContent = `${onLevel.length} live · ` +
    Object.entries(kinds).map(([k, n]) => `${n} ${k}`).join(" · ");
}

// --------------------------------------------------------------------------------- panels

function row(attrs, cells) {
  const r = el("div", { class: "row", ...attrs });
  for (const [cls, text] of cells) r.append(el("span", { class: cls }, text));
  return r;
}

function empty(container, text) {
  container.replaceChildren(el("div", { class: "empty" }, text));
}

function drawOccupancy(zones) {
  const box = $("#occupancy");
  const site = state.site;
  const list = site.zones.filter((z) => z.level === state.level);
  if (!list.length) return empty(box, "no zones on this level");
  const counts = list.map((z) => [z, Object.values(zones[z.id] ?? {}).reduce((a, b) => a + b, 0)]);
  counts.sort((a, b) => b[1] - a[1]); // busiest first; ties keep the site file's order
  const peak = Math.max(1, ...counts.map(([, n]) => n));
  box.replaceChildren(
    ...counts.map(([z, n]) => {
      const r = row({ "data-zone": z.id, "data-count": n }, [["name", z.name || z.id], ["num", String(n)]]);
      const bar = el("span", { class: "bar-fill" });
      bar.style.width = `${(100 * n) / peak}%`;
      r.prepend(bar);
      return r;
    }),
  );
}

const OFFLINE_WHY = {
  status: "said offline", // its status topic: a clean shutdown or its last will
  silent: "silent",
  never_heard: "not heard",
};

function lastHeard(g) {
  const times = [g.last_batch, g.last_heartbeat].filter((t) => t !== null && t !== undefined);
  return times.length ? Math.max(...times) : null;
}

function gatewayTitle(g) {
  const hb = g.heartbeat;
  const lines = [
    `${g.id}: ${g.state}${g.offline_reason ? ` (${OFFLINE_WHY[g.offline_reason] ?? g.offline_reason})` : ""}`,
    `status: ${g.status ?? "—"}${g.status_t ? ` since ${when(g.status_t)}` : ""}; ` +
      `version ${g.version ?? "—"}; boot ${g.boot ?? "—"}`,
    `last batch ${when(g.last_batch)}; last heartbeat ${when(g.last_heartbeat)}`,
    `${g.batches} batches, ${g.lost} lost in the last 5 min; clock skew ${g.clock_skew_s ?? "—"} s`,
  ];
  if (hb) {
    lines.push(
      `adverts seen ${hb.adverts_seen}, published ${hb.adverts_published}, dropped ${hb.adverts_dropped} ` +
        `(${hb.adverts_per_s.toFixed(1)}/s); queue ${hb.queue_depth}; scanner restarts ${hb.scanner_restarts}; ` +
        `up ${duration(hb.uptime_s)}` + (hb.cpu_temp_c === null ? "" : `; CPU ${hb.cpu_temp_c.toFixed(0)} °C`),
    );
  }
  return lines.join("\n");
}

function drawGateways(gateways) {
  const box = $("#gateways");
  box.replaceChildren(
    ...gateways.map((g) => {
      const hb = g.heartbeat;
      const dropped = hb && hb.adverts_seen ? (100 * hb.adverts_dropped) / hb.adverts_seen : null;
      const r = row(
        { "data-gateway": g.id, "data-state": g.state, "data-reason": g.offline_reason ?? "" },
        [
          ["led", ""],
          ["name", g.name || g.id],
          ["meta", g.state === "offline" && g.offline_reason ? OFFLINE_WHY[g.offline_reason] ?? "" : clock(lastHeard(g))],
          ["meta", g.loss_rate === null ? "loss —" : `loss ${(100 * g.loss_rate).toFixed(1)}%`],
          ["meta", g.clock_skew_s === null ? "skew —" : `skew ${g.clock_skew_s.toFixed(2)}s`],
          ["meta hb", hb ? `q ${hb.queue_depth} · drop ${dropped === null ? "—" : dropped.toFixed(1) + "%"} · up ${duration(hb.uptime_s)}` : ""],
        ],
      );
      r.title = gatewayTitle(g);
      return r;
    }),
  );
  for (const g of gateways) {
    const mark = document.querySelector(`#gateway-marks [data-gateway="${CSS.escape(g.id)}"]`);
    if (mark) mark.dataset.state = g.state;
  }
}

function drawAlerts(tick) {
  const idle = $("#idle");
  if (!tick.idle.length) empty(idle, "no pallet idle too long");
  else {
    idle.replaceChildren(
      ...tick.idle.map((p) =>
        row({ "data-beacon": p.beacon, "data-zone": p.zone }, [
          ["name", p.label ?? p.beacon],
          ["meta", zoneName(p.zone)],
          ["num warn", duration(p.idle_s)],
        ]),
      ),
    );
  }
  const lost = $("#lost");
  if (!tick.lost.length) empty(lost, "none");
  else {
    lost.replaceChildren(
      ...tick.lost.slice(0, 50).map((b) =>
        row({ "data-beacon": b.beacon }, [
          ["name", b.label ?? b.beacon],
          ["meta", b.zone ? zoneName(b.zone) : "—"],
          ["num", `since ${clock(b.last_heard ?? b.t)}`],
        ]),
      ),
    );
  }
  const bat = $("#battery");
  if (!tick.low_battery.length) empty(bat, "none below threshold");
  else {
    bat.replaceChildren(
      ...tick.low_battery.slice(0, 50).map((b) =>
        row({ "data-beacon": b.beacon }, [
          ["name", b.label ?? b.beacon],
          ["num warn", `${b.battery_mv} mV`],
        ]),
      ),
    );
  }
}

async function drawStats() {
  if (!state.site) return;
  const site = state.site.id;
  const period = Number($("#period").value);
  const now = Date.now() / 1000;
  const q = `since=${Math.floor(now - period)}&until=${Math.ceil(now)}`;
  $("#dwell-period").textContent = `last ${duration(period)}`;
  try {
    const [dwell, heat] = await Promise.all([
      api(`/api/sites/${site}/zones/dwell?${q}`),
      api(`/api/sites/${site}/zones/heat?${q}`),
    ]);
    if (state.site?.id !== site) return;
    const box = $("#dwell");
    const zones = Object.entries(dwell.zones);
    if (!zones.length) empty(box, "no visits in this period");
    else {
      zones.sort((a, b) => b[1].visits - a[1].visits);
      box.replaceChildren(
        row({ class: "row head" }, [["name", "zone"], ["num", "visits"], ["num", "median"], ["num", "p90"]]),
        ...zones.map(([z, s]) =>
          row({ "data-zone": z }, [
            ["name", zoneName(z)],
            ["num", String(s.visits)],
            ["num", duration(s.median_s)],
            ["num", duration(s.p90_s)],
          ]),
        ),
      );
    }
    const peak = Math.max(0.001, ...Object.values(heat.zones).map((h) => h.mean));
    for (const cell of document.querySelectorAll("#heat .heat-cell")) {
      const h = heat.zones[cell.dataset.zone];
      const v = h ? h.mean / peak : 0;
      cell.style.fillOpacity = String(0.06 + 0.4 * v);
      cell.dataset.mean = h ? h.mean.toFixed(2) : "0";
      cell.style.fill = v > 0 ? `hsl(${Math.round(45 - 45 * v)}, 90%, 52%)` : "transparent";
    }
  } catch (e) {
    console.warn(e);
  }
}

// --------------------------------------------------------------------------------- search

async function search(text) {
  const q = text.trim();
  if (!q) {
    state.highlight = null;
    $("#pallet-panel").hidden = true;
    $("#trail").setAttribute("d", "");
    if (state.tick) drawDots(state.tick.positions);
    return;
  }
  const needle = q.toLowerCase();
  const positions = state.tick?.positions ?? [];
  let hit =
    positions.find((p) => (p.label ?? "").toLowerCase() === needle || p.beacon === needle) ??
    positions.find((p) => (p.label ?? "").toLowerCase().includes(needle) || p.beacon.includes(needle));
  let elsewhere = null;
  if (!hit) {
    const found = await api(`/api/assets?q=${encodeURIComponent(q)}&limit=5`);
    elsewhere = found.assets[0] ?? null;
    if (elsewhere?.site && elsewhere.site !== state.site.id) {
      await selectSite(elsewhere.site);
      return search(text);
    }
  }
  const beacon = hit?.beacon ?? elsewhere?.beacon ?? null;
  const info = $("#pallet-info");
  $("#pallet-panel").hidden = false;
  if (!beacon) {
    state.highlight = null;
    info.replaceChildren(el("div", { class: "empty" }, `nothing matches “${q}”`));
    $("#trail").setAttribute("d", "");
    return;
  }
  state.highlight = beacon;
  if (hit && hit.level !== state.level) {
    $("#level").value = String(hit.level);
    selectLevel(hit.level);
  }
  if (state.tick) drawDots(state.tick.positions);
  renderInfo(hit ?? elsewhere);
  await drawTrail(beacon);
}

function renderInfo(p) {
  const info = $("#pallet-info");
  info.dataset.beacon = p.beacon;
  const zone = el("span", { class: "bay", "data-zone": p.zone ?? "" }, p.zone ? zoneName(p.zone) : "not in a zone");
  info.replaceChildren(
    el("div", { class: "big" }, p.label ?? p.beacon),
    el("div", { class: "kv" }, "bay / zone: "),
    el("div", { class: "kv small" }, p.beacon),
  );
  info.children[1].append(zone, el("span", { class: "zone-id" }, p.zone ? ` (${p.zone})` : ""));
  info.append(
    el("div", { class: "kv", id: "last-move" }, `last move: ${when(p.last_move)}`),
    el("div", { class: "kv" }, p.accuracy_m !== undefined && p.accuracy_m !== null
      ? `position ±${p.accuracy_m} m at ${clock(state.tick?.t)}`
      : "no live position"),
    el("div", { class: "kv small", id: "trail-info" }, ""),
  );
}

async function drawTrail(beacon) {
  const period = Number($("#period").value);
  const now = Date.now() / 1000;
  const h = await api(
    `/api/sites/${state.site.id}/beacons/${encodeURIComponent(beacon)}/history` +
      `?since=${Math.floor(now - period)}&until=${Math.ceil(now)}&limit=5000`,
  );
  if (state.highlight !== beacon) return;
  const fixes = h.fixes.filter((f) => f.level === state.level);
  const d = fixes.map((f, i) => `${i ? "L" : "M"}${f.x.toFixed(2)},${sy(f.y).toFixed(2)}`).join(" ");
  const trail = $("#trail");
  trail.setAttribute("d", d);
  trail.dataset.beacon = beacon;
  trail.dataset.fixes = String(fixes.length);
  const ti = $("#trail-info");
  if (ti) ti.textContent = `trail: ${fixes.length} fixes over the last ${duration(period)}`;
}

// ---------------------------------------------------------------------------- live stream

function onTick(tick) {
  state.tick = tick;
  drawDots(tick.positions);
  drawOccupancy(tick.zones);
  drawGateways(tick.gateways);
  drawAlerts(tick);
  // The hub ran this tick long after its data time: catching up after a restart, or
  // overloaded (docs/hub.md, Overload policy). Normal ticks run within about a second.
  if ((tick.lag_s ?? 0) >= BEHIND_S) {
    setStatus(`behind · ${clock(tick.t)} (${Math.round(tick.lag_s)} s behind)`, "behind");
  } else {
    setStatus(`live · ${clock(tick.t)}`, "live");
  }
  if (state.highlight) {
    const p = tick.positions.find((q) => q.beacon === state.highlight);
    if (p) {
      const bay = document.querySelector("#pallet-info .bay");
      if (bay && bay.dataset.zone !== (p.zone ?? "")) renderInfo(p);
      else {
        const lm = $("#last-move");
        if (lm) lm.textContent = `last move: ${when(p.last_move)}`;
      }
    }
  }
}

function connect() {
  if (state.stream) state.stream.close();
  const t = token();
  const url = `/api/sites/${state.site.id}/stream` + (t ? `?token=${encodeURIComponent(t)}` : "");
  const es = new EventSource(url);
  state.stream = es;
  es.addEventListener("tick", (ev) => onTick(JSON.parse(ev.data)));
  es.onerror = () => setStatus("reconnecting…", "down");
}

// ----------------------------------------------------------------------------- selection

function selectLevel(level) {
  state.level = level;
  drawSite();
  if (state.tick) {
    drawDots(state.tick.positions);
    drawOccupancy(state.tick.zones);
    drawGateways(state.tick.gateways);
  }
  drawStats();
}

async function selectSite(id) {
  state.site = await api(`/api/sites/${encodeURIComponent(id)}`);
  state.tick = null;
  state.highlight = null;
  $("#pallet-panel").hidden = true;
  $("#site").value = id;
  document.body.dataset.kind = state.site.kind;
  const levels = $("#level");
  levels.replaceChildren(
    ...state.site.levels.map((l) => el("option", { value: l.level }, l.name || `Level ${l.level}`)),
  );
  state.level = state.site.levels[0].level;
  levels.value = String(state.level);
  drawSite();
  const snap = await api(`/api/sites/${encodeURIComponent(id)}/gateways`);
  drawGateways(snap.gateways);
  connect();
  drawStats();
  history.replaceState(null, "", `#${id}`);
}

async function main() {
  try {
    const { sites } = await api("/api/sites");
    state.sites = sites;
    $("#site").replaceChildren(
      ...sites.map((s) => el("option", { value: s.id }, `${s.name || s.id} (${s.kind})`)),
    );
    const wanted = location.hash.slice(1);
    await selectSite(sites.some((s) => s.id === wanted) ? wanted : sites[0].id);
  } catch (e) {
    setStatus(String(e.message ?? e), "down");
    throw e;
  }
  $("#site").addEventListener("change", (e) => selectSite(e.target.value));
  $("#level").addEventListener("change", (e) => selectLevel(Number(e.target.value)));
  $("#period").addEventListener("change", () => {
    drawStats();
    if (state.highlight) drawTrail(state.highlight);
  });
  $("#search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    search($("#search").value).catch((err) => console.warn(err));
  });
  state.heatTimer = setInterval(drawStats, HEAT_REFRESH_MS);
}

main();
