"""``fedmask participant enrol``: make this participant's keys and a request for the operator.

    fedmask participant enrol --federation DIR --name NAME --organisation ORG [--out FILE]

Run on the participant's own machine. The private keys stay in DIR; the request (no secret in
it) goes to the federation operator, who issues the certificate from it and sends back the
public files to copy into DIR.
"""

from __future__ import annotations

from pathlib import Path

import click

from fedmask import pki


@click.command("enrol")
@click.option(
    "--federation",
    "federation_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("federation"),
    show_default=True,
    help="This participant's own federation directory; its keys go under participants/NAME/.",
)
@click.option("--name", required=True, help="This participant's name in the federation (as agreed with the operator).")
@click.option("--organisation", required=True, help="The organisation it belongs to (short name, e.g. st-marys).")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the request [default: DIR/participants/NAME/request.json].",
)
@click.option(
    "--force", is_flag=True, help="Make new keys even if NAME has some here (its certificate stops matching)."
)
def enrol(federation_dir: Path, name: str, organisation: str, out_path: Path | None, force: bool) -> None:
    """Make this participant's TLS and identity keys and an enrolment request for the operator."""
    try:
        request_path = pki.enrol(federation_dir, name, organisation=organisation, out=out_path, force=force)
        request = pki.load_enrolment_request(request_path)
    except pki.PkiError as exc:
        raise click.ClickException(str(exc)) from exc
    paths = pki.FederationPaths(federation_dir)
    click.echo(f"enrolled {name!r} of organisation {organisation!r} in {paths.root}")
    click.echo(f"  private keys (stay here): {paths.tls_key('participant', name)}, {paths.identity_key(name)}")
    click.echo(f"  enrolment request:        {request_path}  (no secret in it)")
    click.echo(f"  request sha256:           {request.fingerprint()}")
    click.echo(
        "next: send the request to the federation operator and confirm this sha256 with them over another channel; "
        f"they run `fedmask pki issue participant {name} --request FILE` and send back ca/ca.pem, "
        f"participants/{name}/tls.pem, roster.json and roster.sig, to copy into {paths.root}"
    )
