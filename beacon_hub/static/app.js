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
// Watchdog. A hung hub keeps its stream open and sends nothing, which the EventSource cannot
// tell from a quiet one: without a tick for STALE_TICKS tick intervals (and at least
// STALE_MIN_S) the page says since when it has no data. The interval is the smallest step
// between the data times (`t`) of recent ticks; until two have come, DEFAULT_TICK_S.
const DEFAULT_TICK_S = 1; // EngineConfig.tick_interval_s's default: the hub ticks about once a second
const STALE_TICKS = 5;
const STALE_MIN_S = 5; // as BEHIND_S: a hub in step is never this late
const TICK_GAPS_KEPT = 8; // a slow client skips snapshots (docs/api.md): the smallest of 8 gaps is the interval
const RESTREAM_MS = 5000; // a stream the browser gave up on (an HTTP error such as 503) is reopened after this
const MAX_MATCHES = 20; // a search lists at most this many matches to pick from

const state = {
  sites: [],
  site: null, // geometry of the selected site (/api/sites/{site}); null while none is drawn
  level: 0,
  stream: null,
  tick: null, // the last tick received
  gateways: [], // the gateway list drawn last (a tick's, or the /gateways snapshot's)
  stale: false, // no tick for too long, or the stream broke: the data shown is not live
  tickGaps: [], // seconds between the data times of recent ticks
  watchdog: null,
  restream: null,
  loading: 0, // counts selectSite calls: an older one that resumes after a newer began gives up
  picking: 0, // likewise for search and selection
  highlight: null, // beacon id selected (search, a dot, a panel row)
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

// FastAPI answers {"detail": "..."}, or for a parameter that fails validation {"detail":
// [{"loc": ["query", "q"], "msg": "String should have at most 64 characters", ...}]}.
function problem(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((d) => {
        const where = (d.loc ?? []).filter((part) => !["query", "path", "body"].includes(part)).join(".");
        return where ? `${where}: ${d.msg}` : d.msg ?? JSON.stringify(d);
      })
      .join("; ");
  }
  return detail === null || detail === undefined ? null : JSON.stringify(detail);
}

class ApiError extends Error {
  constructor(path, status, detail) {
    super(`${detail} (HTTP ${status})`);
    this.path = path;
    this.status = status;
  }
}

function message(e) {
  return String(e?.message ?? e);
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
    let detail = null;
    try {
      detail = problem((await res.json()).detail);
    } catch {
      /* not JSON */
    }
    throw new ApiError(path, res.status, detail ?? res.statusText ?? "request failed");
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

// #status is a live region (role="status"): `text` is announced when it changes; `detail`
// changes with every tick (its clock) and is hidden from screen readers, or they would read
// the pill out once a second.
function setStatus(text, st, detail = "") {
  const s = $("#status");
  let [main, more] = s.children;
  if (!more) {
    main = el("span", { class: "status-text" });
    more = el("span", { class: "status-detail", "aria-hidden": "true" });
    s.replaceChildren(main, more);
  }
  if (main.textContent !== text) main.textContent = text;
  more.textContent = detail;
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
    const m = el("svg:g", { class: "gw", "data-gateway": g.id, "data-state": "unknown", transform: `translate(${g.x},${sy(g.y)})` });
    m.append(el("svg:rect", { x: -0.5, y: -0.5, width: 1, height: 1, rx: 0.15 }));
    m.append(el("svg:title", {}, g.name || g.id));
    gws.append(m);
  }
  $("#dots").replaceChildren();
  $("#trail").setAttribute("d", "");
}

// Nothing of a site stays drawn: while another loads, or when it failed to.
function clearLive() {
  $("#dots").replaceChildren();
  $("#trail").setAttribute("d", "");
  $("#counts").textContent = "";
  for (const id of ["#gateways", "#idle", "#lost", "#battery", "#occupancy", "#dwell"]) {
    empty($(id), "waiting for data");
  }
}

function clearMap() {
  for (const id of ["#floor", "#heat", "#zones", "#walls", "#gateway-marks"]) $(id).replaceChildren();
  const map = $("#map");
  map.removeAttribute("viewBox");
  delete map.dataset.site;
  delete map.dataset.level;
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
  drawCounts(onLevel);
}

function drawCounts(onLevel) {
  const kinds = {};
  for (const p of onLevel) kinds[p.kind ?? "other"] = (kinds[p.kind ?? "other"] ?? 0) + 1;
  const when = state.stale ? `at ${clock(state.tick?.t)}` : "live";
  $("#counts").textContent = `${onLevel.length} ${when} · ` +
    Object.entries(kinds).map(([k, n]) => `${n} ${k}`).join(" · ");
}

// --------------------------------------------------------------------------------- panels

function row(attrs, cells, tag = "div") {
  const r = el(tag, { class: "row", ...attrs });
  for (const [cls, text] of cells) r.append(el("span", { class: cls }, text));
  return r;
}

// A row that selects its beacon (a button: keyboard users reach it with Tab, press Enter).
function beaconRow(record, cells) {
  const r = row({ type: "button", "data-beacon": record.beacon, "data-zone": record.zone ?? null }, cells, "button");
  r.title = `show ${record.label ?? record.beacon}`;
  r.onclick = () => pick(record.beacon, record);
  return r;
}

// Rows keyed by data-beacon are updated in place, so the row a keyboard user is on keeps its
// focus from tick to tick (replacing it would drop the focus once a second).
function keyedRows(box, rows) {
  const old = new Map();
  for (const n of box.children) if (n.dataset.beacon) old.set(n.dataset.beacon, n);
  const kept = rows.map((fresh) => {
    const prev = old.get(fresh.dataset.beacon);
    if (!prev) return fresh;
    if (prev.innerHTML !== fresh.innerHTML) prev.replaceChildren(...fresh.childNodes);
    for (const a of [...prev.attributes]) if (!fresh.hasAttribute(a.name)) prev.removeAttribute(a.name);
    for (const a of fresh.attributes) {
      if (prev.getAttribute(a.name) !== a.value) prev.setAttribute(a.name, a.value);
    }
    prev.onclick = fresh.onclick; // with the newest record
    return prev;
  });
  kept.forEach((r, i) => {
    if (box.children[i] !== r) box.insertBefore(r, box.children[i] ?? null);
  });
  while (box.children.length > kept.length) box.lastElementChild.remove();
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

// While the page is stale no gateway's state is known: the last one drawn may be hours old.
function drawGateways(gateways) {
  state.gateways = gateways;
  const box = $("#gateways");
  const shown = (g) => (state.stale ? "unknown" : g.state);
  box.replaceChildren(
    ...gateways.map((g) => {
      const hb = g.heartbeat;
      const dropped = hb && hb.adverts_seen ? (100 * hb.adverts_dropped) / hb.adverts_seen : null;
      const r = row(
        { "data-gateway": g.id, "data-state": shown(g), "data-reason": g.offline_reason ?? "" },
        [
          ["led", ""],
          ["name", g.name || g.id],
          ["meta", g.state === "offline" && g.offline_reason ? OFFLINE_WHY[g.offline_reason] ?? "" : clock(lastHeard(g))],
          ["meta", g.loss_rate === null ? "loss —" : `loss ${(100 * g.loss_rate).toFixed(1)}%`],
          ["meta", g.clock_skew_s === null ? "skew —" : `skew ${g.clock_skew_s.toFixed(2)}s`],
          ["meta hb", hb ? `q ${hb.queue_depth} · drop ${dropped === null ? "—" : dropped.toFixed(1) + "%"} · up ${duration(hb.uptime_s)}` : ""],
        ],
      );
      r.title = (state.stale ? `state unknown: no data since ${clock(state.tick?.t)}\nlast known: ` : "") +
        gatewayTitle(g);
      return r;
    }),
  );
  for (const mark of document.querySelectorAll("#gateway-marks [data-gateway]")) {
    const g = gateways.find((x) => x.id === mark.dataset.gateway);
    mark.dataset.state = g ? shown(g) : "unknown";
  }
}

function drawAlerts(tick) {
  const idle = $("#idle");
  if (!tick.idle.length) empty(idle, "no pallet idle too long");
  else {
    keyedRows(
      idle,
      tick.idle.map((p) =>
        beaconRow(p, [
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
    keyedRows(
      lost,
      tick.lost.slice(0, 50).map((b) =>
        beaconRow(b, [
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
    keyedRows(
      bat,
      tick.low_battery.slice(0, 50).map((b) =>
        beaconRow(b, [
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

// ------------------------------------------------------------------------ search + select

const lower = (v) => (v ?? "").toLowerCase();

function clearSelection() {
  state.highlight = null;
  $("#pallet-panel").hidden = true;
  delete $("#pallet-info").dataset.beacon;
  $("#trail").setAttribute("d", "");
  if (state.tick) drawDots(state.tick.positions);
}

function showInPanel(...nodes) {
  state.highlight = null;
  const info = $("#pallet-info");
  delete info.dataset.beacon;
  info.replaceChildren(...nodes);
  $("#pallet-panel").hidden = false;
  $("#trail").setAttribute("d", "");
  if (state.tick) drawDots(state.tick.positions);
}

function searchFailed(e) {
  console.warn(e);
  showInPanel(el("div", { class: "empty search-failed" }, `search failed: ${message(e)}`));
}

// Live positions on this site first (no request for an exact or single match), then the
// API's, which has the other sites' live positions and registered assets without one.
async function search(text) {
  const q = text.trim();
  const seq = ++state.picking;
  if (!q) return clearSelection();
  const needle = q.toLowerCase();
  const positions = state.tick?.positions ?? [];
  const exact = positions.find((p) => lower(p.label) === needle || p.beacon === needle);
  if (exact) return select(exact.beacon, exact);
  const here = positions.filter((p) => lower(p.label).includes(needle) || p.beacon.includes(needle));
  if (here.length === 1) return select(here[0].beacon, here[0]);
  const found = await api(`/api/assets?q=${encodeURIComponent(q)}&limit=${MAX_MATCHES + 1}`);
  if (seq !== state.picking) return;
  const matches = here.map((p) => ({ ...p, site: state.site?.id ?? null }));
  for (const a of found.assets) {
    if (!matches.some((m) => m.beacon === a.beacon)) matches.push(a);
  }
  const same = matches.find((m) => lower(m.label) === needle || m.beacon === needle);
  if (same) return select(same.beacon, same, same.site);
  if (matches.length === 1) return select(matches[0].beacon, matches[0], matches[0].site);
  if (!matches.length) return showInPanel(el("div", { class: "empty" }, `nothing matches “${q}”`));
  listMatches(q, matches);
}

function siteName(id) {
  const s = state.sites.find((x) => x.id === id);
  return s ? s.name || s.id : id;
}

function listMatches(q, matches) {
  const shown = matches.slice(0, MAX_MATCHES);
  const head = matches.length > MAX_MATCHES
    ? `more than ${MAX_MATCHES} match “${q}”; the first ${MAX_MATCHES} (type more to narrow it):`
    : `${matches.length} match “${q}”:`;
  const list = el("div", { class: "rows matches" });
  for (const m of shown) {
    const where = !m.site
      ? "no live position"
      : m.site === state.site?.id
        ? zoneName(m.zone)
        : `${siteName(m.site)}${m.zone ? ` · ${m.zone}` : ""}`;
    const r = row({ type: "button", "data-beacon": m.beacon }, [["name", m.label ?? m.beacon], ["meta", where]], "button");
    r.onclick = () => {
      $("#search").value = m.label ?? m.beacon;
      pick(m.beacon, m, m.site);
    };
    list.append(r);
  }
  showInPanel(el("div", { class: "kv note" }, head), list);
}

// Select a beacon (search, a map dot, a panel row): highlight its dot, show its panel and
// trail; on `site` if that is given and not the one shown.
async function select(beacon, known = null, site = null) {
  const seq = ++state.picking;
  if (site && site !== state.site?.id) {
    await selectSite(site);
    if (seq !== state.picking) return;
  }
  const p = state.tick?.positions.find((q) => q.beacon === beacon) ?? null;
  state.highlight = beacon;
  if (p && p.level !== state.level) {
    $("#level").value = String(p.level);
    selectLevel(p.level);
  }
  if (state.tick) drawDots(state.tick.positions);
  renderInfo(p ?? known ?? { beacon });
  $("#pallet-panel").hidden = false;
  await drawTrail(beacon);
}

function pick(beacon, known = null, site = null) {
  select(beacon, known, site).catch(searchFailed);
}

function renderInfo(p) {
  const info = $("#pallet-info");
  info.dataset.beacon = p.beacon;
  const live = p.accuracy_m !== undefined && p.accuracy_m !== null;
  info.dataset.live = live ? "yes" : "no";
  const zone = el("span", { class: "bay", "data-zone": p.zone ?? "" }, p.zone ? zoneName(p.zone) : "not in a zone");
  info.replaceChildren(
    el("div", { class: "big" }, p.label ?? p.beacon),
    el("div", { class: "kv" }, "bay / zone: "),
    el("div", { class: "kv small" }, p.beacon),
  );
  info.children[1].append(zone, el("span", { class: "zone-id" }, p.zone ? ` (${p.zone})` : ""));
  info.append(
    el("div", { class: "kv", id: "last-move" }, `last move: ${when(p.last_move)}`),
    el("div", { class: "kv" }, live ? `position ±${p.accuracy_m} m at ${clock(state.tick?.t)}` : "no live position"),
    el("div", { class: "kv small", id: "trail-info" }, ""),
  );
}

async function drawTrail(beacon) {
  if (!state.site) return;
  const period = Number($("#period").value);
  const now = Date.now() / 1000;
  let h;
  try {
    h = await api(
      `/api/sites/${state.site.id}/beacons/${encodeURIComponent(beacon)}/history` +
        `?since=${Math.floor(now - period)}&until=${Math.ceil(now)}&limit=5000`,
    );
  } catch (e) {
    console.warn(e);
    const ti = $("#trail-info");
    if (ti && state.highlight === beacon) ti.textContent = `no trail: ${message(e)}`;
    return;
  }
  if (state.highlight !== beacon || state.site?.id !== h.site) return;
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

function tickInterval() {
  return state.tickGaps.length ? Math.min(...state.tickGaps) : DEFAULT_TICK_S;
}

function armWatchdog() {
  clearTimeout(state.watchdog);
  const ms = 1000 * Math.max(STALE_MIN_S, STALE_TICKS * tickInterval());
  state.watchdog = setTimeout(() => markStale(false), ms);
}

// No tick for too long (`down` false), or the stream broke (`down`): grey the map, show no
// gateway's state as known, say since when; the next tick undoes it (onTick).
function markStale(down) {
  state.stale = true;
  document.body.dataset.stale = down ? "down" : "silent";
  const since = state.tick ? `no data since ${clock(state.tick.t)}` : "no data yet";
  if (down) {
    clearTimeout(state.watchdog); // the stream says more than the watchdog can
    setStatus("reconnecting…", "down", ` · ${since}`);
  } else {
    setStatus(since, "stale");
  }
  drawGateways(state.gateways);
  if (state.tick) drawCounts(state.tick.positions.filter((p) => p.level === state.level));
}

function onTick(tick) {
  if (tick.site !== state.site?.id) return; // a site no longer shown
  if (state.tick && tick.t > state.tick.t) {
    state.tickGaps.push(tick.t - state.tick.t);
    if (state.tickGaps.length > TICK_GAPS_KEPT) state.tickGaps.shift();
  }
  state.tick = tick;
  state.stale = false;
  delete document.body.dataset.stale;
  armWatchdog();
  drawDots(tick.positions);
  drawOccupancy(tick.zones);
  drawGateways(tick.gateways);
  drawAlerts(tick);
  // The hub ran this tick long after its data time: catching up after a restart, or
  // overloaded (docs/hub.md, Overload policy). Normal ticks run within about a second.
  if ((tick.lag_s ?? 0) >= BEHIND_S) {
    setStatus("behind", "behind", ` · ${clock(tick.t)} (${Math.round(tick.lag_s)} s behind)`);
  } else {
    setStatus("live", "live", ` · ${clock(tick.t)}`);
  }
  if (state.highlight) {
    const p = tick.positions.find((q) => q.beacon === state.highlight);
    const info = $("#pallet-info");
    if (p && info.dataset.beacon === p.beacon) {
      const bay = info.querySelector(".bay");
      // the first tick after a search moved to this site: its position is known only now
      if (info.dataset.live !== "yes" && p.level !== state.level) {
        $("#level").value = String(p.level);
        selectLevel(p.level);
      }
      if (info.dataset.live !== "yes" || (bay && bay.dataset.zone !== (p.zone ?? ""))) renderInfo(p);
      else {
        const lm = $("#last-move");
        if (lm) lm.textContent = `last move: ${when(p.last_move)}`;
      }
    }
  }
}

function closeStream() {
  if (state.stream) state.stream.close();
  state.stream = null;
  clearTimeout(state.watchdog);
  clearTimeout(state.restream);
}

function connect() {
  closeStream();
  const t = token();
  const url = `/api/sites/${state.site.id}/stream` + (t ? `?token=${encodeURIComponent(t)}` : "");
  const es = new EventSource(url);
  state.stream = es;
  const current = () => state.stream === es;
  es.addEventListener("tick", (ev) => {
    if (current()) onTick(JSON.parse(ev.data));
  });
  es.onopen = () => {
    if (current()) armWatchdog();
  };
  es.onerror = () => {
    if (!current()) return;
    markStale(true);
    // A network error is retried by the browser; an HTTP error (503: too many streams) is not.
    if (es.readyState === EventSource.CLOSED) {
      state.restream = setTimeout(() => current() && connect(), RESTREAM_MS);
    }
  };
  armWatchdog();
}

// ----------------------------------------------------------------------------- selection

function selectLevel(level) {
  if (!state.site) return;
  state.level = level;
  drawSite();
  drawGateways(state.gateways);
  if (state.tick) {
    drawDots(state.tick.positions);
    drawOccupancy(state.tick.zones);
  }
  drawStats();
}

// The old site's stream is closed and its data cleared before anything is awaited, so no tick
// of it can land on the new map. A site that fails to load leaves no site drawn (the select
// shows none, so picking it again retries) and says why in the status.
async function selectSite(id) {
  const seq = ++state.loading;
  closeStream();
  Object.assign(state, { tick: null, gateways: [], tickGaps: [], stale: false, highlight: null });
  delete document.body.dataset.stale;
  $("#pallet-panel").hidden = true;
  delete $("#pallet-info").dataset.beacon;
  $("#site").value = id;
  clearLive();
  setStatus(`loading ${siteName(id)}…`, "connecting");
  let site;
  try {
    site = await api(`/api/sites/${encodeURIComponent(id)}`);
  } catch (e) {
    if (seq === state.loading) {
      state.site = null;
      clearMap();
      $("#site").value = "";
      setStatus(`${id}: could not load the site: ${message(e)}`, "down");
    }
    throw e;
  }
  if (seq !== state.loading) return;
  state.site = site;
  document.body.dataset.kind = site.kind;
  const levels = $("#level");
  levels.replaceChildren(
    ...site.levels.map((l) => el("option", { value: l.level }, l.name || `Level ${l.level}`)),
  );
  state.level = site.levels[0].level;
  levels.value = String(state.level);
  drawSite();
  connect();
  drawStats();
  history.replaceState(null, "", `#${id}`);
  // The gateways until the first tick brings them; the ticks carry them, so a failure here
  // costs nothing more.
  try {
    const snap = await api(`/api/sites/${encodeURIComponent(id)}/gateways`);
    if (seq === state.loading && !state.tick && snap.site === id) drawGateways(snap.gateways);
  } catch (e) {
    console.warn(e);
  }
}

async function main() {
  $("#site").addEventListener("change", (e) => {
    selectSite(e.target.value).catch((err) => {
      console.warn(err);
      if ($("#status").dataset.state !== "down") setStatus(message(err), "down");
    });
  });
  $("#level").addEventListener("change", (e) => selectLevel(Number(e.target.value)));
  $("#period").addEventListener("change", () => {
    drawStats();
    if (state.highlight) drawTrail(state.highlight);
  });
  $("#search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    search($("#search").value).catch(searchFailed);
  });
  $("#dots").addEventListener("click", (e) => {
    const dot = e.target.closest(".dot");
    if (!dot) return;
    $("#search").value = dot.dataset.label || dot.dataset.beacon;
    const p = state.tick?.positions.find((q) => q.beacon === dot.dataset.beacon);
    pick(dot.dataset.beacon, p);
  });
  state.heatTimer = setInterval(drawStats, HEAT_REFRESH_MS);
  try {
    const { sites } = await api("/api/sites");
    state.sites = sites;
    $("#site").replaceChildren(
      ...sites.map((s) => el("option", { value: s.id }, `${s.name || s.id} (${s.kind})`)),
    );
    const wanted = location.hash.slice(1);
    await selectSite(sites.some((s) => s.id === wanted) ? wanted : sites[0].id);
  } catch (e) {
    console.error(e);
    if ($("#status").dataset.state !== "down") setStatus(message(e), "down");
  }
}

main();
