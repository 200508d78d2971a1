"""A private registry as sites run one: TLS from the site's own CA, client certificates, and user
names and passwords (htpasswd), on a real CNCF distribution registry. Credentials go where Docker
keeps them (`sealift login`); certificates come from --ca-file, SEALIFT_CA_FILE or certs.d."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import bcrypt
import pytest
from click.testing import CliRunner, Result

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.cli import cli as sealift
from bundler.spec import load_spec
from tests.builders import project, signed
from tests.envelope import result_of
from tests.fakes import NoEngine
from tests.pki import TestCA, TokenIssuer
from tests.realparts import RegistryFactory
from updater.errors import DeliveryError, InputError
from updater.install import Installer
from updater.poll import RegistryPoller
from updater.profiles import builtin_profile_dir, load_profiles
from updater.registry import Retry, connect
from updater.trust import TrustedState

PROFILES = load_profiles([builtin_profile_dir()])
CPU = PROFILES["x86_64-cpu"]


def polled(source: str, root: Path, device: Path) -> str | None:
    """The version a device provisioned with ``root`` finds at ``source`` (TLS, and credentials, as a device has them)."""
    TrustedState(device).init(root)
    installer = Installer(state_dir=device, runtime=NoEngine(), profile=CPU)
    client = connect(source, plain_http=False, what="site registry")
    try:
        found = RegistryPoller(source, installer=installer, profile=CPU, retry=Retry(delays=())).find(client)
    finally:
        client.close()
    return found.app.version if found is not None and found.app is not None else None


def test_a_registry_with_its_own_ca_client_certificates_and_passwords(
        registry_factory: RegistryFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = TestCA(tmp_path / "pki")
    server_cert, server_key = ca.issue("registry", server_ip="127.0.0.1")
    client_cert, client_key = ca.issue("edge-device")
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_bytes(b"edge:" + bcrypt.hashpw(b"right horse", bcrypt.gensalt(rounds=4)) + b"\n")
    registry = registry_factory(config={
        "auth": {"htpasswd": {"realm": "sealift-test", "path": str(htpasswd)}},
        "http": {"tls": {"certificate": str(server_cert), "key": str(server_key), "clientcas": [str(ca.cert_path)]}}})
    host = registry.address
    certs_d = tmp_path / "certs.d"
    (certs_d / host).mkdir(parents=True)
    monkeypatch.setenv("SEALIFT_CERTS_D", str(certs_d))  # never the machine's own /etc/docker/certs.d
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.delenv("SEALIFT_CA_FILE", raising=False)
    spec = load_spec(project(tmp_path / "src"))
    (bundle,) = build_bundles(spec, select_profiles(spec, PROFILES, ("x86_64-cpu",)), BuildOptions(out=tmp_path / "out", epoch=0))
    root = signed([bundle.path], tmp_path / "signing")
    runner = CliRunner()

    def login(password: str, *options: str, as_json: bool = False) -> Result:
        return runner.invoke(sealift, [*options, "login", host, "-u", "edge", "--password-stdin", *(["--json"] if as_json else [])],
                             input=f"{password}\n")

    # the system's CAs do not know the site's: a delivery fault naming the ways to trust it
    untrusted = runner.invoke(sealift, ["push", str(bundle.path), f"{host}/demo"])
    assert untrusted.exit_code == DeliveryError.exit_code and "Traceback" not in untrusted.output
    assert "TLS certificate is not trusted by the system's CAs: give its CA with --ca-file" in untrusted.stderr
    missing = runner.invoke(sealift, ["--ca-file", str(tmp_path / "nowhere.pem"), "push", str(bundle.path), f"{host}/demo"])
    assert missing.exit_code == InputError.exit_code and "nowhere.pem: no readable CA bundle (PEM) there" in missing.stderr
    # the CA alone is not enough where the registry asks for a client certificate
    no_client_cert = login("right horse", "--ca-file", str(ca.cert_path))
    assert no_client_cert.exit_code == DeliveryError.exit_code and "right horse" not in no_client_cert.output
    assert f"it asks for a client certificate it trusts: put NAME.cert and NAME.key in certs.d/{host}/" in no_client_cert.stderr
    # Docker's certs.d layout: the CA and the client certificate for this registry
    shutil.copy(ca.cert_path, certs_d / host / "ca.crt")
    shutil.copy(client_cert, certs_d / host / "client.cert")
    (certs_d / host / "client.key").write_bytes(client_key.read_bytes())
    wrong = login("wrong horse")
    assert wrong.exit_code == InputError.exit_code and "not authorised" in wrong.stderr
    assert "horse" not in wrong.output and not (tmp_path / "docker/config.json").exists()
    right = login("right horse", as_json=True)
    assert right.exit_code == 0, right.output
    config = tmp_path / "docker/config.json"
    assert result_of(right.stdout)["stored_in"] == str(config)
    assert stat.S_IMODE(config.stat().st_mode) == 0o600 and host in json.loads(config.read_text())["auths"]
    pushed = runner.invoke(sealift, ["push", str(bundle.path), f"{host}/demo"])
    assert pushed.exit_code == 0, pushed.output
    # a device polls it the same way: certificates from certs.d, the password from the Docker config
    assert polled(f"{host}/demo", root, tmp_path / "device") == "1.2.0"
    # forgotten credentials: the registry's question is named, with the way to answer it
    assert runner.invoke(sealift, ["logout", host]).exit_code == 0 and host not in json.loads(config.read_text())["auths"]
    anonymous = runner.invoke(sealift, ["push", str(bundle.path), f"{host}/demo"])
    assert anonymous.exit_code == InputError.exit_code and f"`sealift login {host}`" in anonymous.stderr


def test_a_registry_with_token_authentication_over_tls(registry_factory: RegistryFactory, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ca = TestCA(tmp_path / "pki")
    server_cert, server_key = ca.issue("registry", server_ip="127.0.0.1")
    issuer = TokenIssuer(ca, users={"ci-bot": "token horse"})
    try:
        registry = registry_factory(config={"auth": issuer.registry_config(ca.cert_path),
                                            "http": {"tls": {"certificate": str(server_cert), "key": str(server_key)}}})
        host = registry.address
        monkeypatch.setenv("SEALIFT_CERTS_D", str(tmp_path / "certs.d"))
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
        monkeypatch.delenv("SEALIFT_CA_FILE", raising=False)
        (tmp_path / "certs.d" / host).mkdir(parents=True)
        shutil.copy(ca.cert_path, tmp_path / "certs.d" / host / "ca.crt")
        spec = load_spec(project(tmp_path / "src"))
        (bundle,) = build_bundles(spec, select_profiles(spec, PROFILES, ("x86_64-cpu",)), BuildOptions(out=tmp_path / "out", epoch=0))
        root = signed([bundle.path], tmp_path / "signing")
        runner = CliRunner()
        anonymous = runner.invoke(sealift, ["push", str(bundle.path), f"{host}/demo"])
        assert anonymous.exit_code == InputError.exit_code and "Traceback" not in anonymous.output
        wrong = runner.invoke(sealift, ["login", host, "-u", "ci-bot", "--password-stdin"], input="wrong horse\n")
        assert wrong.exit_code == InputError.exit_code and "horse" not in wrong.output
        right = runner.invoke(sealift, ["login", host, "-u", "ci-bot", "--password-stdin"], input="token horse\n")
        assert right.exit_code == 0, right.output
        pushed = runner.invoke(sealift, ["push", str(bundle.path), f"{host}/demo"])
        assert pushed.exit_code == 0, pushed.output
        granted = [set(scope.rpartition(":")[2].split(",")) for scope in issuer.issued if scope.startswith("repository:demo:")]
        assert {"pull", "push"} in granted  # the registry asked (in either order), the issuer granted, the push went through
        linked = result_of(runner.invoke(sealift, ["push", str(bundle.path), f"{host}/eu/demo", "--mount-from", "demo", "--json"]).stdout)
        assert linked["blobs_mounted"] > 0 and linked["blobs_sent"] == 0  # a token for both repositories
        assert polled(f"{host}/demo", root, tmp_path / "device") == "1.2.0"
    finally:
        issuer.close()
