// The analysts' page: asks for the analyst's key (sessionStorage only), calls the audit JSON API with
// `Authorization: Bearer`, and draws its figures as SVG. No library and nothing from another origin.
"use strict";

const KEY_ITEM = "imx-audit-key";
const COLOURS = ["#3465a4", "#e07b00", "#4e9a06", "#a40000", "#75507b", "#1f8a8a", "#c4a000", "#555753"];
const SVG = "http://www.w3.org/2000/svg";
const $ = (selector) => document.querySelector(selector);

class Refused extends Error {}
class OutOfScope extends Error {}
class Unanswerable extends Error {}  // a 410 (purged by retention) or 422 (e.g. more than 400 days)

function key() { return sessionStorage.getItem(KEY_ITEM) || ""; }

function setStatus(text, refused) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("refused", Boolean(refused));
}

function period() {
  const params = new URLSearchParams();
  const since = $("#since").value, until = $("#until").value;
  if (since) params.set("since", since + "T00:00:00Z");
  if (until) {
    const end = new Date(until + "T00:00:00Z");
    end.setUTCDate(end.getUTCDate() + 1);  // the API's until is exclusive; the form's day is included
    params.set("until", end.toISOString());
  }
  return params;
}

async function api(path, params) {
  const query = params && params.toString() ? "?" + params.toString() : "";
  const headers = key() ? { Authorization: "Bearer " + key() } : {};
  const response = await fetch(path + query, { headers, cache: "no-store" });
  if (response.status === 401) throw new Refused("refused");
  if (response.status === 403) throw new OutOfScope((await response.json()).detail || "outside this key's scope");
  if (response.status === 404) return null;
  if (response.status === 410 || response.status === 422) throw new Unanswerable(await reason(response));
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response;
}

async function reason(response) {
  const body = await response.json().catch(() => ({}));
  const said = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail;
  const kept = body.retained_from ? " (records are kept from " + body.retained_from + ")" : "";
  return (said || "HTTP " + response.status) + kept;
}

async function json(path, params) {
  const response = await api(path, params);
  return response === null ? null : response.json();
}

function el(tag, attrs, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function table(target, head, rows) {
  target.replaceChildren(
    el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows.map((row) => el("tr", {}, ...row.map((v) => el("td", typeof v === "number" ? { class: "n" } : {}, v ?? "")))))
  );
}

function legend(names) {
  return el("div", { class: "legend" }, ...names.map((name, i) => {
    const item = el("span", {}, name);
    item.style.setProperty("--c", COLOURS[i % COLOURS.length]);
    return item;
  }));
}

function niceMax(value) {
  if (value <= 0) return 1;
  const step = Math.pow(10, Math.floor(Math.log10(value)));
  return [1, 2, 5, 10].map((m) => m * step).find((v) => v >= value);
}

// Grouped bars: one group per category, one bar per series.
function barChart(categories, series, unit) {
  const width = Math.max(480, 60 + categories.length * (series.length * 14 + 18)), height = 220;
  const left = 56, bottom = 40, top = 10, plotH = height - bottom - top;
  const max = niceMax(Math.max(0, ...series.flatMap((s) => s.values.map((v) => v ?? 0))));
  const svg = el("svg:svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  for (let i = 0; i <= 4; i++) {
    const y = top + plotH - (plotH * i) / 4;
    svg.append(el("svg:line", { x1: left, x2: width, y1: y, y2: y, stroke: "#e3e3ea" }));
    svg.append(el("svg:text", { x: left - 6, y: y + 4, "text-anchor": "end" }, formatNumber((max * i) / 4)));
  }
  svg.append(el("svg:text", { x: 4, y: top + 8 }, unit));
  const group = (width - left) / Math.max(1, categories.length);
  const bar = Math.max(3, Math.min(24, (group - 10) / Math.max(1, series.length)));
  categories.forEach((category, c) => {
    const x0 = left + c * group + (group - bar * series.length) / 2;
    series.forEach((s, i) => {
      const value = s.values[c] ?? 0, h = (plotH * value) / max;
      const rect = el("svg:rect", { x: x0 + i * bar, y: top + plotH - h, width: bar - 1, height: h, fill: COLOURS[i % COLOURS.length] });
      rect.append(el("svg:title", {}, `${s.name}, ${category}: ${formatNumber(value)} ${unit}`));
      svg.append(rect);
    });
    svg.append(el("svg:text", { x: left + c * group + group / 2, y: height - bottom + 16, "text-anchor": "middle" }, category));
  });
  return el("div", {}, svg, legend(series.map((s) => s.name)));
}

function formatNumber(v) {
  if (v === null || v === undefined) return "";
  return Math.abs(v) >= 100 || Number.isInteger(v) ? Math.round(v).toLocaleString("en") : v.toFixed(1);
}

function panel(id) {
  const section = $("#" + id);
  return { section, note: section.querySelector(".note"), chart: section.querySelector(".chart"), table: section.querySelector("table") };
}

function clearPanel(p, note) {
  p.note.textContent = note || "";
  if (p.chart) p.chart.replaceChildren();
  p.table.replaceChildren();
}

async function showVolumes(by) {
  const p = panel("volumes-" + by);
  const params = period();
  params.set("by", by);
  const body = await json("/audit/volumes", params);
  const days = [...new Set(body.days.map((d) => d.day))].sort();
  const keys = [...new Set(body.days.map((d) => d.key))].sort();
  const byDayKey = new Map(body.days.map((d) => [d.day + "|" + d.key, d]));
  clearPanel(p, body.days.length ? "" : "Nothing recorded in this period.");
  if (!body.days.length) return;
  p.chart.append(barChart(days, keys.map((k) => ({ name: k, values: days.map((d) => byDayKey.get(d + "|" + k)?.instances ?? 0) })), "instances"));
  const head = ["day", by === "org" ? "organisation" : "partner", "instances", "studies", "bytes"];
  if (by === "partner") head.push("delivered", "failed");
  table(p.table, head, body.days.map((d) => {
    const row = [d.day, d.key, d.instances, d.studies, d.bytes];
    if (by === "partner") row.push(d.delivered, d.failed);
    return row;
  }));
}

async function showTurnaround() {
  const p = panel("turnaround");
  const body = await json("/audit/turnaround", period());
  clearPanel(p, body.partners.length ? "" : "No receipts stored in this period.");
  if (!body.partners.length) return;
  const names = ["p50", "p90", "p95", "p99"];
  p.chart.append(barChart(body.partners.map((t) => t.partner_id), names.map((n) => ({ name: n, values: body.partners.map((t) => t.overall[n]) })), "ms"));
  const rows = [];
  for (const t of body.partners) {
    rows.push([t.partner_id, "overall", t.overall.count, ...names.map((n) => t.overall[n])]);
    for (const d of t.days) rows.push([t.partner_id, d.day, d.count, ...names.map((n) => d[n])]);
  }
  table(p.table, ["partner", "day", "stored", "p50 ms", "p90 ms", "p95 ms", "p99 ms"], rows.map((r) => r.map((v) => (typeof v === "number" ? Math.round(v) : v))));
}

async function showQuarantines() {
  const p = panel("quarantines");
  const body = await json("/audit/quarantines", period());
  clearPanel(p, body.days.length ? "" : "No quarantines or dead letters in this period.");
  if (!body.days.length) return;
  const totals = new Map();
  for (const d of body.days) {
    const name = `${d.kind}: ${d.stage} / ${d.reason}`;
    totals.set(name, (totals.get(name) || 0) + d.count);
  }
  const reasons = [...totals.keys()].sort();
  p.chart.append(barChart(reasons, [{ name: "count", values: reasons.map((r) => totals.get(r)) }], "events"));
  table(p.table, ["day", "kind", "stage", "reason", "count"], body.days.map((d) => [d.day, d.kind, d.stage, d.reason, d.count]));
}

async function guarded(id, show) {
  try {
    await show();
  } catch (error) {
    // Whatever the failure, the panel no longer shows the previous period's figures as if they were these.
    if (error instanceof OutOfScope) clearPanel(panel(id), "Not available for this key: " + error.message);
    else if (error instanceof Unanswerable) clearPanel(panel(id), "Not answered for this period: " + error.message);
    else {
      clearPanel(panel(id), "");
      throw error;
    }
  }
}

async function showTrail(event) {
  if (event) event.preventDefault();
  const p = panel("trail");
  const uid = $("#study-uid").value.trim();
  p.section.querySelector(".destinations").replaceChildren();
  if (!uid) return clearPanel(p, "");
  try {
    const trail = await json("/audit/studies/" + encodeURIComponent(uid));
    if (trail === null) return clearPanel(p, "No audit records for this study (or none your key may see).");
    clearPanel(p, `${trail.instances} instance(s), first ${trail.first_at}, last ${trail.last_at}`);
    const dest = el("table");
    table(dest, ["partner", "route", "profile", "state", "delivered", "stored", "failed", "quarantined"],
      trail.destinations.map((d) => [d.partner_id, d.route_id, d.profile ? `${d.profile} v${d.profile_version}` : "", d.state, d.delivered, d.stored, d.failed, d.quarantined]));
    p.section.querySelector(".destinations").append(dest);
    table(p.table, ["occurred at", "event", "organisation", "partner", "route", "profile", "status", "reason"],
      trail.events.map((e) => [e.occurred_at, e.event_type, e.source_org, e.partner_id, e.route_id, e.profile, e.status, e.reason]));
  } catch (error) {
    handle(error);
  }
}

const EXPORTS = {
  summary: () => ["/audit/summary", period()],
  "volumes-org": () => { const q = period(); q.set("by", "org"); return ["/audit/volumes", q]; },
  "volumes-partner": () => { const q = period(); q.set("by", "partner"); return ["/audit/volumes", q]; },
  turnaround: () => ["/audit/turnaround", period()],
  quarantines: () => ["/audit/quarantines", period()],
};

async function download(event) {
  event.preventDefault();
  const link = event.currentTarget, note = $("#export-note");
  const kind = link.dataset.export, format = link.dataset.format;
  let path, params;
  if (kind === "events" || kind === "study") {
    params = kind === "events" ? period() : new URLSearchParams();
    params.set("format", format);
    if (kind === "events") params.set("limit", "1000");
    const uid = $("#study-uid").value.trim();
    if (kind === "study" && !uid) { note.textContent = "Enter a Study Instance UID above first."; return; }
    path = kind === "events" ? "/audit/export/events" : "/audit/export/studies/" + encodeURIComponent(uid);
  } else {
    [path, params] = EXPORTS[kind]();
  }
  try {
    const response = await api(path, params);
    if (response === null) { note.textContent = "Nothing to export for this study."; return; }
    const blob = await response.blob();
    const ext = format === "dicom-xml" ? "xml" : "json";
    const a = el("a", { href: URL.createObjectURL(blob), download: `imx-audit-${kind}.${ext}` });
    document.body.append(a);
    a.click();
    a.remove();
    note.textContent = `Downloaded ${kind}${format ? " (" + format + ")" : ""}` +
      (response.headers.get("imx-next-cursor")
        ? "; more events follow: this file holds the first page (up to 1,000, fewer when the period is sparse)" +
          " — narrow the period, or page through GET /audit/export/events with its imx-next-cursor."
        : ".");
  } catch (error) {
    if (error instanceof OutOfScope) note.textContent = "Not available for this key: " + error.message;
    else handle(error);
  }
}

function refuse() {
  $("#data").hidden = true;
  for (const id of ["volumes-org", "volumes-partner", "turnaround", "quarantines", "trail"]) clearPanel(panel(id), "");
  setStatus("Refused: the audit API did not accept this key. Enter a valid analyst API key.", true);
}

function handle(error) {
  if (error instanceof Refused) return refuse();
  setStatus("The audit API could not answer: " + error.message, true);
}

async function refresh(event) {
  if (event) event.preventDefault();
  // Asked even without a key: the API decides (it refuses, unless deployed open behind a proxy).
  setStatus("Loading…", false);
  try {
    await Promise.all([
      guarded("volumes-org", () => showVolumes("org")),
      guarded("volumes-partner", () => showVolumes("partner")),
      guarded("turnaround", showTurnaround),
      guarded("quarantines", showQuarantines),
    ]);
    $("#data").hidden = false;
    setStatus("Figures as of " + new Date().toISOString() + " (UTC days).", false);
    if ($("#study-uid").value.trim()) await showTrail();
  } catch (error) {
    handle(error);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_ITEM, $("#key").value.trim());
    $("#key").value = "";
    refresh();
  });
  $("#forget-key").addEventListener("click", () => { sessionStorage.removeItem(KEY_ITEM); refresh(); });
  $("#period").addEventListener("submit", refresh);
  $("#trail-form").addEventListener("submit", showTrail);
  for (const link of document.querySelectorAll("a[data-export]")) link.addEventListener("click", download);
  refresh();
});
