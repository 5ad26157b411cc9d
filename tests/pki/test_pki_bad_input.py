"""Bad input to ``fedmask pki`` ends in one ``Error:`` line, before anything is written: a
validity beyond what a certificate date can hold, a malformed PEM file in the federation
directory, a coordinator host that is neither an IP address nor a DNS name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from fedmask import pki
from fedmask.cli import main
from fedmask.pki.preflight import certificate_checks

TOO_MANY_DAYS = "99999999"  # about 270,000 years: past the year 9999, where dates end


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A federation with coordinator ``main`` and participant ``pa``, copied by ``federation``."""
    directory = tmp_path_factory.mktemp("template") / "fed"
    pki.init_federation(directory, valid_days=30)
    pki.issue(directory, "coordinator", "main", valid_days=10)
    pki.issue(directory, "participant", "pa", valid_days=10, operator_generates_keys=True)
    return directory


@pytest.fixture()
def federation(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "fed"))


def _fedmask(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def _one_line_error(result: Result, exit_code: int = 1) -> str:
    """The ``Error:`` line that ``result`` ends in; fails on a traceback or a second error line."""
    assert isinstance(result.exception, SystemExit), f"not a clean exit: {result.exception!r}"
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and result.output.count("Error:") == 1, result.output
    return last


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


# --------------------------------------------------------------------------------------------
# --days


def test_init_refuses_a_validity_past_the_last_certificate_date_and_writes_nothing(tmp_path: Path) -> None:
    line = _one_line_error(_fedmask("pki", "init", "--dir", tmp_path / "fed2", "--days", TOO_MANY_DAYS), 2)
    assert "'--days'" in line and f"1<=x<={pki.MAX_VALIDITY_DAYS}" in line
    assert not (tmp_path / "fed2").exists()


@pytest.mark.parametrize(
    "command",
    [["issue", "coordinator", "main2"], ["issue", "participant", "pb", "--operator-generates-keys"], ["token", "pa"]],
)
def test_issue_and_token_refuse_a_validity_past_the_last_certificate_date(federation: Path, command: list[str]) -> None:
    before = _tree(federation)
    line = _one_line_error(_fedmask("pki", *command, "--dir", federation, "--days", TOO_MANY_DAYS), 2)
    assert "'--days'" in line and f"1<=x<={pki.MAX_VALIDITY_DAYS}" in line
    assert _tree(federation) == before


def test_library_refuses_a_validity_past_the_maximum(federation: Path, tmp_path: Path) -> None:
    too_long = pki.MAX_VALIDITY_DAYS + 1
    expected = f"--days must be between 1 and {pki.MAX_VALIDITY_DAYS}"
    with pytest.raises(pki.PkiError, match=expected):
        pki.init_federation(tmp_path / "fed2", valid_days=too_long)
    assert not (tmp_path / "fed2").exists()
    before = _tree(federation)
    with pytest.raises(pki.PkiError, match=expected):
        pki.issue(federation, "coordinator", "main2", valid_days=too_long)
    with pytest.raises(pki.PkiError, match=expected):
        pki.issue_token(federation, "pa", valid_days=too_long)
    assert _tree(federation) == before


def test_the_maximum_validity_itself_is_accepted(tmp_path: Path) -> None:
    paths = pki.init_federation(tmp_path / "fed", valid_days=pki.MAX_VALIDITY_DAYS)
    assert pki.load_ca_certificate(paths).not_valid_after_utc.year >= 2100


# --------------------------------------------------------------------------------------------
# Malformed PEM files


@pytest.mark.parametrize(
    ("broken", "command", "what"),
    [
        ("ca/ca.pem", ["pki", "show"], "certificate"),
        ("ca/ca.pem", ["pki", "issue", "coordinator", "c3"], "certificate"),
        ("ca/ca.pem", ["pki", "token", "pa"], "certificate"),
        ("ca/ca.pem", ["pki", "revoke", "pa"], "certificate"),
        ("ca/ca.key", ["pki", "issue", "coordinator", "c3"], "private key"),
        ("ca/ca.key", ["pki", "revoke", "pa"], "private key"),
        ("coordinator/main.pem", ["pki", "show"], "certificate"),
        ("participants/pa/tls.pem", ["pki", "export", "pa", "--out", "OUT"], "certificate"),
    ],
)
def test_a_malformed_pem_file_is_one_line_naming_it(
    federation: Path, tmp_path: Path, broken: str, command: list[str], what: str
) -> None:
    (federation / broken).write_text("garbage\n")
    before = _tree(federation)
    out = tmp_path / "out"
    result = _fedmask(*[out if arg == "OUT" else arg for arg in command], "--dir", federation)
    line = _one_line_error(result)
    assert line.startswith(f"Error: {federation / broken} is not a valid PEM {what}: "), line
    assert _tree(federation) == before and not out.exists()


def test_a_certificate_file_holding_something_else_is_named(federation: Path) -> None:
    """Valid PEM, but a key where the certificate belongs."""
    shutil.copy(federation / "ca" / "ca.key", federation / "ca" / "ca.pem")
    line = _one_line_error(_fedmask("pki", "show", "--dir", federation))
    assert line.startswith(f"Error: {federation / 'ca' / 'ca.pem'} is not a valid PEM certificate: ")


def test_an_encrypted_ca_key_is_one_line_naming_it(federation: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((federation / "ca" / "ca.key").read_bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    (federation / "ca" / "ca.key").write_bytes(encrypted)
    line = _one_line_error(_fedmask("pki", "issue", "coordinator", "c3", "--dir", federation))
    assert f"{federation / 'ca' / 'ca.key'} is not a valid PEM private key" in line and "encrypted" in line


def test_pki_and_doctor_read_certificates_through_the_same_loader(federation: Path) -> None:
    ca_path = federation / "ca" / "ca.pem"
    ca_path.write_text("garbage\n")
    with pytest.raises(pki.PkiError) as raised:
        pki.load_certificate_file(ca_path)
    checks, _, ca_cert = certificate_checks(
        "coordinator",
        "main",
        federation / "coordinator" / "main.pem",
        federation / "coordinator" / "main.key",
        ca_path,
        warn_days=1,
    )
    assert ca_cert is None
    assert [check.message for check in checks if check.check == "ca"] == [str(raised.value)]


def test_library_loaders_name_the_malformed_file(federation: Path) -> None:
    (federation / "participants" / "pa" / "identity.key").write_text("garbage\n")
    with pytest.raises(pki.PkiError, match=r"identity\.key is not a valid PEM private key"):
        pki.load_identity_key(federation, "pa")
    (federation / "ca" / "ca.pem").write_text("garbage\n")
    with pytest.raises(pki.PkiError, match=r"ca\.pem is not a valid PEM certificate"):
        pki.load_tls_material(federation, "coordinator", "main")


# --------------------------------------------------------------------------------------------
# Coordinator hosts


@pytest.mark.parametrize("host", ["999.1.1.1", "10.0.0.256", "1.2.3", "123", "example.123", "*.example.org"])
def test_a_host_that_is_neither_an_ip_address_nor_a_dns_name_is_refused(federation: Path, host: str) -> None:
    with pytest.raises(pki.PkiError, match="invalid coordinator host"):
        pki.issue(federation, "coordinator", "h9", hosts=[host], valid_days=10)
    command = ["pki", "issue", "coordinator", "h9", "--dir", federation, "--host", host, "--days", "10"]
    line = _one_line_error(_fedmask(*command))
    assert f"invalid coordinator host {host!r}" in line
    assert not list((federation / "coordinator").glob("h9.*"))


def test_digits_are_fine_in_a_dns_name_except_for_its_last_label(federation: Path) -> None:
    hosts = ["1.example.org", "a1.example.123x", "10-0-0-1.nip.io", " 10.0.0.7 "]
    pki.issue(federation, "coordinator", "edge", hosts=hosts, valid_days=10)
    cert = x509.load_pem_x509_certificate((federation / "coordinator" / "edge.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["1.example.org", "a1.example.123x", "10-0-0-1.nip.io"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]


def test_a_problem_names_its_federation_directory_once(tmp_path):
    missing = tmp_path / "nofed"
    with pytest.raises(pki.PkiError) as raised:
        pki.load_ca_certificate(missing)
    message = pki.in_federation_directory(raised.value, missing)
    assert message.count(str(missing)) == str(raised.value).count(str(missing)) >= 1  # not added again
    assert (
        pki.in_federation_directory(ValueError("bad roster"), missing) == f"bad roster (federation directory {missing})"
    )
