"""HTTPS, mutual TLS and certificate reloads of a real `shipyard serve` (certificates made here)."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.http as tritonclient_http
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from serve_support import ServeModels

from servers import Server, launch, run_to_exit, running

RELOAD_TIMEOUT_S = 30.0


class Authority:
    """A CA that signs server certificates (for 127.0.0.1 and localhost) and client ones."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = _builder(_name("shipyard-test-ca"), _name("shipyard-test-ca"), self.key, 1, ca=True).sign(
            self.key, hashes.SHA256()
        )
        self.pem = folder / "ca.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, serial: int, *, server: bool = True) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = _builder(_name(stem), self.cert.subject, key, serial, ca=False)
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert_path, key_path = self.folder / f"{stem}.pem", self.folder / f"{stem}.key"
        cert_path.write_bytes(
            builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        )
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path

    def client_context(self, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.pem)
        if client is not None:
            context.load_cert_chain(*client)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, key: Any, serial: int, ca: bool
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )


def install(source: tuple[Path, Path], target: tuple[Path, Path]) -> None:
    """Replace the served files as a deployment tool does: each renamed into place."""
    for src, dst in zip(source, target, strict=True):
        staged = dst.with_suffix(".new")
        staged.write_bytes(src.read_bytes())
        os.replace(staged, dst)


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority(tmp_path)


@contextmanager
def tls_server(models: ServeModels, log_dir: Path, ca: Authority, args: list[str]) -> Iterator[Server]:
    trusting_ca = {"verify": ca.client_context()}
    with running(models.home, ["iris-onnx"], log_dir, args=args, client_options=trusting_ca) as server:
        assert server.url.startswith("https://127.0.0.1:"), server.url
        yield server


def peer_serial(server: Server, context: ssl.SSLContext) -> int:
    """The serial number of the certificate a new connection is served."""
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return int(tls.getpeercert()["serialNumber"], 16)  # type: ignore[index,arg-type]


def wait_for(predicate: Callable[[], bool], what: str, server: Server) -> None:
    deadline = time.monotonic() + RELOAD_TIMEOUT_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {RELOAD_TIMEOUT_S}s; stderr:\n{server.stderr()}")
        time.sleep(0.1)


def test_https_serves_with_the_ca_and_plain_http_gets_nothing(
    serve_models: ServeModels, ca: Authority, tmp_path: Path
) -> None:
    cert, key = ca.issue("server", 100)
    with tls_server(
        serve_models, tmp_path / "log", ca, ["--tls-cert", str(cert), "--tls-key", str(key)]
    ) as server:
        with httpx.Client(base_url=server.url, verify=ca.client_context(), timeout=10.0) as client:
            body = {
                "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]
            }
            response = client.post("/v2/models/iris-onnx/infer", json=body)
            assert response.status_code == 200, response.text
        triton = tritonclient_http.InferenceServerClient(
            server.url.removeprefix("https://"), ssl=True, ssl_context_factory=ca.client_context
        )
        try:
            assert triton.is_server_ready()
            assert triton.get_model_metadata("iris-onnx")["name"] == "iris-onnx"
        finally:
            triton.close()
        # The system's CAs do not know ours.
        with httpx.Client(verify=True, timeout=10.0) as untrusting, pytest.raises(httpx.ConnectError):
            untrusting.get(f"{server.url}/readyz")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=10.0)


def test_mutual_tls_refuses_a_client_without_a_certificate(
    serve_models: ServeModels, ca: Authority, tmp_path: Path
) -> None:
    cert, key = ca.issue("server", 100)
    client_cert = ca.issue("client", 500, server=False)
    args = ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(ca.pem)]
    server = launch(serve_models.home, ["iris-onnx"], tmp_path / "log", args=args, wait_ready=False)
    try:
        with httpx.Client(base_url=server.url, verify=ca.client_context(client_cert), timeout=10.0) as client:
            wait_for(
                lambda: _status(client, "/healthz") == 200, "no answer with a client certificate", server
            )
        with httpx.Client(base_url=server.url, verify=ca.client_context(), timeout=10.0) as anonymous:
            assert _status(anonymous, "/healthz") is None  # the handshake or the first read fails
        (tmp_path / "other").mkdir()
        foreign = Authority(tmp_path / "other").issue("client", 501, server=False)
        with httpx.Client(base_url=server.url, verify=ca.client_context(foreign), timeout=10.0) as foreigner:
            assert _status(foreigner, "/healthz") is None
    finally:
        code = server.stop()
    assert code == 0, server.stderr()


def _status(client: httpx.Client, path: str) -> int | None:
    try:
        return client.get(path).status_code
    except httpx.TransportError:
        return None


def test_certificates_reload_on_change_and_sighup_without_dropping_connections(
    serve_models: ServeModels, ca: Authority, tmp_path: Path
) -> None:
    served = ca.issue("served", 100)
    context = ca.client_context()
    args = ["--tls-cert", str(served[0]), "--tls-key", str(served[1])]
    with tls_server(serve_models, tmp_path / "log", ca, args) as server:
        kept = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
        kept.request("GET", "/healthz")
        assert kept.getresponse().read()
        kept_socket = kept.sock
        assert peer_serial(server, context) == 100

        install(ca.issue("second", 200), served)
        wait_for(lambda: peer_serial(server, context) == 200, "the changed files were not served", server)

        install(ca.issue("third", 300), served)
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: peer_serial(server, context) == 300, "SIGHUP did not reload", server)

        served[0].write_text("not a certificate\n")
        server.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: "keeping the current certificate" in server.stderr(),
            "a bad file was not reported",
            server,
        )
        assert peer_serial(server, context) == 300

        kept.request("GET", "/healthz")  # the connection opened before every reload
        assert kept.getresponse().status == 200
        assert kept.sock is kept_socket
        assert int(kept.sock.getpeercert()["serialNumber"], 16) == 100  # type: ignore[index,arg-type]
        kept.close()
    assert "keeping the current certificate" in server.stderr()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "{cert}"], "tls_key"),
        (["--tls-cert", "{missing}", "--tls-key", "{key}"], "no such file"),
        (["--tls-cert", "{cert}", "--tls-key", "{other_key}"], "key values mismatch"),
        (["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{missing}"], "--tls-client-ca"),
    ],
)
def test_bad_tls_files_are_one_line_and_exit_2(
    serve_models: ServeModels, ca: Authority, tmp_path: Path, args: list[str], message: str
) -> None:
    cert, key = ca.issue("server", 100)
    _, other_key = ca.issue("other", 101)
    paths = {"cert": cert, "key": key, "other_key": other_key, "missing": tmp_path / "missing.pem"}
    result = run_to_exit(serve_models.home, ["iris-onnx"], args=[a.format(**paths) for a in args])
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_several_workers_each_reload_and_sighup_does_not_stop_the_server(
    serve_models: ServeModels, ca: Authority, tmp_path: Path
) -> None:
    served = ca.issue("served", 100)
    context = ca.client_context()
    args = ["--tls-cert", str(served[0]), "--tls-key", str(served[1]), "--workers", "2"]
    with tls_server(serve_models, tmp_path / "log", ca, args) as server:
        install(ca.issue("second", 200), served)
        server.proc.send_signal(signal.SIGHUP)  # the parent passes it on instead of exiting
        # Connections are spread across the workers by hash: several in a row see both.
        wait_for(
            lambda: all(peer_serial(server, context) == 200 for _ in range(8)),
            "not every worker reloaded",
            server,
        )
        assert server.proc.poll() is None
