"""The device's ingress: HAProxy in front of the applications' routes, configured by the updater.

HAProxy (Debian's ``haproxy``) runs as a host service (``examples/systemd/sealift-ingress.service``)
from the files the updater keeps in ``STATE/ingress``: ``haproxy.cfg`` (written here),
``master.sock`` (its master CLI: reload) and ``admin.sock`` (its runtime API). It is the one of
the maintained proxies whose runtime API changes where a backend's servers point, and whether
they take new requests, without a reload: a switch drops no request, not even on a kept-alive
connection, where a reload (nginx's, Caddy's, HAProxy's own) closes idle kept-alive connections.

Each service and port a route leads to is a backend named ``APP:SERVICE:PORT`` with two servers,
``a`` and ``b``: the application's slots. A switch (1) points the new slot's server at its
container and makes it ready, (2) drains the old one (no new requests; those under way finish),
(3) waits until it holds no connection, then puts it in maintenance. The configuration is
written again after every change, so a restarted HAProxy starts where the runtime API left it;
HAProxy is reloaded only when the backends or the rules change (an application's first release,
or one whose routes differ), after ``haproxy -c`` has checked the new file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from updater.durable import replace_file
from updater.errors import DeviceFault, InputError
from updater.locks import file_lock
from updater.routes import Route

__all__ = ["Ingress", "Placement"]

_SETTINGS, _CONFIG = "ingress.json", "haproxy.cfg"
_LOADED, _ROUTED = "loaded", "routed.json"  # the digest of what HAProxy loaded; the slot each application is routed to
_IDLE = "127.0.0.1:9"  # where a server no slot fills points (it is in maintenance)
_DRAIN_S = 30.0  # at most this long for requests under way on the old slot to finish


@dataclass(frozen=True)
class Placement:
    """Where an application's routes lead: its routes, its active slot, and its containers' addresses
    by slot and service."""

    app: str
    routes: tuple[Route, ...]
    slot: str
    addresses: Mapping[str, Mapping[str, str]]  # slot -> service -> address
    certificates: Mapping[str, Path | None] = field(default_factory=dict)  # host -> the active slot's opened PEM

    def backends(self) -> dict[str, tuple[str, int]]:
        """Backend name -> (service, port), for each service and port a route leads to."""
        return {f"{self.app}:{r.service}:{r.port}": (r.service, r.port) for r in self.routes}  # no name holds a ':'


class Ingress:
    """``STATE/ingress``: the ingress's settings and HAProxy's configuration and sockets."""

    def __init__(self, state_dir: Path, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.dir = state_dir / "ingress"
        self.sleep = sleep

    @classmethod
    def of(cls, state_dir: Path) -> Ingress | None:
        """The device's ingress, when it has one (``sealift-updater ingress init``)."""
        ingress = cls(state_dir)
        return ingress if (ingress.dir / _SETTINGS).is_file() else None

    def init(self, *, port: int, address: str = "", tls_port: int | None = None) -> Path:
        """Set the ingress up to listen on ``address``:``port`` (and ``tls_port`` for HTTPS) with no routes
        yet; return its configuration."""
        for value in (port, tls_port):
            if value is not None and not 1 <= value <= 65535:
                raise InputError(f"ingress port {value}: expected 1 to 65535")
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        settings = {"port": port, "address": address, "tls_port": tls_port}
        replace_file(self.dir / _SETTINGS, json.dumps(settings).encode(), mode=0o600)
        with self._locked():
            self._write(_CONFIG, self.render([]))
            for stale in (_LOADED, _ROUTED):
                (self.dir / stale).unlink(missing_ok=True)
        return self.dir / _CONFIG

    @property
    def tls_port(self) -> int | None:
        """The port it serves HTTPS on (None: it serves none)."""
        value = self._settings().get("tls_port")
        return int(value) if value else None

    def _settings(self) -> dict[str, Any]:
        try:
            settings = json.loads((self.dir / _SETTINGS).read_text())
            if not isinstance(settings, dict) or not isinstance(settings.get("port"), int):
                raise ValueError("no port")
            return settings
        except (OSError, ValueError) as e:
            raise DeviceFault(f"{self.dir / _SETTINGS}: the ingress's settings cannot be read ({e}); set it up again with "
                              "`sealift-updater ingress init --force`") from e

    def certificate_path(self, app: str, host: str) -> Path:
        """Where HAProxy loads ``host``'s certificate from: in memory, one path whichever slot serves."""
        return self.dir.parent / "run" / "ingress" / app / f"{host}.pem"

    def render(self, placements: Sequence[Placement]) -> str:
        """HAProxy's configuration for ``placements``."""
        settings = self._settings()
        lines = ["# written by sealift-updater from the applications' routes; changes here are overwritten",
                 "global", f"    stats socket {self.dir / 'admin.sock'} mode 600 level admin expose-fd listeners",
                 "defaults", "    mode http", "    timeout connect 5s", "    timeout client 60s", "    timeout server 60s",
                 "    timeout http-keep-alive 10s"]
        rules = []
        for route, placement in sorted(((r, p) for p in placements for r in p.routes),
                                       key=lambda rp: (rp[0].host is None, -len(rp[0].path))):
            conditions = ([f"{{ req.hdr(host),field(1,:) -i {route.host} }}"] if route.host else []) + \
                         ([f"{{ path_beg {route.path} }}"] if route.path != "/" else [])
            rules.append(f"    use_backend {placement.app}:{route.service}:{route.port}"
                         + (f" if {' '.join(conditions)}" if conditions else ""))
        rules.append("    default_backend no-route")
        lines += ["frontend ingress", f"    bind {settings['address']}:{settings['port']}", *rules]
        # a host whose certificate is not open here (its overlay is missing) is not served over HTTPS
        certificates = sorted(c for p in placements for host in p.certificates if (c := self.certificate_path(p.app, host)).is_file())
        if certificates and settings.get("tls_port"):
            lines += ["frontend ingress-tls", f"    bind {settings['address']}:{settings['tls_port']} ssl "
                      + " ".join(f"crt {c}" for c in certificates), *rules]
        lines += ["backend no-route", '    http-request return status 404 content-type text/plain string "no route\\n"']
        for placement in placements:
            for backend, (service, port) in sorted(placement.backends().items()):
                lines.append(f"backend {backend}")
                for slot in ("a", "b"):
                    address = placement.addresses.get(slot, {}).get(service)
                    where = f"{address}:{port}" if address else _IDLE
                    lines.append(f"    server {slot} {where}" + ("" if slot == placement.slot and address else " disabled"))
        return "\n".join(lines) + "\n"

    def apply(self, placements: Sequence[Placement], *, app: str | None = None, leaving: str | None = None) -> None:
        """Route as ``placements`` say (reloading HAProxy only when its backends or rules change); then, for
        application ``app``, drain slot ``leaving`` and wait until it holds no request. Every other
        application keeps the slot the ingress routes it to now (it may be switching itself)."""
        with self._locked():
            try:
                self._apply(placements, app=app, leaving=leaving)
            except (OSError, ValueError) as e:
                raise DeviceFault(f"{self.dir}: the ingress cannot be brought up to date ({e})") from e

    def _apply(self, placements: Sequence[Placement], *, app: str | None, leaving: str | None) -> None:
        routed = self._routed()
        # another application keeps the slot it is routed to while that slot runs (it may be mid-switch)
        placements = [replace(p, slot=routed[p.app]) if p.app != app and routed.get(p.app) in ("a", "b")
                      and p.addresses.get(routed[p.app]) else p for p in placements]
        changed = self._place_certificates(placements, strict=app)  # first: what is rendered is what is there
        text = self.render(placements)
        before = (self.dir / _CONFIG).read_text() if (self.dir / _CONFIG).is_file() else ""
        if _digest(_structure(text)) != self._loaded():
            self._check(text)
            self._write(_CONFIG, text)
            self._reload([b for p in placements for b in p.backends()])
            self._write(_LOADED, _digest(_structure(text)))
        else:
            if text != before:  # a device's flash is not written for nothing
                self._write(_CONFIG, text)
            for path, pem in changed.items():
                self._update_certificate(path, pem)
        for placement in placements:
            switching = placement.app == app and leaving is not None and leaving != placement.slot
            self._point(placement, strict=placement.app == app, draining=leaving if switching else None)
        if (now := {p.app: p.slot for p in placements}) != routed:
            self._write(_ROUTED, json.dumps(now, sort_keys=True))
        switched = next((p for p in placements if p.app == app), None)
        if switched is not None and leaving is not None and leaving != switched.slot:
            self._drain(switched, leaving)

    def _routed(self) -> dict[str, str]:
        """The slot the ingress routes each application to now."""
        try:
            found = json.loads((self.dir / _ROUTED).read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}

    def _loaded(self) -> str:
        """The digest of the configuration HAProxy last loaded, as far as the updater knows."""
        try:
            return (self.dir / _LOADED).read_text().strip()
        except OSError:
            return ""

    def _place_certificates(self, placements: Sequence[Placement], *, strict: str | None) -> dict[Path, bytes]:
        """Copy each served host's certificate from its active slot's opened secrets to the path HAProxy
        loads it from (memory-backed, like the secrets); return those whose content changed. One that
        is not open is left out, or for application ``strict`` is a DeviceFault."""
        changed = {}
        for placement in placements:
            for host, opened in placement.certificates.items():
                try:
                    pem = opened.read_bytes() if opened else b""
                except OSError:
                    pem = b""
                path = self.certificate_path(placement.app, host)
                if not pem and placement.app == strict:
                    raise DeviceFault(f"{placement.app}: no certificate for {host} is open on this device (the site's overlay "
                                      "delivers it)")
                if not pem:
                    path.unlink(missing_ok=True)  # an old one is not served in its stead
                    continue
                if not path.is_file() or path.read_bytes() != pem:
                    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    replace_file(path, pem, mode=0o600)
                    changed[path] = pem
        return changed

    def _update_certificate(self, path: Path, pem: bytes) -> None:
        """Give HAProxy a certificate's new content at run time (a rotation drops no connection)."""
        try:
            text = pem.decode("ascii").strip()
        except UnicodeDecodeError:
            raise DeviceFault(f"{path.parent.name}: the certificate for {path.stem} is not PEM text") from None
        answer = self._ask("admin.sock", f"set ssl cert {path} <<\n{text}\n")
        if "Transaction created" not in answer and "Transaction updated" not in answer:
            self._ask("admin.sock", f"abort ssl cert {path}")
            raise DeviceFault(f"the ingress refused the certificate for {path.stem}: {answer.strip()[:200]}")
        answer = self._ask("admin.sock", f"commit ssl cert {path}")
        if "Success" not in answer:
            self._ask("admin.sock", f"abort ssl cert {path}")
            raise DeviceFault(f"the ingress could not switch to the certificate for {path.stem}: {answer.strip()[:200]}")

    def _drain(self, placement: Placement, slot: str) -> None:
        for backend in placement.backends():
            self._admin(f"set server {backend}/{slot} state drain")
        end = time.monotonic() + _DRAIN_S
        while any(self._sessions(b, slot) for b in placement.backends()) and time.monotonic() < end:
            self.sleep(0.05)
        for backend in placement.backends():
            self._admin(f"set server {backend}/{slot} state maint")

    def _point(self, placement: Placement, *, strict: bool, draining: str | None) -> None:
        """The active slot's servers at its containers, ready; the other slot's in maintenance, unless it
        is ``draining`` (a switch drains it next). A service with no address (not running) is left as
        it is, or with ``strict`` is a DeviceFault."""
        for backend, (service, port) in placement.backends().items():
            address = placement.addresses.get(placement.slot, {}).get(service)
            if not address and not strict:
                continue
            if not address:
                raise DeviceFault(f"{placement.app}: service {service} of slot {placement.slot} has no address for the ingress")
            self._admin(f"set server {backend}/{placement.slot} addr {address} port {port}")
            self._admin(f"set server {backend}/{placement.slot} state ready")
            for other in ("a", "b"):
                if other not in (placement.slot, draining):
                    self._admin(f"set server {backend}/{other} state maint")

    def _sessions(self, backend: str, server: str) -> int:
        for line in self._admin("show stat").splitlines():
            fields = line.split(",")
            if fields[:2] == [backend, server]:
                return int(fields[4] or 0)  # scur
        return 0

    def _check(self, text: str) -> None:
        """HAProxy's own check of a configuration, before it replaces the one in place."""
        candidate = self.dir / f".{_CONFIG}.new"
        candidate.write_text(text)
        try:
            haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
            checked = subprocess.run([haproxy, "-c", "-q", "-f", str(candidate)], capture_output=True, text=True, check=False)
        except OSError as e:
            raise DeviceFault(f"the ingress needs HAProxy, which cannot be run here ({e.strerror}); apt install haproxy") from e
        finally:
            candidate.unlink(missing_ok=True)
        if checked.returncode != 0:
            raise DeviceFault(f"HAProxy refuses the ingress's new configuration: {checked.stderr.strip()[:300]}")

    def _reload(self, backends: list[str]) -> None:
        """Reload HAProxy, wait until its new worker answers with every backend, and until the workers it
        replaced have finished the requests they held (at most the drain time)."""
        before = self._worker()
        self._ask("master.sock", "reload")
        end = time.monotonic() + 15
        while True:
            try:
                if self._worker() not in ("", before) and all(b in self._admin("show backend").split() for b in backends):
                    break
            except DeviceFault:
                pass  # the new worker is not listening yet
            if time.monotonic() > end:
                raise DeviceFault(f"{self.dir}: HAProxy did not take its new configuration within 15 s")
            self.sleep(0.05)
        end = time.monotonic() + _DRAIN_S
        while time.monotonic() < end:
            try:
                if not _old_workers(self._ask("master.sock", "show proc")):
                    break
            except DeviceFault:
                pass  # the master, which re-executes itself on a reload, is not listening yet
            self.sleep(0.05)

    def _worker(self) -> str:
        """The process id of the worker answering the runtime API ("" when none answers)."""
        try:
            info = self._admin("show info")
        except DeviceFault:
            return ""
        return next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Pid:")), "")

    def _admin(self, command: str) -> str:
        answer = self._ask("admin.sock", command)
        if answer.strip() and not command.startswith("show") and "changed" not in answer and "no need" not in answer:
            raise DeviceFault(f"the ingress refused `{command}`: {answer.strip()[:200]}")
        return answer

    def _ask(self, name: str, command: str) -> str:
        """One command on one of HAProxy's sockets; its whole answer."""
        path = self.dir / name
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(path))
                sock.sendall(command.encode() + b"\n")
                sock.shutdown(socket.SHUT_WR)  # the command is whole: HAProxy answers and closes (its master CLI waits otherwise)
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as e:
            raise DeviceFault(f"the ingress does not answer on {path} ({e.strerror or e}); is sealift-ingress running?") from e
        return b"".join(chunks).decode(errors="replace")

    def _write(self, name: str, text: str) -> None:
        try:
            replace_file(self.dir / name, text.encode(), mode=0o644 if name == _CONFIG else 0o600)
        except OSError as e:
            raise DeviceFault(f"{self.dir / name}: cannot write the ingress's state ({e.strerror})") from e

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with file_lock(self.dir / "lock", wait=True):  # applications switch one at a time through the ingress
            yield


def _structure(config: str) -> list[str]:
    """What a reload is needed for: every line but the servers' (their addresses and states change at run time)."""
    return [line for line in config.splitlines() if not line.lstrip().startswith("server ")]


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _old_workers(processes: str) -> list[str]:
    """The workers a reload replaced that are still finishing their requests (master CLI ``show proc``)."""
    section, found = "", []
    for line in processes.splitlines():
        if line.startswith("#"):
            section = line
        elif "old workers" in section and line.strip():
            found.append(line)
    return found
