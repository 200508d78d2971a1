"""What Sealift takes from oras-py beyond its public API (updater/oras_adapter.py) still works as the
adapter expects, and which certificates a registry connection uses (updater/registry_tls.py).
These fail when a release of oras-py changes what the adapter reaches into."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from updater import oras_adapter, registry_tls
from updater.errors import InputError


@pytest.fixture
def failing_server() -> Iterator[tuple[str, list[str]]]:
    """A server that answers every request 500, and counts them."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_one_request_is_one_attempt_without_oras_retries(failing_server: tuple[str, list[str]]) -> None:
    host, seen = failing_server
    registry = oras_adapter.new_registry(host, plain_http=True, verify=True, cert=None)
    with oras_adapter.request_once(registry, f"http://{host}/v2/", "GET", headers={}, data=None, stream=False) as response:
        assert response.status_code == 500 and seen == ["/v2/"]  # oras-py's own decorator would have retried
    registry.session.close()


def test_credentials_come_from_the_docker_config_and_its_credential_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inline = base64.b64encode(b"edge:right horse").decode()
    helper = tmp_path / "bin/docker-credential-sitevault"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\nread host\necho "{\\"Username\\": \\"vault-user\\", \\"Secret\\": \\"s3cret for $host\\"}"\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:/usr/bin:/bin")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"mirror.example:5000": {"auth": inline}},
                                  "credHelpers": {"vault.example": "sitevault"}}))
    for host, expected in (("mirror.example:5000", inline),
                           ("vault.example", base64.b64encode(b"vault-user:s3cret for vault.example").decode()),
                           ("nowhere.example", None)):
        registry = oras_adapter.new_registry(host, plain_http=False, verify=True, cert=None)
        oras_adapter.load_credentials(registry, f"{host}/demo", [str(config)])
        assert oras_adapter.credential(registry) == expected
        if expected is not None:  # a registry with htpasswd auth gets the same credential through the basic backend
            oras_adapter.answers_basic_challenges(registry, plain_http=False, verify=True)
            assert registry.auth.get_auth_header() == {"Authorization": f"Basic {expected}"}
    explicit = oras_adapter.new_registry("mirror.example:5000", plain_http=False, verify=True, cert=("c.cert", "c.key"))
    oras_adapter.load_credentials(explicit, "mirror.example:5000/demo", [str(config)])
    oras_adapter.set_credential(explicit, "other", "pass")
    assert oras_adapter.credential(explicit) == base64.b64encode(b"other:pass").decode()
    assert explicit.session.cert == ("c.cert", "c.key")


def test_which_certificates_a_registry_connection_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    certs_d = tmp_path / "certs.d"
    monkeypatch.setenv("SEALIFT_CERTS_D", f"{tmp_path / 'empty'}:{certs_d}")
    monkeypatch.delenv("SEALIFT_CA_FILE", raising=False)
    registry_tls.use_ca_file(None)
    host = certs_d / "mirror.example:5000"
    host.mkdir(parents=True)
    assert registry_tls.tls_for("mirror.example:5000") == registry_tls.Tls(verify=True, cert=None, source="the system's CAs")
    (host / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n")
    (host / "client.cert").write_text("cert")
    (host / "client.key").write_text("key")
    from_dir = registry_tls.tls_for("mirror.example:5000")
    assert from_dir.verify == str(host / "ca.crt") and from_dir.cert == (str(host / "client.cert"), str(host / "client.key"))
    (host / "second.crt").write_text("-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----")
    joined = registry_tls.tls_for("mirror.example:5000").verify
    assert isinstance(joined, str) and Path(joined).read_text().count("BEGIN CERTIFICATE") == 2
    assert registry_tls.tls_for("other.example").verify is True  # certs.d is per registry
    bundle = tmp_path / "site-ca.pem"
    bundle.write_text("pem")
    monkeypatch.setenv("SEALIFT_CA_FILE", str(bundle))
    assert registry_tls.tls_for("other.example").verify == str(bundle)
    chosen = tmp_path / "chosen.pem"
    chosen.write_text("pem")
    registry_tls.use_ca_file(str(chosen))  # --ca-file wins over the environment
    try:
        assert registry_tls.tls_for("mirror.example:5000").verify == str(chosen)
        registry_tls.use_ca_file(str(tmp_path / "typo.pem"))
        with pytest.raises(InputError, match=r"--ca-file .*typo\.pem: no readable CA bundle"):
            registry_tls.tls_for("mirror.example:5000")
    finally:
        registry_tls.use_ca_file(None)
    (host / "client.key").unlink()
    with pytest.raises(InputError, match=r"client\.cert: a client certificate without its key client\.key beside it"):
        registry_tls.tls_for("mirror.example:5000")


def test_login_stores_through_the_credential_helper_the_docker_configuration_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from updater.credentials import login, logout
    from updater.registry import Reference, RegistryClient

    class Answering(http.server.BaseHTTPRequestHandler):  # a registry's API root that takes any basic credentials
        def do_GET(self) -> None:
            ok = self.headers.get("Authorization", "").startswith("Basic ")
            self.send_response(200 if ok else 401)
            if not ok:
                self.send_header("Www-Authenticate", 'Basic realm="test"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answering)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    kept = tmp_path / "vault"
    helper = tmp_path / "bin/docker-credential-sitevault"
    helper.parent.mkdir()
    helper.write_text(f'#!/bin/sh\n[ "$1" = get ] && {{ echo "credentials not found in native keychain"; exit 1; }}\n'
                      f'echo "$1" >> {kept}\ncat >> {kept}\necho >> {kept}\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:/usr/bin:/bin")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker/config.json").write_text(json.dumps({"credsStore": "sitevault"}))
    try:
        assert login(host, "edge", "s3cret horse", plain_http=True) == "credential helper docker-credential-sitevault"
        assert logout(host)
        (tmp_path / "docker/config.json").write_text(json.dumps({"credsStore": "broken"}))
        (helper.parent / "docker-credential-broken").write_text("#!/bin/sh\necho 'not json'\n")
        (helper.parent / "docker-credential-broken").chmod(0o755)
        with pytest.raises(InputError, match="its credential helper gave no readable credentials"):
            RegistryClient(Reference(host=host, repository="demo"), plain_http=True, what="registry").ping()
    finally:
        server.shutdown()
        server.server_close()
    action, stored, erased, _ = kept.read_text().split("\n", 3)
    assert action == "store" and json.loads(stored) == {"ServerURL": host, "Username": "edge", "Secret": "s3cret horse"}
    assert erased == "erase" and "s3cret" not in (tmp_path / "docker/config.json").read_text()  # never in the file itself
