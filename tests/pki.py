"""A certificate authority made for one test: a CA, server certificates for loopback addresses and
client certificates, as PEM files (``cryptography``)."""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import ipaddress
import json
import os
import threading
import urllib.parse
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TestCA", "TokenIssuer"]


class TestCA:
    """A CA whose certificate is ``cert`` (PEM at ``cert_path``); issues certificates into ``directory``."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "Sealift test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (self._builder(subject, self.key.public_key(), subject)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                                  key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.cert_path = directory / "ca.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, server_ip: str | None = None) -> tuple[Path, Path]:
        """A certificate and its key (``NAME.cert``, ``NAME.key``): for a server at ``server_ip``, else for a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key(), self.cert.subject)
        if server_ip is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(server_ip))]),
                                            critical=False)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_ip is not None else ExtendedKeyUsageOID.CLIENT_AUTH
        cert = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False).sign(self.key, hashes.SHA256())
        cert_path, key_path = self.directory / f"{name}.cert", self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        return cert_path, key_path

    @staticmethod
    def _builder(subject: x509.Name, public_key: ec.EllipticCurvePublicKey, issuer: x509.Name) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=1)))


class TokenIssuer:
    """A token server of the Docker registry token specification for one test: it checks a user name
    and password (HTTP basic) and issues ES256 JWTs, signed by a certificate of ``ca`` (sent in the
    token's ``x5c`` header, which the registry checks against its ``rootcertbundle``), granting what
    each scope asks. ``issued`` lists the scopes it granted, ``refused`` counts refusals."""

    def __init__(self, ca: TestCA, *, users: dict[str, str], service: str = "sealift-test", issuer: str = "sealift-test-issuer"):

        self.service, self.issuer, self.users = service, issuer, users
        self.issued: list[str] = []
        self.refused = 0
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token signer")])
        self.cert = ca._builder(subject, self.key.public_key(), ca.cert.subject).sign(ca.key, hashes.SHA256())
        issuer_self = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = issuer_self._answer(self.path, self.headers.get("Authorization", ""))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def registry_config(self, bundle: Path) -> dict[str, object]:
        """The registry's ``auth`` section; ``bundle`` receives the CA the tokens chain to."""
        return {"token": {"realm": self.realm, "service": self.service, "issuer": self.issuer, "rootcertbundle": str(bundle)}}

    def _answer(self, path: str, authorization: str) -> tuple[int, bytes]:

        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        user = None
        if authorization.startswith("Basic "):
            name, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            user = name if self.users.get(name) == password else None
        if user is None:
            self.refused += 1
            return 401, b'{"errors": [{"code": "UNAUTHORIZED", "message": "user name or password refused"}]}'
        access = []
        for scope in " ".join(query.get("scope", [])).split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
            self.issued.append(scope)
        token = self._sign({"iss": self.issuer, "sub": user, "aud": query.get("service", [""])[0], "exp": int(_now().timestamp()) + 300,
                            "nbf": int(_now().timestamp()) - 60, "iat": int(_now().timestamp()), "jti": os.urandom(8).hex(),
                            "access": access})
        return 200, json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()

    def _sign(self, claims: dict[str, object]) -> str:


        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
