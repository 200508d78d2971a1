"""What Sealift takes from oras-py beyond its public API, in one place.

oras-py's :class:`oras.provider.Registry` gives Sealift an authenticated ``requests`` session: the
Docker configuration's credentials and credential helpers, token challenges answered. Three things
it does not expose are reached here, and ``tests/unit/test_oras_adapter.py`` fails when a release
of the library changes them underneath:

- the request without oras-py's own retry decorator, which retries every failure with delays
  growing to minutes (Sealift retries transport faults on the caller's schedule), and a token
  renewed for a wider scope when the registry asks with 401 (oras-py renews only on 403);
- the basic-auth credential the Docker configuration gave, to hand to oras-py's basic backend
  when a registry challenges with plain basic auth (htpasswd) rather than a token;
- the credential loaded, to tell "no credentials for this host" from "credentials refused".
"""

from __future__ import annotations

from typing import Any

import oras.auth
import oras.container
import oras.provider
import requests

from updater.errors import InputError

__all__ = ["answers_basic_challenges", "credential", "load_credentials", "new_registry", "request_once", "set_credential"]

_REQUEST_ONCE = getattr(oras.provider.Registry.do_request, "__wrapped__", None)


def new_registry(host: str, *, plain_http: bool, verify: bool | str, cert: tuple[str, str] | None) -> oras.provider.Registry:
    """oras-py's client of ``host``: TLS checked against ``verify`` (True: the system's CAs; a path: that
    bundle), ``cert`` presented as the client certificate when given."""
    registry = oras.provider.Registry(hostname=host, insecure=plain_http, tls_verify=verify)
    registry.session.cert = cert
    return registry


def request_once(registry: oras.provider.Registry, url: str, method: str, *, headers: dict[str, str], data: Any,
                 stream: bool) -> requests.Response:
    """One request, authentication included, without oras-py's retries. oras-py renews a token only when
    a registry answers 403; one that wants a wider scope (pull, then push) answers 401 to the token it
    holds, so a 401 to a token is answered here once with a fresh token for the scope the registry names."""
    if _REQUEST_ONCE is None:
        raise RuntimeError("oras-py's Registry.do_request is no longer a decorated function: update updater/oras_adapter.py")
    response: requests.Response = _REQUEST_ONCE(registry, url, method, headers=dict(headers), data=data, stream=stream)
    auth = registry.auth
    if response.status_code == 401 and isinstance(auth, oras.auth.TokenAuth) and getattr(auth, "token", None) \
            and response.headers.get("Www-Authenticate", "").lower().startswith("bearer"):
        fresh, changed = auth.authenticate_request(response, dict(headers), refresh=True)
        if changed:
            response.close()
            response = registry.session.request(method, url, data=data, headers=fresh, stream=stream,
                                                verify=getattr(registry, "_tls_verify", True))
    return response


def load_credentials(registry: oras.provider.Registry, name: str, configs: list[str] | None) -> None:
    """Load the credentials for ``name`` (``HOST/REPO``) from the Docker configuration (``configs``, or
    oras-py's default), credential helpers and ``credsStore`` included."""
    try:
        registry.auth.load_configs(oras.container.Container(name), configs=configs)
    except (ValueError, KeyError, TypeError) as e:  # a configuration, or a credential helper's answer, that is not JSON
        raise InputError(f"{name}: the Docker configuration or its credential helper gave no readable credentials "
                         f"({type(e).__name__})") from None


def credential(registry: oras.provider.Registry) -> str | None:
    """The basic-auth credential (base64 ``USER:PASSWORD``) loaded for the registry, if any."""
    value = getattr(registry.auth, "_basic_auth", None)
    return value if isinstance(value, str) and value else None


def set_credential(registry: oras.provider.Registry, user: str, password: str) -> None:
    """Use ``user`` and ``password`` rather than what the Docker configuration holds."""
    registry.auth.set_basic_auth(user, password)


def answers_basic_challenges(registry: oras.provider.Registry, *, plain_http: bool, verify: bool | str) -> None:
    """Switch to oras-py's basic backend, keeping the credential and configuration already loaded:
    a registry with htpasswd auth challenges with ``Basic``, which the default (token) backend does not answer."""
    loaded = registry.auth
    basic = oras.auth.get_auth_backend("basic", registry.session, plain_http, tls_verify=verify)
    basic._auth_config = getattr(loaded, "_auth_config", {})
    basic._basic_auth = credential(registry)
    registry.auth = basic
