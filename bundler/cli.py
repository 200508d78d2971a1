"""``sealift``: build, inspect and verify update bundles. A thin shell over the bundler package."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from bundler.build import BuildOptions, build_bundles, select_profiles, source_date_epoch
from bundler.bundle import BundleInfo, check_bundle
from bundler.errors import SealiftError
from bundler.profiles import load_profiles, profile_search_path
from bundler.progress import for_terminal
from bundler.spec import load_spec

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


def _reports_errors(func: F) -> F:
    """Print a SealiftError's one-line diagnostics and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SealiftError as e:
            click.echo(f"error: {e.diagnostics()}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


_profiles_dir_option = click.option(
    "--profiles-dir", "profiles_dirs", multiple=True, type=click.Path(path_type=Path, file_okay=False),
    help="Another directory of profile YAML files (repeatable); its profiles replace built-in ones of the same name.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sealift")
def cli() -> None:
    """Build signed, reproducible update bundles for edge AI devices.

    A bundle is an OCI image layout for one hardware profile: the application's container images
    (by their original digests), its models and configs, and a descriptor the device's updater
    reads. Build with `sealift build`, look inside with `sealift inspect`, check with
    `sealift verify`.
    """


@cli.command()
@click.argument("spec", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--profile", "profiles", multiple=True, metavar="NAME|all",
              help="Build for this profile (repeatable). Default: every profile the spec targets.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("out"), show_default=True,
              help="Directory that receives the bundles.")
@click.option("--format", "fmt", type=click.Choice(["dir", "tar"]), default="dir", show_default=True,
              help="An OCI layout directory, or the same layout as one tar file.")
@click.option("--plain-http", is_flag=True, help="Reach registries named by docker:// sources over plain HTTP, not TLS.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@_profiles_dir_option
@_reports_errors
def build(spec: Path, profiles: tuple[str, ...], out: Path, fmt: str, plain_http: bool, as_json: bool,
          profiles_dirs: tuple[Path, ...]) -> None:
    """Build one bundle per hardware profile from SPEC (a sealift.yaml).

    Bundles are named NAME-VERSION-PROFILE and are byte-identical for the same inputs and
    SOURCE_DATE_EPOCH (which defaults to the spec's last git commit time). Each is verified
    before it is moved into place; an existing bundle is kept if identical and refused otherwise.
    """
    loaded = load_spec(spec)
    known = load_profiles(profile_search_path(loaded.directory, profiles_dirs))
    selected = select_profiles(loaded, known, profiles)
    options = BuildOptions(out=out, format="tar" if fmt == "tar" else "dir",
                           epoch=source_date_epoch(loaded.directory), plain_http=plain_http)
    progress = for_terminal(quiet=as_json)
    try:
        built = build_bundles(loaded, selected, options, progress=progress)
    finally:
        progress.close()
    if as_json:
        click.echo(json.dumps([{"path": str(b.path), "unchanged": b.unchanged, **b.info.to_json()} for b in built], indent=2))
        return
    for b in built:
        state = "unchanged" if b.unchanged else "built"
        click.echo(f"{state:9} {b.path}  {b.info.digest}  {_size(b.info.size)}")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_reports_errors
def inspect(bundle: Path, as_json: bool) -> None:
    """Show what BUNDLE holds: identity, profile, and each component's size and digest.

    Every blob is checked on the way, so what is shown is what the device would get.
    """
    report = check_bundle(bundle)
    if as_json:
        click.echo(json.dumps({**report.bundle.to_json(), "problems": list(report.problems)}, indent=2))
    else:
        _print_table(report.bundle)
        for problem in report.problems:
            click.echo(f"problem: {problem}", err=True)
    if report.problems:
        sys.exit(1)


@cli.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@_reports_errors
def verify(bundles: tuple[Path, ...], as_json: bool) -> None:
    """Check each BUNDLE: structure, and every blob's size and digest (and content digest when compressed).

    Exits 1 and names each tampered, truncated or missing blob if any check fails.
    """
    results: list[dict[str, Any]] = []
    failed = False
    for path in bundles:
        try:
            report = check_bundle(path)
            problems = list(report.problems)
            result: dict[str, Any] = {"bundle": str(path), "digest": report.bundle.digest, "problems": problems}
        except SealiftError as e:
            problems = [e.diagnostics()]
            result = {"bundle": str(path), "digest": None, "problems": problems}
        failed |= bool(problems)
        results.append({**result, "ok": not problems})
        if not as_json:
            for problem in problems:
                click.echo(f"FAILED {path}: {problem}", err=True)
            if not problems:
                click.echo(f"ok {path}  {result['digest']}")
    if as_json:
        click.echo(json.dumps(results, indent=2))
    if failed:
        sys.exit(1)


@cli.command("profiles")
@click.option("--spec", type=click.Path(path_type=Path, dir_okay=False), help="Also load profiles/ next to this spec.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_profiles_dir_option
@_reports_errors
def profiles_cmd(spec: Path | None, as_json: bool, profiles_dirs: tuple[Path, ...]) -> None:
    """List the known hardware profiles."""
    known = load_profiles(profile_search_path(spec.parent if spec else None, profiles_dirs))
    if as_json:
        click.echo(json.dumps([
            {"name": p.name, "platform": str(p.platform), "compatible": p.compatible, "description": p.description,
             "file": str(p.source)} for p in known.values()
        ], indent=2))
        return
    for p in sorted(known.values(), key=lambda p: p.name):
        click.echo(f"{p.name:18} {p.platform!s:16} {p.compatible:28} {p.description}")


def _print_table(info: BundleInfo) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 100))
    platform = "/".join(info.platform[k] for k in ("os", "architecture", "variant") if k in info.platform)
    console.print(f"[bold]{info.name} {info.version}[/] for [bold]{info.profile}[/] ({platform}, compatible {info.compatible})")
    console.print(f"digest  {info.digest}")
    console.print(f"created {info.created}, {_size(info.size)} in {len(info.components)} components")
    table = Table()
    for column in ("kind", "name", "size", "digest", "detail"):
        table.add_column(column, justify="right" if column == "size" else "left", no_wrap=column != "detail")
    for c in info.components:
        detail = c.detail
        if c.uncompressed_size is not None and c.uncompressed_size != c.size:
            detail = f"{detail}, zstd from {_size(c.uncompressed_size)}".lstrip(", ")
        table.add_row(c.kind, c.name, _size(c.size), c.digest[7:19], detail)
    console.print(table)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def main() -> None:
    """Entry point of the ``sealift`` command."""
    cli(prog_name="sealift")
