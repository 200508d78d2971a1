"""``sealift-updater run`` and ``recover``: the updater as a service, and convergence after a crash."""

from __future__ import annotations

import os
from pathlib import Path

import click

from updater.errors import InputError, SealiftError, Unhealthy
from updater.exits import emit, fail, reports_errors

__all__ = ["recover", "run"]


@click.command()
@click.option("--watch", type=click.Path(path_type=Path, file_okay=False),
              help="A directory to watch for bundles and media (where removable media are mounted).")
@click.option("--source", "sources", metavar="[APP=]REGISTRY/REPO", multiple=True,
              help="A site registry repository (a mirror) to poll for newer signed releases of one application; "
                   "repeat it for each application. APP= names the application the repository holds (without "
                   "it, the one its newest bundle claims to be).")
@click.option("--app", "apps", metavar="NAME", multiple=True,
              help="An application this device runs; repeat it for each. Releases of others that arrive on media "
                   "or from registries are skipped. Default: every application that arrives signed for this device.")
@click.option("--plain-http", is_flag=True, help="Reach --source and --report-to over plain HTTP (a site registry without TLS).")
@click.option("--interval", type=click.FloatRange(min=1.0), default=30.0, show_default=True,
              help="Seconds between passes (longer, with jitter, after failed polls).")
@click.option("--report-to", metavar="REGISTRY/PREFIX",
              help="Push the device's signed reports to this registry (the site mirror's reports registry), one "
                   "repository per device under PREFIX; credentials from the Docker config (docs/reports.md).")
@click.option("--report-every", type=click.FloatRange(min=60.0), default=3600.0, show_default=True,
              help="Seconds between the device's signed reports (one is made at once after an install or a rollback).")
@click.option("--metrics-textfile", type=click.Path(path_type=Path, dir_okay=False),
              help="Rewrite the updater's Prometheus metrics into this file after each pass (node-exporter's "
                   "textfile collector: a .prom file in its --collector.textfile.directory).")
@click.option("--metrics-port", type=click.IntRange(1, 65535),
              help="Also serve the metrics on http://127.0.0.1:PORT/metrics (loopback only).")
@click.option("--once", is_flag=True,
              help="One pass (scan and poll-and-install), then exit; with the fault's exit code (docs/errors.md) if a poll failed.")
@click.option("--profile", metavar="NAME", help="This device's hardware profile (default: detected).")
@click.option("--profiles-dir", type=click.Path(path_type=Path, file_okay=False), help="Extra profile directory.")
@click.option("--json", "as_json", is_flag=True, help="When it ends (--once), print the outcome in the JSON envelope.")
@click.pass_obj
@reports_errors
def run(state_dir: Path, watch: Path | None, sources: tuple[str, ...], apps: tuple[str, ...], plain_http: bool, interval: float,
        report_to: str | None, report_every: float, metrics_textfile: Path | None, metrics_port: int | None, once: bool,
        profile: str | None, profiles_dir: Path | None, as_json: bool) -> None:
    """Install what arrives, as a service: bundles in --watch, newer releases from each --source.

    Converges every application first (like `recover`), then makes a pass every --interval
    seconds. A poll asks each repository's signed metadata for the newest release of its
    application for this profile, downloads only the blobs this device lacks (resuming an
    interrupted download) and installs it; an unreachable registry is retried with growing,
    jittered delays while the running releases keep serving. With systemd (Type=notify) it
    reports readiness and feeds the watchdog after each pass; see
    examples/systemd/sealift-updater.service.

    \b
    Examples:
      sealift-updater run --watch /media/sealift
      sealift-updater run --app vision-app --app camera-gw \\
          --source vision-app=mirror.site:5000/vision-app --source camera-gw=mirror.site:5000/camera-gw"""
    from updater.cli import _device_profile
    from updater.daemon import Daemon, priority
    from updater.docker_runtime import DockerRuntime
    from updater.install import Installer
    from updater.names import NAME
    from updater.poll import RegistryPoller
    from updater.reports import Reports

    if watch is None and not sources:
        raise InputError("nothing to do: give --watch DIR, --source REGISTRY/REPO, or both")
    if report_to is not None:
        from updater.registry import parse_reference

        parse_reference(report_to, what="--report-to")
    for name in apps:
        if not NAME.fullmatch(name):
            raise InputError(f"--app {name[:80]!r}: not an application name (lower-case letters, digits, '.', '_', '-')")
    device = _device_profile(profile, profiles_dir)
    journald = bool(os.environ.get("JOURNAL_STREAM"))  # stderr goes to the journal: each line says its priority

    def log(line: str) -> None:
        click.echo(f"<{priority(line)}>{line}" if journald else line, err=True)

    installer = Installer(state_dir=state_dir, runtime=DockerRuntime.connect(), profile=device, log=log, declared=apps)
    pollers = []
    for source in sources:
        app, _, repository = source.rpartition("=")
        if app and (not NAME.fullmatch(app) or (apps and app not in apps)):
            raise InputError(f"--source {source}: {app!r} is not " + ("one of the --app names" if apps else "an application name"))
        pollers.append(RegistryPoller(repository, installer=installer, profile=device, app=app or None, plain_http=plain_http,
                                      log=log))
    reports = Reports(installer, every=report_every)
    if metrics_port is not None:
        from updater.metrics import serve

        serve(state_dir, metrics_port)
    failed = Daemon(installer, watch, pollers=pollers, interval=interval, reports=reports, report_to=report_to,
                    plain_http=plain_http, metrics=metrics_textfile, log=log).run(once=once)
    if failed is not None:
        fail(failed, as_json=as_json, result={"once": once})  # said in the log already; the envelope and the code here
    emit({"once": once}, as_json=as_json)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print what each application runs in the JSON envelope.")
@click.pass_obj
@reports_errors
def recover(state_dir: Path, as_json: bool) -> None:
    """Converge every application after a crash, a power cut or an engine restart: an interrupted
    install is rolled back, and the committed release is started if it is not running. Run it at
    boot (the service's `run` converges by itself).

    Says what the engine then runs of each application, and exits non-zero when one could not
    converge or its committed release is not serving (the others are converged all the same). A
    release whose install was interrupted 3 times is marked failed and not tried again by itself.

    \b
    Examples:
      sealift-updater recover"""
    from updater.docker_runtime import DockerRuntime
    from updater.install import Installer

    installer = Installer(state_dir=state_dir, runtime=DockerRuntime.connect(), profile=None,
                          log=lambda line: click.echo(line, err=True))
    worst: SealiftError | None = None
    result: dict[str, dict[str, object]] = {}
    lines = []
    converged = installer.recover()
    for name, state in converged.items():
        if isinstance(state, SealiftError):
            lines.append(f"{name}: could not converge: {state.diagnostics()}")
            result[name] = {"converged": False, "serving": None, "fault": state.fault, "message": state.diagnostics()}
            worst = worst or state
            continue
        serving = installer.app(name).serving(state)
        lines.append(f"{name}: running {serving}" if serving.release else f"{name}: {serving}")
        result[name] = {"converged": True, "serving": serving.ok, "message": str(serving)}
        if not serving.ok:
            worst = worst or Unhealthy(str(serving))
    if not as_json:
        click.echo("\n".join(lines) if lines else "nothing installed")
    if worst is not None:
        fail(worst, as_json=as_json, result=result)
    emit(result, as_json=as_json)
