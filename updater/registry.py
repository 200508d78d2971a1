"""Talking to one repository of an OCI registry, through oras-py's authenticated session.

:class:`RegistryClient` makes the distribution API calls Sealift needs (manifests as raw bytes,
streamed blobs with ranges, monolithic streamed uploads, tags), on oras-py's session and
credential handling (the Docker ``config.json``, ``DOCKER_CONFIG`` honoured). Transport faults
and 5xx answers are retried with jittered, growing delays; every other fault is one clear
error. TLS is on unless the caller asks for plain HTTP.

Manifests are fetched as raw bytes (a parsed and re-serialised manifest would change its
digest) and checked against the digest the reference names or the registry reports.

What Sealift keeps in a repository: a bundle tagged ``PROFILE-VERSION``, an overlay
``site-SITE-VERSION`` (``+`` becomes ``_``, which tags cannot hold), and each signed TUF metadata
file as a small OCI artifact tagged ``tuf.NAME`` (``tuf.timestamp.json``, ``tuf.3.snapshot.json``):
a device needs nothing but the registry address and its trusted root.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import oras.auth
import requests
import urllib3
from requests.adapters import HTTPAdapter

from updater.artifact import Kind, kind
from updater.errors import ContentMismatch, DeliveryError, InputError, Refused, SealiftError
from updater.oci import MAX_JSON_BYTES, MEDIA, Descriptor, json_object
from updater.oras_adapter import answers_basic_challenges, credential, load_credentials, new_registry, request_once, set_credential
from updater.registry_tls import Tls, tls_for

__all__ = [
    "ACCEPT_MANIFESTS",
    "DEVICE_DOCKER_CONFIG",
    "Reference",
    "RegistryClient",
    "Retry",
    "bundle_descriptor",
    "bundle_tag",
    "connect",
    "overlay_tag",
    "parse_reference",
]

ACCEPT_MANIFESTS = ", ".join((MEDIA.INDEX, MEDIA.DOCKER_LIST, MEDIA.MANIFEST, MEDIA.DOCKER_MANIFEST))
_DIGEST_REF = re.compile(r"sha256:[0-9a-f]{64}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_MAX_PAGES = 100  # of up to 1000 tags or repositories each
_TIMEOUT = (10.0, 60.0)  # seconds to connect, and between bytes received
_REASONS = {401: "not authorised: check the credentials in the Docker config", 403: "forbidden", 404: "not found",
            429: "too many requests"}


@dataclass(frozen=True)
class Retry:
    """How long to keep trying a registry that does not answer: the delays between attempts,
    each stretched or shrunk at random by up to ``jitter`` so that many devices do not retry in step."""

    delays: Sequence[float] = (0.5, 2.0)
    jitter: float = 0.5

    def waits(self) -> Iterator[float | None]:
        for delay in self.delays:
            yield delay * random.uniform(1 - self.jitter, 1 + self.jitter)
        yield None


BUILD_RETRY = Retry()  # a build should fail fast, not wait minutes
DEVICE_DOCKER_CONFIG = Path("/etc/sealift/docker/config.json")  # a device's credentials: its service cannot see /root


@dataclass(frozen=True)
class Reference:
    """``HOST[:PORT]/REPO[:TAG|@DIGEST]``, parsed."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.host}/{self.repository}"

    def __str__(self) -> str:
        return self.name + (f"@{self.digest}" if self.digest else f":{self.tag}" if self.tag else "")


def parse_reference(text: str, *, what: str = "registry reference") -> Reference:
    """Parse ``HOST[:PORT]/REPO[:TAG|@DIGEST]``; the host must look like one (a dot, a port or localhost)."""
    host, slash, rest = text.removeprefix("docker://").partition("/")
    if host in ("", ".", "..", "~") or host.startswith("~"):  # ./out/bundle, /media/usb, ~/bundles: a path
        raise InputError(f"{what} {text!r}: a path, not a registry reference (HOST[:PORT]/REPO[:TAG|@DIGEST]); a bundle "
                         "directory goes to a registry with `sealift push`, to a medium with `sealift export`")
    if not slash or not rest or not ("." in host or ":" in host or host == "localhost"):
        raise InputError(f"{what} {text!r}: expected HOST[:PORT]/REPO[:TAG|@DIGEST], e.g. registry.example.com/vision-app")
    repository, at, digest = rest.partition("@")
    tag = None
    if not at:
        repository, colon, tag_text = repository.rpartition(":") if ":" in repository else (repository, "", "")
        tag = tag_text if colon else None
    if at and not _DIGEST_REF.fullmatch(digest):
        raise InputError(f"{what} {text!r}: {digest!r} is not a sha256 digest")
    if tag is not None and not _TAG.fullmatch(tag):
        raise InputError(f"{what} {text!r}: {tag!r} is not a valid tag")
    if not re.fullmatch(r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*", repository):
        raise InputError(f"{what} {text!r}: {repository!r} is not a valid repository name (lower case, digits, . _ - and /)")
    return Reference(host=host, repository=repository, tag=tag, digest=digest if at else None)


class _TimeoutAdapter(HTTPAdapter):
    """requests has no session-wide timeout; a registry that stops answering must not hang us."""

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, timeout: Any = None, **kwargs: Any
    ) -> requests.Response:
        return super().send(request, timeout=timeout or _TIMEOUT, **kwargs)


class _Guarded:
    """A response body whose transport errors (a dropped or stalled connection) become one clear error."""

    def __init__(self, raw: Any, error: Callable[[Exception], SealiftError]) -> None:
        self.raw = raw
        self.error = error

    def read(self, n: int = -1) -> bytes:
        try:
            data: bytes = self.raw.read(n, decode_content=True)
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as e:
            raise self.error(e) from e
        return data


def _discard(stream: _Guarded, n: int) -> None:
    while n > 0:
        chunk = stream.read(min(n, 1 << 20))
        if not chunk:
            return
        n -= len(chunk)


class _Transient(Exception):
    """A failure worth another attempt: the network, or a registry answering 5xx or 429."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RegistryClient:
    """One repository of one registry. ``what`` starts every error message. A fault of the network or
    the registry is a DeliveryError; bytes that do not match their digest are a ContentMismatch."""

    def __init__(self, ref: Reference, *, plain_http: bool, what: str, retry: Retry = BUILD_RETRY,
                 credentials: tuple[str, str] | None = None) -> None:
        self.ref = ref
        self.what = what
        self.retry = retry
        self.scheme = "http" if plain_http else "https"
        self.tls = Tls(verify=True, cert=None, source="") if plain_http else tls_for(ref.host)
        self.credentials = credentials  # instead of the Docker configuration's (`sealift login` checks them so)
        self.registry = new_registry(ref.host, plain_http=plain_http, verify=self.tls.verify, cert=self.tls.cert)
        for prefix in ("http://", "https://"):
            self.registry.session.mount(prefix, _TimeoutAdapter())
        self._authenticated = False
        self._prepared = False

    # -- reading -----------------------------------------------------------------------------

    def get_manifest(self, ref: str, *, accept: str = ACCEPT_MANIFESTS) -> tuple[bytes, str, str] | None:
        """The manifest's bytes, media type and digest, or None if the registry has none by that name."""
        response = self._request("GET", f"manifests/{ref}", headers={"Accept": accept}, missing_ok=True)
        if response is None:
            return None
        body = self._small_body(response, f"manifest {ref}")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        actual = f"sha256:{hashlib.sha256(body).hexdigest()}"
        named = ref if _DIGEST_REF.fullmatch(ref) else response.headers.get("Docker-Content-Digest", actual)
        if named != actual:
            raise ContentMismatch(f"{self.what}: manifest {ref} does not match its digest {named} (got {actual}); refused")
        return body, media_type, actual

    def has_manifest(self, ref: str) -> bool:
        return self.manifest_digest(ref) is not None

    def manifest_digest(self, ref: str) -> str | None:
        """The digest of the manifest ``ref`` (a tag or digest) names, "" if the registry does not say, or None
        if there is no such manifest (asked with HEAD: no body is fetched)."""
        response = self._request("HEAD", f"manifests/{ref}", headers={"Accept": ACCEPT_MANIFESTS}, missing_ok=True, stream=False)
        if response is None:
            return None
        named = response.headers.get("Docker-Content-Digest", "")
        return named if _DIGEST_REF.fullmatch(named) else (ref if _DIGEST_REF.fullmatch(ref) else "")

    def has_blob(self, digest: str) -> bool:
        return self._request("HEAD", f"blobs/{digest}", missing_ok=True, stream=False) is not None

    @contextmanager
    def open_blob(self, digest: str, *, offset: int = 0) -> Iterator[IO[bytes]]:
        """The blob's bytes from ``offset`` on (a ranged request when ``offset`` is not 0). A
        connection lost while reading raises this client's error, naming the blob."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self._request("GET", f"blobs/{digest}", headers=headers)
        with response:
            stream = _Guarded(response.raw, lambda e: DeliveryError(
                f"{self.what}: the connection was lost while reading blob {digest} ({_reason(e)}); run again to resume"))
            if offset and response.status_code != 206:  # the registry sends it all: skip what is here already
                _discard(stream, offset)
            yield cast(IO[bytes], stream)

    def tags(self, *, must_exist: bool = False) -> list[str]:
        """Every tag of the repository (none if it does not exist yet; with ``must_exist``, a DeliveryError)."""
        tags = self._listing(f"{self._base()}/v2/{self.ref.repository}/tags/list?n=1000", "tags", missing=None if must_exist else [])
        if tags is None:
            raise DeliveryError(f"{self.what}: repository {self.ref.repository} does not exist at {self.ref.host} "
                                "(not pushed or synced there yet, or a name mistyped)")
        return tags

    def catalog(self) -> list[str]:
        """Every repository the registry lists."""
        return self._listing(f"{self._base()}/v2/_catalog?n=1000", "repositories") or []

    def _listing(self, url: str, key: str, *, missing: list[str] | None = None) -> list[str] | None:
        """A paginated list (the registry's ``Link: <…>; rel="next"`` header leads to the next page),
        bounded: a registry cannot keep a reader paging, or reading, for ever; ``missing`` when the
        registry has no such list (a repository that does not exist)."""
        items: list[str] = []
        for page in range(_MAX_PAGES):
            response = self._request("GET", url, missing_ok=True)
            if response is None:
                return items if page else missing
            body = self._small_body(response, f"the {key} list")
            try:
                items += [t for t in json_object(body, f"{self.what}: the {key} list", DeliveryError).get(key) or []
                          if isinstance(t, str)]
            except (DeliveryError, AttributeError, TypeError) as e:
                raise DeliveryError(f"{self.what}: the registry's {key} list is not valid JSON") from e
            following = response.links.get("next", {}).get("url", "")
            if not following.startswith("/v2/"):
                return items
            url = f"{self._base()}{following}"
        raise DeliveryError(f"{self.what}: the registry's {key} list runs past {_MAX_PAGES} pages")

    def _small_body(self, response: Any, what: str) -> bytes:
        """A JSON answer, read whole but bounded: a registry cannot make a reader hold gigabytes."""
        with response:
            body = _Guarded(response.raw, lambda e: DeliveryError(
                f"{self.what}: the connection was lost while reading {what} ({_reason(e)})")).read(MAX_JSON_BYTES + 1)
        if len(body) > MAX_JSON_BYTES:
            raise DeliveryError(f"{self.what}: {what} is larger than {MAX_JSON_BYTES} bytes")
        return body

    def _base(self) -> str:
        return f"{self.scheme}://{self.ref.host}"

    # -- writing -----------------------------------------------------------------------------

    def start_upload(self) -> str:
        """Open an upload session; its location (absolute)."""
        started = self._request("POST", "blobs/uploads/", headers={"Content-Length": "0"}, stream=False, ok=(202,))
        location = started.headers.get("Location", "")
        if not location:
            raise DeliveryError(f"{self.what}: the registry started an upload without saying where to send it")
        return location if location.startswith("http") else f"{self._base()}{location}"

    def upload_offset(self, location: str) -> int | None:
        """How many bytes the upload session at ``location`` holds (None: the registry no longer has it)."""
        if urllib.parse.urlsplit(location).netloc != self.ref.host:
            return None
        try:
            response = self._request("GET", location, stream=False, ok=(204, 200), missing_ok=True)
        except DeliveryError:
            return None  # a session the registry refuses to show (expired, purged): start again
        if response is None:
            return None
        with response:
            held = re.fullmatch(r"0-([0-9]+)", response.headers.get("Range", "0-0"))
        return int(held.group(1)) + 1 if held and int(held.group(1)) > 0 else 0

    def send(self, method: str, location: str, *, body: Any, headers: dict[str, str], what: str) -> Any:
        """One request with a body that cannot be sent twice (an upload) to ``location``, which the registry
        named; credentials go only where they came from, never to another host a Location header names."""
        same_host = urllib.parse.urlsplit(location).netloc == self.ref.host
        try:
            return self.registry.session.request(method, location, data=body, verify=self.tls.verify,
                                                 headers={**headers, **(self._auth_header() if same_host else {})})
        except requests.RequestException as e:
            raise DeliveryError(f"{self.what}: {what} failed ({_reason(e)})") from e

    def refusal(self, response: Any, what: str) -> SealiftError:
        """The error of an answer that is not what an upload step expects."""
        if response.status_code == 400 and "DIGEST_INVALID" in response.text:
            return ContentMismatch(f"{self.what}: {what}: the bytes do not match the blob's digest; the registry refused them")
        return DeliveryError(f"{self.what}: the registry answered {response.status_code} to {what}{_error_text(response)}")

    def mount_blob(self, digest: str, source_repository: str) -> bool:
        """Have the registry link blob ``digest`` from another of its repositories, no byte sent (a
        cross-repository mount): True when it did, False when it does not hold the blob there or does not mount."""
        response = self._request("POST", f"blobs/uploads/?mount={digest}&from={urllib.parse.quote(source_repository, safe='/')}",
                                 headers={"Content-Length": "0"}, stream=False, ok=(201, 202))
        with response:
            if response.status_code == 201:
                return True
            location = response.headers.get("Location", "")  # 202: an ordinary upload it started instead
        url = location if location.startswith("http") else f"{self._base()}{location}"
        if location and urllib.parse.urlsplit(url).netloc == self.ref.host:  # cancelled: no upload session left behind
            with suppress(SealiftError):  # (one left expires by itself)
                cancelled = self._request("DELETE", url, stream=False, ok=(204, 200, 202), missing_ok=True)
                if cancelled is not None:
                    cancelled.close()
        return False

    def put_manifest(self, ref: str, body: bytes, media_type: str) -> None:
        self._request("PUT", f"manifests/{ref}", headers={"Content-Type": media_type}, data=body, stream=False, ok=(201,))

    # -- the one request path ----------------------------------------------------------------

    def _auth_header(self) -> dict[str, str]:
        """The credentials the last authenticated request used, for a request that cannot be replayed."""
        header = self.registry.auth.get_auth_header() if self._authenticated else None
        return dict(header) if isinstance(header, dict) else {}

    def _request(self, method: str, path: str, *, headers: dict[str, str] | None = None, data: bytes | None = None,
                 stream: bool = True, missing_ok: bool = False, ok: tuple[int, ...] = (200, 206)) -> Any:
        url = path if path.startswith("http") else f"{self.scheme}://{self.ref.host}/v2/{self.ref.repository}/{path}"
        waits = self.retry.waits()
        while True:
            try:
                response = self._attempt(method, url, headers or {}, data, stream)
                if response.status_code >= 500 or response.status_code == 429:
                    response.close()
                    raise _Transient(f"the registry answered {response.status_code}")
                break
            except _Transient as e:
                wait = next(waits)
                if wait is None:
                    raise DeliveryError(f"{self.what}: cannot reach {self.ref.host} ({e.reason}); gave up after "
                                     f"{len(self.retry.delays) + 1} attempts") from None
                time.sleep(wait)
        if response.status_code == 404 and missing_ok:
            response.close()
            return None
        if response.status_code not in ok:
            detail = _error_text(response)
            response.close()
            reason = _REASONS.get(response.status_code, "refused")
            family = InputError if response.status_code == 401 else DeliveryError  # credentials are the user's to fix
            raise family(f"{self.what}: the registry answered {response.status_code} ({reason}) to {method} "
                         f"{path.split('?')[0]}{detail}")
        return response

    def _attempt(self, method: str, url: str, headers: dict[str, str], data: bytes | None, stream: bool) -> Any:
        try:
            self._prepare()
            if isinstance(self.registry.auth, oras.auth.BasicAuth):
                headers = {**headers, **self.registry.auth.get_auth_header()}
            response = request_once(self.registry, url, method, headers=dict(headers), data=data, stream=stream)
        except requests.exceptions.SSLError as e:
            raise DeliveryError(f"{self.what}: cannot reach {self.ref.host} ({self._tls_reason(e)})") from e
        except (requests.ConnectionError, requests.Timeout) as e:
            raise _Transient(_reason(e)) from e
        except ValueError as e:  # oras-py: a 401 it could not answer (no or wrong credentials)
            raise InputError(f"{self.what}: {self.ref.host} asks for credentials that were not accepted "
                             "(check `docker login` or the Docker config)") from e
        except requests.RequestException as e:
            raise DeliveryError(f"{self.what}: cannot reach {self.ref.host} ({_reason(e)})") from e
        if response.status_code not in (401, 403):
            self._authenticated = self._authenticated or "Authorization" in (response.request.headers or {})
        return response

    def _prepare(self) -> None:
        """On first contact: load the Docker config's credentials, and ask the registry which kind
        of authentication it wants. oras-py's default answers token challenges; a registry with
        plain basic auth (htpasswd) gets oras-py's basic backend instead."""
        if self._prepared:
            return
        if self.credentials is not None:
            set_credential(self.registry, *self.credentials)
        else:
            named = os.path.join(os.environ["DOCKER_CONFIG"], "config.json") if os.environ.get("DOCKER_CONFIG") else None
            # with the Docker configuration's own (oras-py adds ~/.docker), what `sealift-updater login` kept for the service
            configs = [c for c in (named, str(DEVICE_DOCKER_CONFIG)) if c and os.path.exists(c)] or None
            load_credentials(self.registry, self.ref.name, configs)
        with self.registry.session.get(f"{self.scheme}://{self.ref.host}/v2/", verify=self.tls.verify) as ping:
            challenge = ping.headers.get("Www-Authenticate", "")
        if ping.status_code == 401 and challenge.lower().startswith("basic"):
            if credential(self.registry) is None:
                raise InputError(f"{self.what}: {self.ref.host} asks for a user name and password, and the Docker config "
                                 f"has none for it (`sealift login {self.ref.host}`; on a device `sealift-updater login`)")
            answers_basic_challenges(self.registry, plain_http=self.scheme == "http", verify=self.tls.verify)
        self._prepared = True

    def ping(self) -> None:
        """Ask the registry's API root, authenticated: an InputError when the credentials are refused."""
        self._request("GET", f"{self._base()}/v2/", stream=False).close()

    def _tls_reason(self, error: Exception) -> str:
        text = str(error).upper()
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return (f"its TLS certificate is not trusted by {self.tls.source}: give its CA with --ca-file or "
                    f"SEALIFT_CA_FILE, or put it in certs.d/{self.ref.host}/ca.crt")
        if "CERTIFICATE_REQUIRED" in text or "BAD_CERTIFICATE" in text or "UNKNOWN_CA" in text:
            return (f"it asks for a client certificate it trusts: put NAME.cert and NAME.key in certs.d/{self.ref.host}/"
                    + (f" (it refused {self.tls.cert[0]})" if self.tls.cert else ""))
        return _reason(error)

    def close(self) -> None:
        self.registry.session.close()


def _reason(error: Exception) -> str:
    if isinstance(error, urllib3.exceptions.ReadTimeoutError):
        return "timed out"
    if isinstance(error, urllib3.exceptions.ProtocolError):
        return "the connection was cut"
    if isinstance(error, requests.exceptions.SSLError):
        return "TLS handshake failed; use --plain-http for a plain-HTTP registry"
    if isinstance(error, requests.Timeout):
        return "timed out"
    if isinstance(error, requests.ConnectionError):
        return "connection refused or host unreachable"
    return type(error).__name__


def _error_text(response: Any) -> str:
    """The first error message an OCI registry put in its answer, if any."""
    try:
        errors = response.json().get("errors") or []
        message = errors[0].get("message") if errors and isinstance(errors[0], dict) else None
    except (ValueError, AttributeError, requests.RequestException):
        return ""
    return f": {str(message)[:200]}" if message else ""


# --- what Sealift keeps in a repository: bundles and overlays by tag (signed metadata: updater/registry_metadata.py) ---


def connect(text: str, *, plain_http: bool, what: str, retry: Retry | None = None) -> RegistryClient:
    ref = parse_reference(text, what=what)
    return RegistryClient(ref, plain_http=plain_http, what=f"{what} {ref.name}", retry=retry or BUILD_RETRY)


def bundle_tag(profile: str, version: str) -> str:
    return f"{profile}-{version}".replace("+", "_")


def overlay_tag(site: str, version: str) -> str:
    return f"site-{site}-{version}".replace("+", "_")


def bundle_descriptor(body: bytes, media_type: str, digest: str, where: str, *,
                      kinds: tuple[Kind, ...] = (Kind.BUNDLE,)) -> Descriptor:
    """The descriptor of a bundle's (or, with ``kinds``, an overlay's) top index fetched from a registry."""
    data = json_object(body, f"{where}: the manifest")
    if kind(data.get("artifactType")) not in kinds or media_type != MEDIA.INDEX:
        raise Refused(f"{where}: not a Sealift {' or '.join(kinds)} (an OCI index with a Sealift artifactType)")
    annotations = data.get("annotations")
    annotations = annotations if isinstance(annotations, dict) else {}
    return Descriptor(media_type=MEDIA.INDEX, digest=digest, size=len(body), artifact_type=str(data["artifactType"]),
                      annotations={k: v for k, v in annotations.items() if isinstance(v, str)})
