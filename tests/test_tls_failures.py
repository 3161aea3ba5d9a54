"""Failures every request of a run would share - an untrusted or wrong TLS certificate, a server that does not speak
TLS, a host name that does not resolve - stop the run at the first one: nothing sent, exit 3, a message that names
the host and the fix. Against real servers on 127.0.0.1 with certificates made for the test session."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import httpx
import polars as pl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pipeline.outcome import Verdict, classify_exception, systemic_failure
from pipeline.send import RunControl, SenderConfig, SendJob, SendOutcome, send_all
from tests.conftest import API_KEY, SENDER, api_section, contact_rows

Cli = Callable[..., tuple[int, str, str]]
MakeCampaign = Callable[..., Path]
KeyPair = tuple[Path, Path]  # (certificate, private key), PEM files

UNRESOLVABLE = "sentdm-batch-test.invalid"  # the .invalid TLD never resolves (RFC 6761): no traffic leaves the machine


# --- certificates --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the test CA's certificate: what a client must trust
    server: KeyPair  # signed by the CA for 127.0.0.1 and localhost
    other_name: KeyPair  # signed by the CA for other.test only
    self_signed: KeyPair  # for 127.0.0.1, signed by itself


def _issue(
    subject: str, names: list[str], issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and a day's certificate: a CA signed by itself when `names` is empty, else a server certificate for
    `names` signed by `issuer` (or by itself). The extensions are those strict verifiers (Python 3.13+) insist on."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signer_key = issuer[0] if issuer else key
    is_ca = not names
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[1].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if not is_ca:
        alt_names: list[x509.GeneralName] = []
        for entry in names:
            try:
                alt_names.append(x509.IPAddress(ipaddress.ip_address(entry)))
            except ValueError:
                alt_names.append(x509.DNSName(entry))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return key, builder.sign(signer_key, hashes.SHA256())


def _write(folder: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> KeyPair:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("certs")
    ca = _issue("sentdm-batch test CA", [], None)
    return Certificates(
        ca=_write(folder, "ca", *ca)[0],
        server=_write(folder, "server", *_issue("127.0.0.1", ["127.0.0.1", "localhost"], ca)),
        other_name=_write(folder, "other", *_issue("other.test", ["other.test"], ca)),
        self_signed=_write(folder, "self-signed", *_issue("127.0.0.1", ["127.0.0.1"], None)),
    )


# --- servers -------------------------------------------------------------------------------------------------------


class Server:
    """A real server on 127.0.0.1, one thread per connection, that counts what reached it.

    With a certificate it speaks https and answers every request as the seed endpoint does (200, JSON with a
    message id). Without one it is a plain-http server that answers anything with 400 - what a web server does with
    a TLS ClientHello."""

    def __init__(self, certificate: KeyPair | None = None) -> None:
        self._context: ssl.SSLContext | None = None
        if certificate is not None:
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._context.load_cert_chain(*certificate)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0  # TCP connections accepted
        self.handshakes = 0  # TLS handshakes completed
        self.requests = 0  # HTTP requests read whole and answered
        self._lock = threading.Lock()
        self._stopping = False
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)

    def url(self, host: str = "127.0.0.1", scheme: str = "https") -> str:
        return f"{scheme}://{host}:{self.port}"

    def __enter__(self) -> Server:
        self._acceptor.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping = True
        socket.create_connection(("127.0.0.1", self.port)).close()  # wakes accept()
        self._acceptor.join()
        self._listener.close()

    def _accept_loop(self) -> None:
        while True:
            sock, _ = self._listener.accept()
            if self._stopping:
                sock.close()
                return
            # counted before anything is answered: a client that saw an answer was counted
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(10)  # a stuck client must not leave a thread behind for long
        try:
            if self._context is None:
                with sock:
                    sock.recv(65536)
                    sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            with self._context.wrap_socket(sock, server_side=True) as tls:
                with self._lock:
                    self.handshakes += 1
                self._answer(tls)
        except OSError:
            pass  # the client gave up (a failed handshake ends here): what it saw is what the test checks

    def _answer(self, sock: ssl.SSLSocket) -> None:
        with sock.makefile("rb") as reader:
            while reader.readline(65537):
                headers = http.client.parse_headers(reader)
                reader.read(int(headers.get("Content-Length", "0")))
                with self._lock:
                    self.requests += 1
                body = json.dumps({"messageId": str(uuid.uuid4()), "status": "queued"}).encode()
                head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                sock.sendall(head.encode() + body)


@pytest.fixture
def untrusted(certs: Certificates) -> Iterator[Server]:
    """An https server whose certificate comes from a CA this machine does not trust."""
    with Server(certs.server) as server:
        yield server


# --- running campaigns ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    code: int
    out: str
    err: str
    folder: Path

    @property
    def results(self) -> pl.DataFrame:
        return pl.read_csv(self.folder / "out" / "results.csv", infer_schema=False)

    def statuses(self) -> dict[str, int]:
        return dict(self.results.group_by("result_status").len().iter_rows())

    def everything_written(self) -> str:
        """Every message and file a user could read: a secret must appear in none of them."""
        texts = [self.out, self.err]
        texts += [path.read_text(errors="replace") for path in (self.folder / "out").glob("*.csv")]
        return "\n".join(texts)


@pytest.fixture
def run_campaign(cli: Cli, make_campaign: MakeCampaign, credentials: None) -> Callable[..., Run]:
    """Run the CLI in-process (`run`, or `command`) on `rows` contacts against `url`; `api` and `send` add spec keys."""

    def run(url: str, rows: int = 10, *, api: dict[str, Any] | None = None, command: str = "run", **send: Any) -> Run:
        spec = make_campaign(
            contact_rows(rows),
            api=api_section(url, timeout_s=10, **(api or {})),
            send={"concurrency": 4, "backoff_s": 0, **send},
        )
        code, out, err = cli(command, spec)
        return Run(code, out, err, spec.parent)

    return run


def assert_stopped_at_once(run: Run, *, rows: int, concurrency: int) -> pl.DataFrame:
    """Exit 3; every row accounted for: the rows already in flight failed, the rest were not attempted."""
    assert run.code == 3, run.out + run.err
    results = run.results
    assert results.height == rows
    statuses = run.statuses()
    assert set(statuses) == {"failed", "not_attempted"}
    assert 1 <= statuses["failed"] <= concurrency
    not_attempted = results.filter(pl.col("result_status") == "not_attempted")
    assert not_attempted["result_error"].str.starts_with("not sent: run aborted: cannot connect to").all()
    assert API_KEY not in run.everything_written()
    return results.filter(pl.col("result_status") == "failed")


# --- an untrusted certificate --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["unknown CA", "self-signed"])
def test_an_untrusted_certificate_stops_the_run_at_the_first_handshake(
    run_campaign: Callable[..., Run], certs: Certificates, kind: str
) -> None:
    with Server(certs.server if kind == "unknown CA" else certs.self_signed) as server:
        run = run_campaign(server.url(), rows=10, concurrency=4)

    failed = assert_stopped_at_once(run, rows=10, concurrency=4)
    assert (server.handshakes, server.requests) == (0, 0)
    assert server.connections <= 4
    assert failed["result_error"].str.starts_with("TLS certificate verify failed: ").all()
    assert failed["result_attempts"].to_list() == ["1"] * failed.height
    message = run.out + run.err
    detail = "unable to get local issuer certificate" if kind == "unknown CA" else "self-signed certificate"
    assert f"cannot connect to 127.0.0.1:{server.port}: TLS certificate verify failed: {detail}" in message
    assert "point SSL_CERT_FILE at its bundle or set api.ca_bundle" in message


def test_at_the_starter_tier_rate_one_handshake_is_made_and_the_rows_waiting_for_their_turn_are_left_alone(
    run_campaign: Callable[..., Run], untrusted: Server
) -> None:
    # the issue's run: 60/min and 16 workers made 66 handshakes over 64 s before the circuit breaker stopped it
    run = run_campaign(untrusted.url(), rows=40, concurrency=16, rate="60/min")

    failed = assert_stopped_at_once(run, rows=40, concurrency=16)
    assert failed.height == 1
    assert untrusted.connections == 1
    assert untrusted.requests == 0


def test_once_the_ca_is_trusted_the_next_run_sends_the_rest_and_retry_the_row_that_failed(
    run_campaign: Callable[..., Run], untrusted: Server, certs: Certificates
) -> None:
    first = run_campaign(untrusted.url(), rows=10, concurrency=16, rate="60/min")
    assert first.code == 3
    trusted = {"ca_bundle": str(certs.ca)}
    second = run_campaign(untrusted.url(), rows=10, concurrency=16, api=trusted)

    # the rows that waited for their turn were never marked in flight, so none of them came back `unknown`
    assert second.code == 1, second.out + second.err
    assert second.statuses() == {"sent": 9, "failed": 1}
    third = run_campaign(untrusted.url(), rows=10, concurrency=16, api=trusted, command="retry")
    assert third.code == 0, third.out + third.err
    assert third.statuses() == {"sent": 10}
    assert untrusted.requests == 10


def test_the_ca_bundle_named_in_the_spec_is_trusted(
    run_campaign: Callable[..., Run], untrusted: Server, certs: Certificates, tmp_path: Path
) -> None:
    shutil.copy(certs.ca, tmp_path / "private-ca.pem")
    run = run_campaign(untrusted.url(), rows=5, api={"ca_bundle": "private-ca.pem"})  # relative to the spec

    assert run.code == 0, run.out + run.err
    assert run.statuses() == {"sent": 5}
    assert untrusted.requests == 5
    assert run.results["result_message_id"].is_not_null().all()


@pytest.mark.slow
def test_ssl_cert_file_in_the_environment_is_trusted(
    make_campaign: MakeCampaign, untrusted: Server, certs: Certificates
) -> None:
    # OpenSSL reads SSL_CERT_FILE when the client's SSL context is made: a real process with it in its environment
    spec = make_campaign(contact_rows(3), api=api_section(untrusted.url(), timeout_s=10))
    env = {**os.environ, "SSL_CERT_FILE": str(certs.ca), "SENT_DM_SENDER_ID": SENDER, "SENT_DM_API_KEY": API_KEY}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(spec), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert untrusted.requests == 3


# --- a certificate for another name, a server that does not speak TLS ----------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_certificate_for_another_name_stops_the_run(
    run_campaign: Callable[..., Run], certs: Certificates, host: str
) -> None:
    with Server(certs.other_name) as server:
        run = run_campaign(server.url(host), rows=6, api={"ca_bundle": str(certs.ca)})

    failed = assert_stopped_at_once(run, rows=6, concurrency=4)
    assert (server.handshakes, server.requests) == (0, 0)
    assert failed["result_error"].str.starts_with("TLS hostname mismatch").all()
    message = run.out + run.err
    assert f"cannot connect to {host}:{server.port}: TLS hostname mismatch" in message
    assert f"certificate is not valid for '{host}'" in message
    assert "a host name that the server's certificate lists" in message


def test_a_plain_http_server_behind_an_https_url_stops_the_run(run_campaign: Callable[..., Run]) -> None:
    with Server(certificate=None) as server:
        run = run_campaign(server.url(), rows=6)

    failed = assert_stopped_at_once(run, rows=6, concurrency=4)
    assert server.connections <= 4
    assert failed["result_error"].str.starts_with("the server does not speak TLS").all()
    assert f"cannot connect to 127.0.0.1:{server.port}: the server does not speak TLS" in run.out + run.err


# --- a host name that does not resolve -----------------------------------------------------------------------------


@pytest.fixture
def unresolvable() -> str:
    """The reserved name, once this machine's resolver has shown it answers "no such name" promptly."""
    answer: list[BaseException | None] = []

    def look_up() -> None:
        try:
            socket.getaddrinfo(UNRESOLVABLE, 443)
        except OSError as exc:
            answer.append(exc)
        else:
            answer.append(None)

    probe = threading.Thread(target=look_up, daemon=True)
    probe.start()
    probe.join(5)
    if not answer or not isinstance(answer[0], socket.gaierror) or answer[0].errno != socket.EAI_NONAME:
        pytest.skip(f"this machine's resolver does not answer 'no such name' for {UNRESOLVABLE} promptly")
    return UNRESOLVABLE


def test_a_host_name_that_does_not_resolve_stops_the_run_after_a_second_look(
    run_campaign: Callable[..., Run], unresolvable: str
) -> None:
    run = run_campaign(f"https://{unresolvable}", rows=6)

    failed = assert_stopped_at_once(run, rows=6, concurrency=4)
    assert failed["result_error"].str.starts_with("the host name does not resolve").all()
    message = run.out + run.err
    assert f"cannot connect to {unresolvable}:443: the host name does not resolve" in message
    assert "check the spelling of the host in api.base_url" in message


def _failing_once(first: Exception) -> tuple[httpx.MockTransport, list[int]]:
    """A transport that raises `first` on its first request and answers 200 after; the list counts requests."""
    calls: list[int] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise first
        return httpx.Response(200, json={"messageId": "m-1"})

    return httpx.MockTransport(handle), calls


def _connect_error(cause: BaseException) -> httpx.ConnectError:
    """A ConnectError chained to its cause, as the transports raise it."""
    try:
        raise httpx.ConnectError(f"could not connect: {cause}") from cause
    except httpx.ConnectError as exc:
        return exc


def _send_one(base_url: str, transport: httpx.AsyncBaseTransport) -> tuple[list[SendOutcome], RunControl]:
    outcomes: list[SendOutcome] = []
    control = RunControl()
    config = SenderConfig(base_url=base_url, sender_id=SENDER, api_key=API_KEY, concurrency=1, backoff_base_s=0)

    async def go() -> None:
        jobs = [SendJob(row=1, key="k" * 32, body=b"{}")]
        await send_all(jobs, config, on_outcome=outcomes.append, control=control, transport=transport)

    anyio.run(go)
    return outcomes, control


def test_a_name_that_resolves_on_the_second_look_was_a_resolver_hiccup_and_the_row_is_retried() -> None:
    # "localhost" resolves: the second look disagrees with the first failure, so it is retried as transient
    hiccup = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    transport, calls = _failing_once(_connect_error(hiccup))
    outcomes, control = _send_one("https://localhost:8443", transport)

    assert [(o.status, o.attempts) for o in outcomes] == [("sent", 2)]
    assert control.abort_reason is None
    assert len(calls) == 2


def test_a_resolver_that_does_not_answer_is_a_transient_failure() -> None:
    timeout = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    transport, calls = _failing_once(_connect_error(timeout))
    outcomes, control = _send_one(f"https://{UNRESOLVABLE}", transport)

    assert [(o.status, o.attempts) for o in outcomes] == [("sent", 2)]
    assert control.abort_reason is None
    assert len(calls) == 2


# --- the classification --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cause", "verdict"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), Verdict.SYSTEMIC),
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), Verdict.TRANSIENT),
        (ConnectionRefusedError(111, "Connection refused"), Verdict.TRANSIENT),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), Verdict.TRANSIENT),
    ],
)
def test_only_failures_every_request_would_share_are_systemic(cause: BaseException, verdict: Verdict) -> None:
    assert classify_exception(_connect_error(cause)) is verdict


def test_httpx_own_transport_on_the_proxy_path_is_classified_the_same(untrusted: Server) -> None:
    # httpcore wraps the ssl error once more: the cause is found along the chain
    async def connect() -> BaseException:
        async with httpx.AsyncHTTPTransport(verify=ssl.create_default_context()) as transport:
            try:
                await transport.handle_async_request(httpx.Request("POST", untrusted.url() + "/v1/messages/contact"))
            except httpx.ConnectError as exc:
                return exc
        raise AssertionError("the handshake with an untrusted certificate succeeded")

    error = anyio.run(connect)
    assert classify_exception(error) is Verdict.SYSTEMIC
    failure = systemic_failure(error)
    assert failure is not None
    assert failure.what == "TLS certificate verify failed: unable to get local issuer certificate"


# --- api.ca_bundle in the spec -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("credentials")
def test_a_ca_bundle_that_is_missing_or_not_pem_is_a_spec_error(
    cli: Cli, make_campaign: MakeCampaign, tmp_path: Path
) -> None:
    (tmp_path / "notes.pem").write_text("not a certificate\n")
    for name, problem in [
        ("missing.pem", "No such file or directory"),
        ("notes.pem", "no certificate OpenSSL can read in it (no certificate or crl found)"),
    ]:
        spec = make_campaign(api=api_section("https://api.example.test", ca_bundle=name))
        code, _out, err = cli("run", spec)
        assert code == 2
        assert f"{spec}: api.ca_bundle: cannot use {tmp_path / name}: {problem}. Hint: the path is relative" in err


@pytest.mark.usefixtures("credentials")
@pytest.mark.parametrize("base_url", ["sandbox", "http://127.0.0.1:9"])
def test_a_ca_bundle_without_an_https_base_url_is_a_spec_error(
    cli: Cli, make_campaign: MakeCampaign, certs: Certificates, base_url: str
) -> None:
    spec = make_campaign(api=api_section(base_url, ca_bundle=str(certs.ca)))
    code, _out, err = cli("run", spec)
    assert code == 2
    assert "api.ca_bundle: only an https:// base_url uses a CA bundle" in err


def test_the_v3_template_check_stops_at_an_untrusted_certificate_before_anything_is_sent(
    cli: Cli, make_campaign: MakeCampaign, credentials: None, untrusted: Server
) -> None:
    """The check before the first send meets the same certificate first: exit 3 with the same fix, no retries of
    the handshake, no results file, nothing sent."""
    spec = make_campaign(
        [{"phone": "+1 415 555 0123", "first_name": "Ada", "order_id": "1"}],
        message={
            "to": {"column": "phone"},
            "contact_id": None,
            "template_name": {"value": "order_shipped"},
            "template_id": None,
        },
        api={"version": "v3", "base_url": untrusted.url(), "api_key": "${SENT_DM_API_KEY}", "timeout_s": 10},
    )
    code, out, err = cli("run", spec)
    assert code == 3, out + err
    assert "GET /v3/templates?name=order_shipped: TLS certificate verify failed" in err
    assert "point SSL_CERT_FILE at its bundle or set api.ca_bundle" in err
    assert (untrusted.handshakes, untrusted.requests) == (0, 0)
    assert untrusted.connections == 1  # a certificate problem is not retried
    assert not (spec.parent / "out" / "results.csv").exists()
    assert API_KEY not in out + err
