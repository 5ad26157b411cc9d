"""A read-only web dashboard of a federation (``coordinator run --dashboard-port N``).

One page, served with its script and style sheet from this module (no external assets: it works
offline), that polls a few JSON documents and shows the federation id, the coordinator's state,
the current round and phase, who joined / is late / is gone, every round (state, attempts,
survivors, who dropped and why, wall time, the held-out metric), and each participant's epsilon
against the federation's budget. The documents are given by the caller as functions
(``fedmask.cli`` passes the ones ``fedmask coordinator status|rounds|participants|ledger --json``
print), so that the dashboard and the commands cannot disagree.

Security: it only reads (GET and HEAD; any other method is 405); it listens on loopback unless
asked otherwise (``serve_dashboard(..., public=True)``), and on loopback it answers only requests
whose Host header is a loopback name (no DNS rebinding); every response carries a strict
Content-Security-Policy (no inline script or style, nothing from elsewhere), ``nosniff``,
``no-store`` and ``frame-ancestors 'none'``. The script renders every string it is sent as text
(``textContent`` / text nodes, never HTML), and the JSON escapes ``<``, ``>`` and ``&``.

The server is a stdlib ``ThreadingHTTPServer`` on a daemon thread (as ``prometheus_client``
serves ``/metrics``): it never runs on the coordinator's event loop.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger("fedmask.coordinator.dashboard")

# The documents a dashboard serves at /api/NAME.json: NAME -> a function building it.
Documents = Mapping[str, Callable[[], Any]]
DOCUMENT_NAMES = ("status", "rounds", "participants", "ledger", "federation")
REFRESH_S = 3

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
ALLOWED_METHODS = "GET, HEAD"


class DashboardError(Exception):
    """The dashboard cannot listen as asked (the message says why, in one line)."""


def is_loopback(host: str, *, resolve: bool = True) -> bool:
    """``host`` (a name or an address) only reaches this machine: ``localhost``, 127.0.0.0/8,
    ``::1``. With ``resolve``, a name other than ``localhost`` counts when every address it
    resolves to does (for an address to listen on; never for a Host header, whose name a
    rebinding attacker points at 127.0.0.1)."""
    name = host.strip().strip("[]")
    if not name:
        return False  # "" listens on every interface
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    if not resolve:
        return False
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


def json_text(document: Any) -> str:
    """The document as the CLI prints it (``--json``), with ``<``, ``>`` and ``&`` escaped
    (``\\u003c``...): the same JSON value, and no markup even if something renders it as HTML."""
    text = json.dumps(document, indent=2, sort_keys=True, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") + "\n"


def _host_of(header: str) -> str:
    """The host part of a Host header (``localhost:8080``, ``[::1]:8080``, ``127.0.0.1``)."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], documents: Documents, public: bool) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.documents = documents
        self.public = public
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "fedmask-dashboard"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def __getattr__(self, name: str) -> Callable[[], None]:
        # BaseHTTPRequestHandler answers a method it has no do_METHOD for with 501; this is a
        # read-only server: every method but GET and HEAD is "not allowed" (405).
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def end_headers(self) -> None:
        for header, value in SECURITY_HEADERS:
            self.send_header(header, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _not_allowed(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", b"read-only: GET and HEAD only\n", True)

    def _answer(self, body: bool) -> None:
        if not self.server.public and not is_loopback(_host_of(self.headers.get("Host", "")), resolve=False):
            # A page elsewhere that rebinds its name to 127.0.0.1 must not read the dashboard.
            self._send(HTTPStatus.MISDIRECTED_REQUEST, "text/plain; charset=utf-8", b"loopback only\n", body)
            return
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", PAGE_HTML.encode(), body)
        elif path == "/dashboard.js":
            self._send(HTTPStatus.OK, "text/javascript; charset=utf-8", PAGE_JS.encode(), body)
        elif path == "/dashboard.css":
            self._send(HTTPStatus.OK, "text/css; charset=utf-8", PAGE_CSS.encode(), body)
        elif path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, "image/x-icon", b"", False)
        elif path.startswith("/api/") and path.endswith(".json") and path[5:-5] in self.server.documents:
            self._document(path[5:-5], body)
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n", body)

    def _document(self, name: str, body: bool) -> None:
        try:
            text = json_text(self.server.documents[name]())
            status = HTTPStatus.OK
        except Exception as exc:  # the store or status.json unreadable just now: say why, keep serving
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            text = json_text({"error": message})
            status = HTTPStatus.SERVICE_UNAVAILABLE
        self._send(status, "application/json; charset=utf-8", text.encode(), body)

    def _send(self, status: HTTPStatus, content_type: str, payload: bytes, body: bool) -> None:
        self.send_response(status)
        if status is HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", ALLOWED_METHODS)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)


@dataclass
class DashboardEndpoint:
    """A listening dashboard; ``close`` stops it."""

    host: str
    port: int
    _server: _Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_dashboard(documents: Documents, host: str, port: int, *, public: bool = False) -> DashboardEndpoint:
    """Serve the dashboard on ``host:port`` (0: a free port) from a daemon thread. A host that is
    not loopback is refused unless ``public`` (then the operator puts it behind their own
    authentication and TLS: the dashboard has none)."""
    if not public and not is_loopback(host):
        raise DashboardError(
            f"the dashboard has no authentication: it listens on loopback only; to serve it on {host} "
            "(behind your own TLS and authentication) add --dashboard-public"
        )
    try:
        server = _Server((host, port), documents, public)
    except OSError as exc:
        raise DashboardError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="fedmask-dashboard", daemon=True)
    thread.start()
    return DashboardEndpoint(host, int(server.server_address[1]), server, thread)


# --- the page ---------------------------------------------------------------------------------------

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fedmask federation</title>
<link rel="stylesheet" href="/dashboard.css">
<script src="/dashboard.js" defer></script>
</head>
<body>
<header>
  <h1>fedmask federation <span id="federation-id">-</span></h1>
  <p id="updated" class="muted">loading...</p>
</header>
<p id="banner" class="banner" hidden></p>
<section class="cards">
  <div class="card" id="coordinator-card">
    <h2>Coordinator</h2>
    <p><span id="coordinator-state" class="badge">-</span> <span id="coordinator-summary"></span></p>
    <p id="stop-request" class="warn" hidden></p>
    <p class="muted" id="last-event"></p>
  </div>
  <div class="card" id="round-card">
    <h2>Round <span id="round-number">-</span></h2>
    <p id="round-summary"></p>
    <ol id="phases" class="phases"></ol>
    <dl class="standing">
      <dt>joined</dt><dd id="joined">-</dd>
      <dt>late</dt><dd id="late">-</dd>
      <dt>gone</dt><dd id="gone">-</dd>
    </dl>
  </div>
  <div class="card" id="progress-card">
    <h2>Progress</h2>
    <p id="progress-summary"></p>
    <svg id="metric-chart" class="chart" viewBox="0 0 320 120" role="img" aria-label="held-out metric per round"></svg>
    <p class="muted" id="metric-note"></p>
  </div>
</section>
<section>
  <h2>Participants</h2>
  <p class="muted" id="budget-note"></p>
  <table id="participants">
    <thead><tr><th>name</th><th>organisation</th><th>online</th><th>last seen</th>
    <th>epsilon against budget</th><th>status</th></tr></thead>
    <tbody></tbody>
  </table>
</section>
<section>
  <h2>Rounds</h2>
  <table id="rounds">
    <thead><tr><th>round</th><th>state</th><th>attempts</th><th>survivors</th><th>dropped</th>
    <th>held-out accuracy at start</th><th>wall</th></tr></thead>
    <tbody></tbody>
  </table>
</section>
<footer class="muted">Read-only. The same documents as <code>fedmask coordinator status|rounds|participants|ledger
--json</code>, at <code>/api/*.json</code>.</footer>
</body>
</html>
"""

PAGE_CSS = """
:root { --fg: #1d2330; --muted: #6b7385; --line: #dde1e8; --bg: #f6f7f9; --card: #fff;
  --ok: #1f8a4c; --warn: #b4690e; --bad: #c0392b; --bar: #3867d6; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1180px; padding: 16px 24px 32px; font: 14px/1.45 system-ui, sans-serif;
  color: var(--fg); background: var(--bg); }
h1 { font-size: 20px; margin: 0; } h2 { font-size: 15px; margin: 0 0 8px; }
header { display: flex; justify-content: space-between; align-items: baseline; flex-wrap: wrap; gap: 8px; }
#federation-id { font-family: ui-monospace, monospace; font-weight: normal; font-size: 15px; color: var(--muted); }
.muted { color: var(--muted); } .warn { color: var(--warn); }
.banner { background: #fdecea; border: 1px solid var(--bad); color: var(--bad); padding: 8px 12px; border-radius: 6px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 12px; margin: 12px 0; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.card p { margin: 4px 0; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; background: #e8ebf0; font-weight: 600; }
.badge.running { background: #dff3e7; color: var(--ok); } .badge.stopping, .badge.finishing { color: var(--warn); }
.badge.failed, .badge.gone { background: #fdecea; color: var(--bad); }
.phases { list-style: none; display: flex; flex-wrap: wrap; gap: 4px; padding: 0; margin: 8px 0; }
.phases li { font-size: 12px; padding: 1px 6px; border-radius: 4px; border: 1px solid var(--line);
  color: var(--muted); }
.phases li.done { color: var(--fg); }
.phases li.current { background: var(--bar); border-color: var(--bar); color: #fff; }
.standing { display: grid; grid-template-columns: 60px 1fr; margin: 0; gap: 2px 8px; }
.standing dt { color: var(--muted); } .standing dd { margin: 0; }
section > h2 { margin-top: 18px; }
table { width: 100%; border-collapse: collapse; background: var(--card); border: 1px solid var(--line); }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
td.text { overflow-wrap: anywhere; }
th { font-weight: 600; color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
td.num, td.eps { font-variant-numeric: tabular-nums; white-space: nowrap; }
.state-committed { color: var(--ok); font-weight: 600; } .state-failed { color: var(--bad); font-weight: 600; }
.state-open { color: var(--warn); font-weight: 600; }
.reasons { margin: 0; padding-left: 16px; color: var(--muted); font-size: 12px; }
.bar { position: relative; width: 220px; height: 16px; background: #e8ebf0; border-radius: 3px; display: inline-block;
  vertical-align: middle; overflow: hidden; }
.bar .fill { position: absolute; left: 0; top: 0; bottom: 0; background: var(--bar); }
.bar.over .fill { background: var(--bad); }
.bar-label { margin-left: 8px; font-variant-numeric: tabular-nums; }
.chart { width: 100%; height: 120px; }
.chart .axis { stroke: var(--line); } .chart .line { fill: none; stroke: var(--bar); stroke-width: 2; }
.chart .dot { fill: var(--bar); } .chart text { font-size: 10px; fill: var(--muted); }
footer { margin-top: 20px; font-size: 12px; }
"""

# Every string from the documents reaches the page as a text node (text() / textContent): never
# as markup. tests/coordinator/test_dashboard.py checks that nothing here parses HTML.
PAGE_JS = (
    """"use strict";
(function () {
  const REFRESH_MS = """
    + str(REFRESH_S * 1000)
    + """;
  const PHASES = ["join", "advertise-keys", "share-keys", "masked-input", "consistency-check", "unmask",
    "decode", "commit"];
  const SVG = "http://www.w3.org/2000/svg";

  function $(id) { return document.getElementById(id); }
  function text(value) { return document.createTextNode(value === null || value === undefined ? "-" : String(value)); }
  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    for (const child of children) node.appendChild(child instanceof Node ? child : text(child));
    return node;
  }
  function setText(id, value) { $(id).textContent = value === null || value === undefined ? "-" : String(value); }
  function names(list) { return list && list.length ? list.join(", ") : "-"; }
  function fixed(value, digits) { return typeof value === "number" ? value.toFixed(digits) : "-"; }
  function ago(seconds) {
    if (typeof seconds !== "number") return "-";
    seconds = Math.max(0, seconds);
    if (seconds >= 86400) return Math.round(seconds / 86400) + " d ago";
    if (seconds >= 3600) return Math.round(seconds / 3600) + " h ago";
    if (seconds >= 60) return Math.round(seconds / 60) + " min ago";
    return Math.round(seconds) + " s ago";
  }
  function duration(seconds) {
    if (typeof seconds !== "number") return "-";
    return seconds >= 120 ? (seconds / 60).toFixed(1) + " min" : seconds.toFixed(1) + " s";
  }
  async function load(name) {
    const response = await fetch("/api/" + name + ".json", { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) throw new Error(name + ": " + (body.error || response.status));
    return body;
  }

  function renderStatus(status) {
    setText("federation-id", status.federation_id);
    const coordinator = status.coordinator || {};
    const badge = $("coordinator-state");
    const state = coordinator.running ? coordinator.state : (coordinator.state || "not running");
    badge.textContent = state;
    badge.className = "badge " + String(state).replace(/[^a-z]/g, "");
    setText("coordinator-summary", String(coordinator.summary || "").replace(/^running, /, ""));
    const stop = $("stop-request");
    if (coordinator.running && coordinator.stop_request) {
      const request = coordinator.stop_request;
      stop.textContent = "stop requested (" + request.mode + ")" + (request.reason ? ": " + request.reason : "");
      stop.hidden = false;
    } else {
      stop.hidden = true;
    }
    setText("last-event", status.last_event ? "last: " + status.last_event : "");
    const current = status.round;
    const phases = $("phases");
    if (current) {
      const calibrating = current.number > status.rounds_total;  // the round after the last training round
      setText("round-number", calibrating ? "calibration" : current.number + " of " + status.rounds_total);
      setText("round-summary", "attempt " + current.attempt + ": " + current.phase + " for " +
        duration(current.phase_for_s) + " (open " + duration(current.open_for_s) + ")");
      const index = PHASES.indexOf(current.phase);
      phases.replaceChildren(...PHASES.map((phase, i) =>
        el("li", i === index ? "current" : (index >= 0 && i < index ? "done" : ""), phase)));
      setText("joined", names(current.joined));
      setText("late", names(current.late));
      setText("gone", names(current.gone));
    } else {
      const open = status.open_round;
      setText("round-number", open ? open.round + " of " + status.rounds_total : "-");
      setText("round-summary", open ? "open (attempt " + open.attempt + "), " +
        (coordinator.running ? "in progress" : "interrupted: it runs again when a coordinator starts") :
        "no round in progress");
      phases.replaceChildren();
      for (const id of ["joined", "late", "gone"]) setText(id, "-");
    }
    const last = status.last_committed;
    setText("progress-summary", status.rounds_committed + " of " + status.rounds_total + " rounds committed, " +
      status.rounds_failed + " failed" + (last ? "; last: round " + last.round : ""));
  }

  function renderParticipants(participants, federation) {
    const budget = federation.target_epsilon;
    setText("budget-note", "Record-level epsilon as each participant last reported it (its own accounting, " +
      "cumulative), against the federation's budget: target epsilon " + fixed(budget, 2) +
      (federation.target_delta ? " at delta " + federation.target_delta : "") + ".");
    const rows = participants.participants.map((p) => {
      let standing = p.round_standing || (p.in_roster ? "in roster" : "-");
      if (p.in_roster === false) standing = "revoked";
      if (p.excluded) standing = "excluded: " + p.excluded;
      const bar = el("span", "bar");
      const fill = el("span", "fill");
      bar.appendChild(fill);
      if (typeof p.epsilon === "number" && typeof budget === "number" && budget > 0) {
        fill.style.width = Math.min(100, (100 * p.epsilon) / budget).toFixed(1) + "%";
        if (p.epsilon > budget) bar.classList.add("over");
      } else {
        fill.style.width = "0%";
      }
      bar.title = "epsilon " + fixed(p.epsilon, 3) + " of " + fixed(budget, 2);
      const label = el("span", "bar-label", fixed(p.epsilon, 3) + " / " + fixed(budget, 2) +
        (p.epsilon_round ? " (round " + p.epsilon_round + ")" : ""));
      const row = el("tr", "", el("td", "", p.name), el("td", "text", p.organisation),
        el("td", "", p.online ? "yes" : "no"), el("td", "num", ago(p.last_seen_ago_s)),
        el("td", "eps", bar, label), el("td", "text", standing));
      row.dataset.participant = p.name;
      return row;
    });
    $("participants").tBodies[0].replaceChildren(...rows);
  }

  function accuracyOf(entry) {
    const before = entry && entry.metrics && entry.metrics.heldout_before;
    return before && typeof before.heldout_accuracy === "number" ? before.heldout_accuracy : null;
  }

  function renderRounds(rounds, ledger) {
    const entries = new Map(ledger.ledger.map((entry) => [entry.round, entry]));
    const rows = rounds.rounds.map((r) => {
      let state = r.state;
      if (state === "open") state = r.in_progress ? "open (in progress)" : "open (interrupted)";
      const dropped = Object.keys(r.dropped).sort();
      const reasons = el("ul", "reasons", ...dropped.map((name) => el("li", "", name + ": " + r.dropped[name])));
      if (r.failure_reason) reasons.appendChild(el("li", "", "failed: " + r.failure_reason));
      const accuracy = accuracyOf(entries.get(r.round));
      const row = el("tr", "", el("td", "num", r.round), el("td", "state-" + r.state, state),
        el("td", "num", r.attempts), el("td", "", names(r.survivors)),
        el("td", "text", dropped.length ? String(dropped.length) : "0", reasons),
        el("td", "num", accuracy === null ? "-" : (100 * accuracy).toFixed(1) + " %"),
        el("td", "num", duration(r.wall_s)));
      row.dataset.round = String(r.round);
      row.dataset.state = r.state;
      return row;
    });
    $("rounds").tBodies[0].replaceChildren(...rows);
    renderChart(ledger.ledger);
  }

  function svg(tag, attributes, content) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
    if (content !== undefined) node.textContent = content;
    return node;
  }

  function renderChart(ledger) {
    const points = ledger.map((entry) => [entry.round, accuracyOf(entry)]).filter((p) => p[1] !== null);
    const chart = $("metric-chart");
    chart.replaceChildren();
    if (!points.length) {
      chart.hidden = true;
      setText("metric-note", ledger.length ? "No held-out metric in the ledger (aggregate noise: the metrics " +
        "are not sent)." : "The held-out metric appears once a round is committed.");
      return;
    }
    chart.hidden = false;
    setText("metric-note", "Held-out accuracy over the survivors' splits of the model each round started from " +
      "(ledger metrics.heldout_before).");
    const left = 30, right = 310, top = 10, bottom = 100;
    const last = Math.max(...points.map((p) => p[0]), 2);
    const x = (round) => left + ((round - 1) / Math.max(1, last - 1)) * (right - left);
    const y = (value) => bottom - value * (bottom - top);
    chart.appendChild(svg("line", { class: "axis", x1: left, y1: bottom, x2: right, y2: bottom }));
    chart.appendChild(svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: bottom }));
    chart.appendChild(svg("text", { x: 2, y: top + 4 }, "100%"));
    chart.appendChild(svg("text", { x: 8, y: bottom }, "0%"));
    chart.appendChild(svg("polyline", { class: "line",
      points: points.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ") }));
    for (const [round, value] of points) {
      chart.appendChild(svg("circle", { class: "dot", cx: x(round).toFixed(1), cy: y(value).toFixed(1), r: 3 }));
      chart.appendChild(svg("text", { x: x(round) - 6, y: bottom + 12 }, "r" + round));
      chart.appendChild(svg("text", { x: x(round) + 5, y: y(value) - 5 }, (100 * value).toFixed(1) + "%"));
    }
  }

  async function refresh() {
    try {
      const [status, rounds, participants, ledger, federation] = await Promise.all(
        ["status", "rounds", "participants", "ledger", "federation"].map(load));
      renderStatus(status);
      renderParticipants(participants, federation);
      renderRounds(rounds, ledger);
      $("banner").hidden = true;
      setText("updated", "updated " + new Date().toLocaleTimeString() + "; refreshes every " +
        REFRESH_MS / 1000 + " s");
      document.body.dataset.loaded = "true";
    } catch (error) {
      const banner = $("banner");
      banner.textContent = "Cannot read the federation's documents (" + error.message + "): the coordinator " +
        "may have stopped. Retrying.";
      banner.hidden = false;
    }
  }

  refresh();
  setInterval(refresh, REFRESH_MS);
})();
"""
)
