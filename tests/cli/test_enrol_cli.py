"""The enrolment flow as a user types it: the participant enrols on its machine, the operator
issues from the request and exports the public files back; each side in its own directory."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner, Result

from fedmask import pki
from fedmask.cli import main


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _ok(*args: str) -> str:
    result = _run(*args)
    assert result.exit_code == 0, result.output
    return result.output


def _error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_enrol_issue_export_join_the_directories(tmp_path: Path) -> None:
    operator, hospital = str(tmp_path / "operator"), str(tmp_path / "hospital")
    _ok("pki", "init", "--dir", operator, "--name", "clinics")
    _ok("pki", "issue", "coordinator", "main", "--dir", operator)

    enrolled = _ok(
        "participant", "enrol", "--federation", hospital, "--name", "hospital-a", "--organisation", "st-marys"
    )
    request_path = Path(hospital) / "participants" / "hospital-a" / "request.json"
    assert str(request_path) in enrolled and "PRIVATE" not in enrolled
    fingerprint = re.search(r"request sha256:\s+([0-9a-f]{64})", enrolled)
    assert fingerprint is not None

    issued = _ok("pki", "issue", "participant", "hospital-a", "--dir", operator, "--request", str(request_path))
    assert f"request sha256: {fingerprint.group(1)}" in issued  # what the two sides compare
    assert "organisation 'st-marys'" in issued and "private key" not in issued
    assert "send to hospital-a (public files, nothing secret)" in issued
    assert "ca/ca.pem, participants/hospital-a/tls.pem, roster.json, roster.sig" in issued
    assert f"fedmask pki export hospital-a --dir {operator}" in issued

    exported = _ok("pki", "export", "hospital-a", "--dir", operator, "--out", hospital)
    assert exported.count("\n  ") == 4
    hospital_files = sorted(p.relative_to(hospital).as_posix() for p in Path(hospital).rglob("*") if p.is_file())
    assert [f for f in hospital_files if not f.startswith(".")] == [
        "ca/ca.pem",
        "participants/hospital-a/identity.key",
        "participants/hospital-a/request.json",
        "participants/hospital-a/tls.key",
        "participants/hospital-a/tls.pem",
        "roster.json",
        "roster.sig",
    ]
    assert sorted(p.relative_to(operator).as_posix() for p in Path(operator).rglob("*.key")) == [
        "ca/ca.key",
        "coordinator/main.key",
    ]
    material = pki.load_tls_material(hospital, "participant", "hospital-a")
    roster = pki.load_roster(hospital, material.ca_cert)
    assert pki.identity_from_peer_cert(material.cert_chain, material.ca_cert, roster=roster) == "hospital-a"

    shown = _ok("pki", "show", "--dir", operator)
    assert f"roster sha256 {roster.fingerprint()}" in shown
    assert re.search(r"hospital-a\s+organisation st-marys", shown)
    assert "participants: 1 from 1 organisation(s)" in shown


def test_enrol_and_issue_errors_are_one_line(tmp_path: Path) -> None:
    operator, hospital = str(tmp_path / "operator"), str(tmp_path / "hospital")
    _ok("pki", "init", "--dir", operator)
    enrol = ("participant", "enrol", "--federation", hospital, "--name", "hospital-a", "--organisation", "st-marys")
    _ok(*enrol)
    assert "--force" in _error_line(_run(*enrol))
    assert "invalid organisation" in _error_line(
        _run("participant", "enrol", "--federation", hospital, "--name", "bank", "--organisation", "Acme Bank")
    )
    outbox = tmp_path / "outbox" / "hospital-a.json"
    _ok(*enrol, "--force", "--out", str(outbox))
    assert outbox.is_file()

    refused = _error_line(_run("pki", "issue", "participant", "hospital-a", "--dir", operator))
    assert "fedmask participant enrol" in refused and "--operator-generates-keys" in refused
    other_name = _error_line(_run("pki", "issue", "participant", "bank", "--dir", operator, "--request", str(outbox)))
    assert "is for 'hospital-a', not 'bank'" in other_name
    not_issued = _error_line(_run("pki", "export", "hospital-a", "--dir", operator, "--out", hospital))
    assert "not in the roster" in not_issued
    help_text = _ok("pki", "issue", "--help")
    assert "Demos and tests only" in " ".join(help_text.split())
