"""Real parts for the ingress: Debian's HAProxy run from a device's ``STATE/ingress`` (as
examples/systemd/sealift-ingress.service runs it), and an HTTP load that records every request,
to measure what a switch costs the clients."""

from __future__ import annotations

import http.client
import itertools
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.realparts import RealPartError, require
from updater.ingress import Ingress

__all__ = ["HttpLoad", "running_haproxy", "self_signed"]


def self_signed(host: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for ``host`` and its key, both PEM."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False).sign(key, hashes.SHA256()))
    return (certificate.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


@contextmanager
def running_haproxy(state_dir: Path, port: int, *, log: Path, tls_port: int | None = None) -> Iterator[Path]:
    """Give the device at ``state_dir`` an ingress on 127.0.0.1:``port`` (and ``tls_port``) and run
    HAProxy from it (master-worker, reloadable through ``master.sock``); yield its configuration."""
    haproxy = require("haproxy")
    config = Ingress(state_dir).init(port=port, address="127.0.0.1", tls_port=tls_port)
    with log.open("w") as out:
        proc = subprocess.Popen([haproxy, "-W", "-S", str(config.parent / "master.sock"), "-f", str(config)], stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            end = time.monotonic() + 10
            while not (config.parent / "admin.sock").exists():
                if proc.poll() is not None or time.monotonic() > end:
                    raise RealPartError("HAProxy did not start", log=log)
                time.sleep(0.05)
            yield config
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@dataclass
class HttpLoad:
    """GET ``path`` on ``host``:``port`` every ``every`` seconds on one kept-alive connection (a new one
    only after a failure), recording each request: when it ended, whether it succeeded (200, body
    ``ok``), and how long it took."""

    host: str
    port: int
    path: str = "/healthz"
    every: float = 0.005
    done: list[tuple[float, bool, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> HttpLoad:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=5)
        while not self._stop.is_set():
            began = time.perf_counter()
            try:
                connection.request("GET", self.path)
                response = connection.getresponse()
                good = response.status == 200 and response.read().strip() == b"ok"
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection(self.host, self.port, timeout=5)
                good = False
            ended = time.perf_counter()
            self.done.append((time.monotonic(), good, ended - began))
            time.sleep(self.every)
        connection.close()

    @property
    def failed(self) -> int:
        return sum(not good for _, good, _ in self.done)

    @property
    def succeeded(self) -> int:
        return sum(good for _, good, _ in self.done)

    def longest_gap(self) -> float:
        """The longest time between two successful requests."""
        times = [t for t, good, _ in self.done if good]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0 to 100) of the successful requests' latency, in seconds."""
        latencies = [latency for _, good, latency in self.done if good]
        return statistics.quantiles(latencies, n=1000, method="inclusive")[round(q * 10) - 1] if len(latencies) > 1 else 0.0
