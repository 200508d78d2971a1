"""``login`` and ``logout``: registry credentials where Docker keeps them (:mod:`updater.credentials`),
for both commands: the office pushes with them, a device polls its site mirror with them."""

from __future__ import annotations

import inspect
import sys

import click

from updater.exits import emit, reports_errors

__all__ = ["add_login"]


def add_login(group: click.Group, prog_name: str, *, device: bool = False) -> None:
    """Give ``group`` the ``login`` and ``logout`` commands (``device``: the updater's, which keep the
    credentials where its service reads them)."""

    @group.command("login")
    @click.argument("host")
    @click.option("-u", "--username", required=True, help="The user name.")
    @click.option("--password-stdin", is_flag=True, help="Read the password from standard input (else it is asked for).")
    @click.option("--plain-http", is_flag=True, help="Reach the registry over plain HTTP, not TLS.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @reports_errors
    def login(host: str, username: str, password_stdin: bool, plain_http: bool, as_json: bool) -> None:
        from updater.credentials import login as store

        password = sys.stdin.readline().rstrip("\r\n") if password_stdin else click.prompt("Password", hide_input=True, err=True)
        where = store(host.removeprefix("https://").removeprefix("http://").rstrip("/"), username, password, plain_http=plain_http,
                      device=device)
        emit({"host": host, "stored_in": where}, as_json=as_json, text=f"logged in to {host}; credentials stored in {where}")

    where = "; default /etc/sealift/docker/config.json, where the service reads them" if device else \
        "; default ~/.docker/config.json"
    login.help = inspect.cleandoc(f"""Check a user name and password against registry HOST, then store them.

    They go where Docker keeps credentials (the credential helper the Docker configuration names,
    else $DOCKER_CONFIG/config.json, readable by its owner only{where}), so docker, skopeo and
    {prog_name} share them. The password is never taken from the command line.

    \b
    Examples:
      {prog_name} login registry.example.com -u ci-bot --password-stdin < token.txt
      {prog_name} --ca-file site-ca.pem login mirror.plant-7.example:5000 -u edge
    """)

    @group.command("logout")
    @click.argument("host")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @reports_errors
    def logout(host: str, as_json: bool) -> None:
        from updater.credentials import logout as forget

        forgotten = forget(host, device=device)
        said = "forgot the credentials" if forgotten else "no credentials were stored"
        emit({"host": host, "forgotten": forgotten}, as_json=as_json, text=f"{said} for {host}")

    logout.help = inspect.cleandoc(f"""Forget the credentials stored for registry HOST.

    \b
    Examples:
      {prog_name} logout registry.example.com
    """)
