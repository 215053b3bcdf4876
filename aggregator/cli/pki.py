"""Command line for the federation PKI and broker config (``python -m aggregator.cli.pki``).

The operator runs everything except ``device-csr``, which a technician runs on the box
so the box's TLS private key never leaves it. The install scripts call it too
(install-aggregator.sh: CA, broker certificate, aggregator certificate, Mosquitto
drop-in). Expected failures end with one ``error:`` line on stderr and exit code 2.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
from pathlib import Path
from typing import Annotated

import typer

from aggregator.cli.common import one_line_errors
from aggregator.pki import authority as pki
from aggregator.pki import crl as pki_crl
from aggregator.pki import files as pki_files
from aggregator.pki import issue as pki_issue
from aggregator.pki.broker_config import DEFAULT_TLS_PORT, publish_crl, write_broker_config
from federation.files import write_atomic

app = typer.Typer(
    help="Federation TLS PKI (CA, broker/device certificates, CRL) and Mosquitto config.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

CaDir = Annotated[Path, typer.Option("--ca-dir", help="the federation CA directory")]


@app.command("ca-create")
@one_line_errors
def ca_create(
    ca_dir: CaDir,
    fed: Annotated[str, typer.Option("--fed", help="federation id")],
    days: Annotated[int, typer.Option(min=1, help="CA validity in days")] = pki.DEFAULT_CA_DAYS,
) -> None:
    """Create the federation CA (ca.key stays with the operator, 0600)."""
    ca = pki.create_ca(ca_dir, fed, valid_days=days)
    typer.echo(f"CA {ca.cert_path} (key {ca.key_path}, CRL {ca.crl_path})")


@app.command("server-cert")
@one_line_errors
def server_cert(
    ca_dir: CaDir,
    out: Annotated[Path, typer.Option("--out", help="directory for server.crt/server.key")],
    host: Annotated[list[str], typer.Option("--host", help="DNS name or IP boxes connect to")],
    days: Annotated[int, typer.Option(min=1)] = pki_issue.DEFAULT_SERVER_DAYS,
) -> None:
    """Issue the broker's TLS server certificate."""
    issued = pki_issue.issue_server_cert(pki.load_ca(ca_dir), host, out, valid_days=days)
    typer.echo(f"broker certificate {issued.cert_path} (key {issued.key_path})")


@app.command("client-cert")
@one_line_errors
def client_cert(
    ca_dir: CaDir,
    out: Annotated[Path, typer.Option("--out", help="directory for <identity>.crt/.key")],
    identity: Annotated[str, typer.Option(help="certificate CN")] = pki.AGGREGATOR_IDENTITY,
    days: Annotated[int, typer.Option(min=1)] = pki_issue.DEFAULT_SERVER_DAYS,
) -> None:
    """Issue a service client certificate (the aggregator's, by default)."""
    issued = pki_issue.issue_client_cert(pki.load_ca(ca_dir), identity, out, valid_days=days)
    typer.echo(f"client certificate {issued.cert_path} (key {issued.key_path})")


@app.command("device-csr")
@one_line_errors
def device_csr(
    device_id: Annotated[str, typer.Option("--device-id", help="this box's device id")],
    out: Annotated[Path, typer.Option("--out", help="directory for device-tls.key/.csr")],
) -> None:
    """ON THE BOX: create the box's TLS key (0600) and a CSR for the operator."""
    key, csr = pki.create_device_key_and_csr(device_id, out)
    typer.echo(f"key {key} (stays here); give {csr} to the operator")


@app.command("sign")
@one_line_errors
def sign(
    ca_dir: CaDir,
    csr: Annotated[Path, typer.Option("--csr", help="the box's CSR", exists=True)],
    device_id: Annotated[str, typer.Option("--device-id", help="the box's device id")],
    out: Annotated[Path, typer.Option("--out", help="certificate file to write")],
    days: Annotated[int, typer.Option(min=1)] = pki_issue.DEFAULT_DEVICE_DAYS,
) -> None:
    """Sign a box's CSR: CN = device id, clientAuth, short validity."""
    pem = pki.sign_device_csr(pki.load_ca(ca_dir), csr.read_bytes(), device_id, valid_days=days)
    write_atomic(out, pem, mode=0o644)
    typer.echo(f"device certificate {out}: give it to the technician with ca.crt")


@app.command("revoke")
@one_line_errors
def revoke(
    ca_dir: CaDir,
    device_id: Annotated[str, typer.Option("--device-id")],
    crl_days: Annotated[int, typer.Option(min=1)] = pki_crl.DEFAULT_CRL_DAYS,
    broker_dir: Annotated[
        Path | None, typer.Option(help="also copy the CRL into this broker directory")
    ] = None,
) -> None:
    """Revoke a box's certificates; then reload the broker (systemctl reload mosquitto)."""
    ca = pki.load_ca(ca_dir)
    crl = pki.revoke(ca, device_id, crl_days=crl_days)
    if broker_dir is not None:
        crl = publish_crl(ca, broker_dir)
    typer.echo(f"revoked {device_id}: CRL {crl}; now run `systemctl reload mosquitto`")


@app.command("crl-renew")
@one_line_errors
def crl_renew(
    ca_dir: CaDir,
    crl_days: Annotated[int, typer.Option(min=1)] = pki_crl.DEFAULT_CRL_DAYS,
    if_expires_within: Annotated[
        int, typer.Option(min=0, help="only renew when nextUpdate is this many days away")
    ] = 0,
    broker_dir: Annotated[
        Path | None, typer.Option(help="also copy the CRL into this broker directory")
    ] = None,
) -> None:
    """Re-sign the CRL (an expired CRL makes the broker refuse EVERY client)."""
    ca = pki.load_ca(ca_dir)
    left = pki_crl.crl_days_left(ca)
    if if_expires_within and left > if_expires_within:
        typer.echo(f"CRL valid for {left:.1f} more days: not renewed")
        return
    crl = pki_crl.renew_crl(ca, crl_days=crl_days)
    if broker_dir is not None:
        crl = publish_crl(ca, broker_dir)
    typer.echo(f"CRL renewed: {crl}")


@app.command("broker-config")
@one_line_errors
def broker_config(
    ca_dir: CaDir,
    server_dir: Annotated[Path, typer.Option(help="directory holding server.crt/server.key")],
    out: Annotated[Path, typer.Option("--out", help="broker directory (conf, ACL, cert copies)")],
    port: Annotated[int, typer.Option(min=1, max=65535)] = DEFAULT_TLS_PORT,
    bind: Annotated[str | None, typer.Option(help="bind address (default: all)")] = None,
    fed: Annotated[
        list[str] | None, typer.Option(help="federation id(s); default the CA's")
    ] = None,
    standalone: Annotated[bool, typer.Option(
        help="a complete config to start by hand (mosquitto -c OUT/fedface.conf -d): adds "
        "pid_file, persistence and log in OUT, and `user` = you (docs/operations.md, "
        "\"Trial broker\"); not for conf.d/")] = False,
    dynsec_file: Annotated[Path | None, typer.Option(
        help="state file of Mosquitto's dynamic-security plugin (loaded when installed: "
        "`devices revoke` cuts a revoked box's live session with it); must be writable by "
        "the broker user; default OUT/dynamic-security.json")] = None,
) -> None:
    """Write the Mosquitto drop-in (TLS-only listener) and the per-device ACL."""
    ca = pki.load_ca(ca_dir)
    for name in ("server.crt", "server.key"):
        if not (server_dir / name).is_file():
            raise pki.PkiError(f"{server_dir / name} missing: run server-cert first")
    server = pki_files.IssuedCert(server_dir / "server.crt", server_dir / "server.key", 0)
    user = pwd.getpwuid(os.geteuid()).pw_name if standalone else None
    conf, files = write_broker_config(
        ca, server, out, fed_ids=fed or None, port=port, dynsec_file=dynsec_file,
        bind_address=bind,
        standalone_user=user,
    )
    typer.echo(f"broker config {conf} (ACL {files.acl})")
    if standalone:
        typer.echo(f"start it: mosquitto -c {conf} -d   (pid file {conf.parent}/mosquitto.pid, "
                   f"log {conf.parent}/mosquitto.log)")


@app.command("list")
@one_line_errors
def list_certs(ca_dir: CaDir) -> None:
    """Issued and revoked certificates, as JSON."""
    ca = pki.load_ca(ca_dir)
    data = json.loads(ca.issued_path.read_text())
    data["crl_days_left"] = round(pki_crl.crl_days_left(ca), 2)
    data["now"] = dt.datetime.now(dt.timezone.utc).isoformat()
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
