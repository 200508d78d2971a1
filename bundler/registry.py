"""Reading images from an OCI registry, through oras-py's authenticated session.

Manifests are fetched as raw bytes (a parsed and re-serialised manifest would change its
digest) and checked against the digest the registry reports or the reference names; blobs are
streamed. TLS is on unless the caller asks for plain HTTP.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import oras.container
import oras.provider
import requests
from requests.adapters import HTTPAdapter

from bundler.bundle import MEDIA
from bundler.errors import SourceError
from bundler.layout import MAX_JSON_BYTES, Descriptor
from bundler.profiles import Platform
from bundler.sources import ResolvedImage, check_config_platform, parse_manifest, select_platform, verified

__all__ = ["RegistrySource"]

_ACCEPT = ", ".join((MEDIA.INDEX, MEDIA.DOCKER_LIST, MEDIA.MANIFEST, MEDIA.DOCKER_MANIFEST))
_DIGEST_REF = re.compile(r"sha256:[0-9a-f]{64}")
_TIMEOUT = (10.0, 60.0)  # seconds to connect, and between bytes received
_RETRY_DELAYS = (0.5, 2.0)  # then give up: a build should fail fast, not wait minutes
# oras-py retries every failure with delays growing to minutes; call the undecorated request
# (auth handling included) and retry transport errors here, briefly.
_REQUEST_ONCE = getattr(oras.provider.Registry.do_request, "__wrapped__", oras.provider.Registry.do_request)


class _TimeoutAdapter(HTTPAdapter):
    """requests has no session-wide timeout; a registry that stops answering must not hang a build."""

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, timeout: Any = None, **kwargs: Any
    ) -> requests.Response:
        return super().send(request, timeout=timeout or _TIMEOUT, **kwargs)


class RegistrySource:
    """``docker://HOST/REPO[:TAG|@DIGEST]``."""

    def __init__(self, reference: str, name: str, *, plain_http: bool) -> None:
        self.reference = reference
        host = name.partition("/")[0]
        if "/" not in name or not ("." in host or ":" in host or host == "localhost"):
            raise SourceError(f"image {reference}: expected docker://HOST[:PORT]/REPO[:TAG|@DIGEST]")
        try:
            self.container = oras.container.Container(name)
        except ValueError as e:
            raise SourceError(f"image {reference}: malformed reference ({e})") from e
        self.registry = oras.provider.Registry(hostname=host, insecure=plain_http)
        for prefix in ("http://", "https://"):
            self.registry.session.mount(prefix, _TimeoutAdapter())
        self.scheme = "http" if plain_http else "https"

    def resolve(self, platform: Platform) -> ResolvedImage:
        tag_or_digest = self.container.digest or self.container.tag
        body, media_type, digest = self._get_manifest(tag_or_digest)
        entry = Descriptor(media_type=media_type, digest=digest, size=len(body))
        if media_type in (MEDIA.INDEX, MEDIA.DOCKER_LIST):
            entry = select_platform(self.reference, _json(body, self.reference), platform)
            body, media_type, _ = self._get_manifest(entry.digest)
            verified(self.reference, body, entry)
        image = parse_manifest(self.reference, body, entry)
        with self.open_blob(image.config) as stream:
            check_config_platform(self.reference, verified(self.reference, stream.read(image.config.size + 1), image.config), platform)
        return image

    def _get_manifest(self, ref: str) -> tuple[bytes, str, str]:
        url = f"{self.scheme}://{self.container.registry}/v2/{self.container.api_prefix}/manifests/{ref}"
        response = self._request(url, headers={"Accept": _ACCEPT})
        with response:
            body = response.raw.read(MAX_JSON_BYTES + 1, decode_content=True)
        if len(body) > MAX_JSON_BYTES:
            raise SourceError(f"image {self.reference}: manifest is larger than {MAX_JSON_BYTES} bytes")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        named = ref if _DIGEST_REF.fullmatch(ref) else response.headers.get("Docker-Content-Digest", "")
        digest = named or f"sha256:{hashlib.sha256(body).hexdigest()}"
        verified(self.reference, body, Descriptor(media_type=media_type, digest=digest, size=len(body)))
        return body, media_type, digest

    @contextmanager
    def open_blob(self, blob: Descriptor) -> Iterator[IO[bytes]]:
        url = f"{self.scheme}://{self.container.get_blob_url(blob.digest)}"
        response = self._request(url, stream=True)
        with response:
            yield response.raw

    def locate_blob(self, blob: Descriptor) -> None:
        return None

    def _request(self, url: str, *, headers: dict[str, str] | None = None, stream: bool = True) -> Any:
        for delay in (*_RETRY_DELAYS, None):
            try:
                response = _REQUEST_ONCE(self.registry, url, "GET", headers=dict(headers or {}), stream=stream)
                break
            except (requests.ConnectionError, requests.Timeout) as e:
                if delay is None or isinstance(e, requests.exceptions.SSLError):
                    raise SourceError(f"image {self.reference}: cannot reach {self.container.registry} ({_reason(e)})") from e
                time.sleep(delay)
            except requests.RequestException as e:
                raise SourceError(f"image {self.reference}: cannot reach {self.container.registry} ({_reason(e)})") from e
        if response.status_code != 200:
            response.close()
            reason = {401: "not authorised", 403: "forbidden", 404: "not found"}.get(response.status_code, "refused")
            raise SourceError(f"image {self.reference}: registry answered {response.status_code} ({reason}) for {url}")
        return response

    def close(self) -> None:
        self.registry.session.close()


def _reason(error: Exception) -> str:
    if isinstance(error, requests.exceptions.SSLError):
        return "TLS handshake failed; use --plain-http for a plain-HTTP registry"
    if isinstance(error, requests.Timeout):
        return "timed out"
    if isinstance(error, requests.ConnectionError):
        return "connection refused or host unreachable"
    return type(error).__name__


def _json(body: bytes, reference: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise SourceError(f"image {reference}: manifest is not valid JSON") from e
    if not isinstance(data, dict):
        raise SourceError(f"image {reference}: manifest is not a JSON object")
    return data
