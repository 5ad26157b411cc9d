"""The coordinator's web dashboard (``fedmask.coordinator.dashboard``, ``coordinator run
--dashboard-port``) on a store built by hand and a status file as a running coordinator writes it:
its documents are the CLI's ``--json`` documents, it only reads, it escapes what it serves, and it
stays on loopback unless told otherwise. The page in a real browser, during a live run, is
tests/integration/test_dashboard_browser.py."""

from __future__ import annotations

import http.client
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fedmask.cli import main
from fedmask.cli.federate import dashboard_documents
from fedmask.coordinator.dashboard import (
    CONTENT_SECURITY_POLICY,
    PAGE_HTML,
    PAGE_JS,
    DashboardEndpoint,
    DashboardError,
    is_loopback,
    serve_dashboard,
)
from fedmask.coordinator.status import (
    CoordinatorStatus,
    ParticipantStatus,
    RoundStatus,
    StatusWriter,
    process_started_at,
    status_path,
)
from fedmask.coordinator.store import FederationStore

# Participant names are checked by the store and the roster; reasons and organisations are free text.
HOSTILE_REASON = "[masked-input] <img src=x onerror=window.__pwned=1> & missed the deadline"
HOSTILE_TEXT = "<script>window.__pwned=1</script>"
MALLORY = "mallory"
PARTIES = ["bank", "hospital-a", MALLORY]
ENCODING = {"clip_norm": 1.0, "scale": 2.0**16, "modulus_bits": 32}


def build_state(state: Path) -> Path:
    """Round 1 committed (mallory dropped, with a hostile reason, and was excluded), round 2 open."""
    with FederationStore(state / "federation.db") as store:
        store.initialise({"participants": PARTIES, "rounds": 3, "training": {"target_epsilon": 6.0}})
        store.commit_initial(store.save_checkpoint(0, np.zeros(4, dtype=np.float32), []))
        store.begin_round(1, b"r1", PARTIES)
        entry = {
            "survivors": ["bank", "hospital-a"],
            "dropped": {MALLORY: HOSTILE_REASON},
            "encoding": ENCODING,
            "epsilon": {"bank": 1.5, "hospital-a": 1.25},
            "metrics": {"wall_s": 41.5, "heldout_before": {"heldout_accuracy": 0.5, "heldout_count": 60}},
        }
        store.commit_round(1, store.save_checkpoint(1, np.ones(4, dtype=np.float32), []), entry)
        store.exclude(MALLORY, 1, b"r1", f"sent {HOSTILE_TEXT} instead of a share")
        store.begin_round(2, b"r2", PARTIES)
    return state


def write_live_status(state: Path, now: float) -> None:
    """The status a coordinator in round 2 writes (as this process, so it counts as running)."""
    status = CoordinatorStatus(
        pid=os.getpid(),
        pid_started_at=process_started_at(os.getpid()) or 0.0,
        started_at=now - 600,
        heartbeat_at=now,
        heartbeat_interval_s=5.0,
        state="running",
        rounds_total=3,
        listening="127.0.0.1:7443",
        dashboard_url="http://127.0.0.1:8080/",
        round=RoundStatus(
            2, 1, "share-keys", now - 30, now - 4, PARTIES, {"bank": "in", "hospital-a": "in", MALLORY: "gone"}
        ),
        participants={
            "bank": ParticipantStatus("bank", "first-bank", last_seen=now - 2, epsilon=2.5, epsilon_round=2),
            "hospital-a": ParticipantStatus("hospital-a", "st-marys", last_seen=now - 3),
            MALLORY: ParticipantStatus(MALLORY, f"<b>{HOSTILE_TEXT}</b>", in_roster=False),
        },
        stop_request={"mode": "after-round", "reason": HOSTILE_REASON, "at": now},
        last_event=f"share-keys closed: {HOSTILE_TEXT} dropped",
    )
    writer = StatusWriter(status_path(state))
    writer.publish(status.to_json())
    writer.close()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return build_state(tmp_path / "state")


@pytest.fixture
def dashboard(state: Path) -> Iterator[DashboardEndpoint]:
    endpoint = serve_dashboard(dashboard_documents(state), "127.0.0.1", 0)
    try:
        yield endpoint
    finally:
        endpoint.close()


def request(
    endpoint: DashboardEndpoint, method: str, path: str, host: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=10)
    try:
        headers = {"Host": host} if host is not None else {}
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def cli_json(*args: str) -> object:
    result = CliRunner().invoke(main, ["coordinator", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


# --- the documents ---------------------------------------------------------------------------------


def test_the_api_documents_are_the_cli_json_documents(state, dashboard, monkeypatch):
    now = time.time()
    write_live_status(state, now)
    monkeypatch.setattr(time, "time", lambda: now + 1.0)  # both sides see the same clock
    for name in ("status", "rounds", "participants", "ledger"):
        status, headers, body = request(dashboard, "GET", f"/api/{name}.json")
        assert status == 200, body
        assert headers["content-type"] == "application/json; charset=utf-8"
        assert json.loads(body) == cli_json(name, "--state", str(state)), name
    document = json.loads(request(dashboard, "GET", "/api/status.json")[2])
    assert document["coordinator"]["dashboard_url"] == "http://127.0.0.1:8080/"
    assert document["round"]["phase"] == "share-keys" and document["round"]["gone"] == [MALLORY]
    federation = json.loads(request(dashboard, "GET", "/api/federation.json")[2])
    assert federation["participants"] == PARTIES and federation["rounds"] == 3
    assert (federation["target_epsilon"], federation["target_delta"]) == (6.0, 1e-5)


def test_status_shows_the_dashboard_url(state):
    write_live_status(state, time.time())
    output = CliRunner().invoke(main, ["coordinator", "status", "--state", str(state)]).output
    assert "; dashboard http://127.0.0.1:8080/" in output


def test_strings_from_the_store_come_back_json_escaped(state, dashboard):
    write_live_status(state, time.time())
    for name in ("status", "rounds", "participants", "ledger", "federation"):
        _, _, body = request(dashboard, "GET", f"/api/{name}.json")
        text = body.decode()
        assert "<" not in text and ">" not in text and "&" not in text, name
    for name in ("status", "participants", "ledger", "rounds"):
        text = request(dashboard, "GET", f"/api/{name}.json")[2].decode()
        assert "\\u003cscript\\u003e" in text or "\\u003cimg" in text, name  # there, escaped
    rounds = json.loads(request(dashboard, "GET", "/api/rounds.json")[2])["rounds"]
    assert rounds[0]["dropped"] == {MALLORY: HOSTILE_REASON}  # the same value once parsed


def test_an_unreadable_state_is_a_503_with_the_reason_and_the_page_is_still_served(tmp_path):
    endpoint = serve_dashboard(dashboard_documents(tmp_path / "missing"), "127.0.0.1", 0)
    try:
        status, _, body = request(endpoint, "GET", "/api/status.json")
        assert status == 503 and "no coordinator state directory" in json.loads(body)["error"]
        assert request(endpoint, "GET", "/")[0] == 200
    finally:
        endpoint.close()


# --- read-only, headers, loopback -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND"])
def test_only_get_and_head(dashboard, method):
    status, headers, _ = request(dashboard, method, "/api/status.json")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_head_answers_headers_only(dashboard):
    status, headers, body = request(dashboard, "HEAD", "/")
    assert status == 200 and body == b"" and int(headers["content-length"]) == len(PAGE_HTML.encode())


@pytest.mark.parametrize(
    "path", ["/", "/dashboard.js", "/dashboard.css", "/api/ledger.json", "/nothing", "/api/x.json"]
)
def test_every_response_carries_the_security_headers(dashboard, path):
    status, headers, _ = request(dashboard, "GET", path)
    assert status in (200, 404)
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"


def test_a_foreign_host_header_is_refused_on_loopback(dashboard, monkeypatch):
    """A page whose name was rebound to 127.0.0.1 sends its own Host: it gets nothing, though
    the name resolves to loopback now (the Host header is never resolved)."""
    import socket

    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *args, **kwargs: real("127.0.0.1", *args, **kwargs))
    assert is_loopback("evil.example") and not is_loopback("evil.example", resolve=False)
    assert request(dashboard, "GET", "/api/status.json", host="evil.example:8080")[0] == 421
    assert request(dashboard, "GET", "/", host=f"localhost:{dashboard.port}")[0] == 200
    assert request(dashboard, "GET", "/", host=f"[::1]:{dashboard.port}")[0] == 200


def test_a_host_that_is_not_loopback_is_refused_without_public(state):
    with pytest.raises(DashboardError, match="--dashboard-public"):
        serve_dashboard(dashboard_documents(state), "0.0.0.0", 0)
    endpoint = serve_dashboard(dashboard_documents(state), "0.0.0.0", 0, public=True)
    try:
        assert request(endpoint, "GET", "/", host="dashboard.example")[0] == 200  # any Host when public
    finally:
        endpoint.close()


def test_coordinator_run_refuses_a_public_dashboard_host_in_one_line(tmp_path):
    config = tmp_path / "federation.json"
    config.write_text("{}")
    args = ["coordinator", "run", "--federation", str(tmp_path / "fed"), "--state", str(tmp_path / "state")]
    args += ["--config", str(config), "--dashboard-port", "0", "--dashboard-host", "0.0.0.0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "--dashboard-public" in lines[0], result.output
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True)]
    + [("0.0.0.0", False), ("", False), ("::", False), ("10.1.2.3", False), ("192.168.0.1", False)],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


# --- the page ------------------------------------------------------------------------------------------


def test_the_page_has_no_inline_script_or_style_and_no_external_asset(dashboard):
    html = request(dashboard, "GET", "/")[2].decode()
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/dashboard.js" defer>']
    assert "<style" not in html and " style=" not in html and not re.search(r"\son[a-z]+=", html)
    for asset in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert asset.startswith("/") and not asset.startswith("//"), asset  # nothing from elsewhere
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html


def test_the_script_never_parses_data_as_html():
    """Strings reach the page as text nodes; nothing in the script turns a string into markup or code."""
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(", "srcdoc"):
        assert sink not in PAGE_JS, sink
    assert "setAttribute(" in PAGE_JS  # only for SVG geometry: its keys are the script's own
    for attribute in re.findall(r"setAttribute\(([^,]+),", PAGE_JS):
        assert attribute.strip() == "key", attribute
