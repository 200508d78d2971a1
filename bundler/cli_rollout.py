"""``sealift rollout``: staged rollouts of signed releases (see :mod:`bundler.rollout` and docs/rollout.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bundler.cli_sites import inventory_option
from updater.exits import emit, reports_errors

if TYPE_CHECKING:
    from bundler.rollout import Rollouts
    from updater.rollout import Plan

__all__ = ["rollout"]


@click.group()
def rollout() -> None:
    """Staged rollouts: a release reaches devices wave by wave, each device deciding offline.

    A plan (signed by the repository's `rollout` role, whose keys a release manager holds
    without the targets keys) names the waves: devices by ID or label, sites, or a share of the
    other devices. Devices wait for their wave to be opened (`advance`) and for their site's
    maintenance window. `pause` and `resume` stop and restart a rollout; `halt` stops it for good
    and sends the devices that installed the release back to the previous one.

    Each step is signed into the repository's metadata: publish it with --publish, or add the
    bundles again (`sealift repo add`) before exporting them to media.

    \b
    Examples:
      sealift rollout plan repo/ vision-app-1.4.0.yaml --keys keys/
      sealift rollout advance repo/ vision-app 1.4.0 --keys keys/ --publish registry.example.com/vision-app
      sealift rollout status repo/ vision-app 1.4.0
    """


_repo_arg = click.argument("directory", type=click.Path(path_type=Path, file_okay=False), metavar="REPO")
_keys_option = click.option("--keys", "keydir", required=True, type=click.Path(path_type=Path, file_okay=False),
                            help="The key directory holding the rollout role's keys (and snapshot's and timestamp's).")
_publish_option = click.option("--publish", multiple=True, metavar="REGISTRY/REPO",
                               help="Publish the signed metadata to this registry repository (repeatable).")
_plain_http_option = click.option("--plain-http", is_flag=True, help="Talk HTTP, not HTTPS, to the registries.")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")


def _rollouts(directory: Path, keydir: Path) -> Rollouts:
    from bundler.keys import Keyring
    from bundler.repo import Repository
    from bundler.rollout import Rollouts

    return Rollouts(Repository(directory, Keyring(keydir)))


def _done(rollouts: Rollouts, plan: Plan, *, publish: tuple[str, ...], plain_http: bool, as_json: bool, said: str) -> None:
    published = rollouts.publish(publish, plain_http=plain_http) if publish else []
    if as_json:
        emit({"plan": plan.to_json(), "published": published}, as_json=True)
        return
    click.echo(said)
    for line in _summary(plan):
        click.echo(f"  {line}")
    if publish:
        click.echo(f"published {len(published)} metadata files to {', '.join(publish)}")


def _summary(plan: Plan) -> list[str]:
    lines = [f"state {plan.state.value}" + (f" ({plan.reason})" if plan.reason else "")
             + (", devices that run it go back" if plan.rollback else "") + f"; failure threshold {plan.failure_threshold:g}%"]
    for i, wave in enumerate(plan.waves):
        parts = [f"{len(wave.devices)} devices" if wave.devices else "", f"sites {', '.join(sorted(wave.sites))}" if wave.sites else "",
                 f"up to {wave.upto / 100:g}% of the rest" if wave.upto is not None else "",
                 f"not before {wave.not_before:%Y-%m-%d %H:%M}Z" if wave.not_before else ""]
        lines.append(f"wave {i + 1} {wave.name}: {'open' if i < plan.opened else 'waiting'}; {', '.join(p for p in parts if p)}")
    return lines


def _step(name: str, help_text: str) -> Callable[[Callable[..., Any]], Any]:
    """A command that changes one rollout: REPO APP VERSION, the keys, publishing and JSON."""

    def decorate(func: Callable[..., Any]) -> Any:
        for option in (reports_errors, _json_option, _plain_http_option, _publish_option, _keys_option,
                       click.argument("version"), click.argument("app"), _repo_arg):
            func = option(func)
        return rollout.command(name, help=help_text)(func)

    return decorate


@rollout.command("init")
@_repo_arg
@_keys_option
@click.option("--role-keys", "key_count", type=click.IntRange(1, 16), default=1, show_default=True, help="Keys to create.")
@click.option("--threshold", type=click.IntRange(1, 16), default=1, show_default=True, help="Signatures needed.")
@_json_option
@reports_errors
def rollout_init(directory: Path, keydir: Path, key_count: int, threshold: int, as_json: bool) -> None:
    """Create REPO's `rollout` role, which signs rollout plans (needs the targets keys, once).

    \b
    Examples:
      sealift rollout init repo/ --keys keys/
      sealift rollout init repo/ --keys keys/ --role-keys 3 --threshold 2
    """
    from bundler.keys import Keyring
    from bundler.repo import Repository

    Repository(directory, Keyring(keydir)).init_rollout(keys=key_count, threshold=threshold)
    emit({"repository": str(directory), "keys": str(keydir), "role_keys": key_count, "threshold": threshold}, as_json=as_json,
         text=f"created the rollout role in {directory}: its keys are in {keydir}; give them to the release managers")


@rollout.command("plan")
@_repo_arg
@click.argument("plan_file", type=click.Path(path_type=Path, dir_okay=False), metavar="PLAN.yaml")
@_keys_option
@inventory_option
@_publish_option
@_plain_http_option
@_json_option
@reports_errors
def rollout_plan(directory: Path, plan_file: Path, keydir: Path, inventory: Path, publish: tuple[str, ...], plain_http: bool,
                 as_json: bool) -> None:
    """Sign the rollout PLAN.yaml describes, its first wave open.

    Labels are resolved to the inventory's devices now, and the sites' maintenance windows taken
    from it (`sealift devices label`, `sealift devices window`).

    \b
    Examples:
      sealift rollout plan repo/ vision-app-1.4.0.yaml --keys keys/ --publish mirror:5000/vision-app
    """
    import datetime as dt

    from bundler.devices import Inventory
    from bundler.rollout import read_plan_file

    rollouts = _rollouts(directory, keydir)
    plan = rollouts.start(read_plan_file(plan_file, Inventory(inventory), now=dt.datetime.now(dt.UTC)))
    _done(rollouts, plan, publish=publish, plain_http=plain_http, as_json=as_json,
          said=f"signed the rollout of {plan.app} {plan.version}: wave {plan.waves[0].name} is open")


_db_option = click.option("--db", type=click.Path(path_type=Path, dir_okay=False), default=Path("fleet.db"), show_default=True,
                          help="The fleet database the devices' reports were imported into (`sealift fleet import`).")


def _waves(db: Path, inventory: Path, plan: Plan) -> list[Any]:
    from bundler.devices import Inventory
    from bundler.fleet import FleetDatabase
    from bundler.rollout_status import rollout_status
    from updater.errors import InputError

    if not db.is_file():
        raise InputError(f"{db}: no fleet database; import the devices' reports first (`sealift fleet import`)")
    with FleetDatabase(db).connect() as connection:
        return rollout_status(connection, Inventory(inventory), plan)


@_step("advance", """Open the next wave of APP VERSION's rollout.

    Refused while the rollout is paused or halted, and while an open wave's failure rate passes
    the plan's threshold by the reports in the fleet database (--unchecked skips that check).

    \b
    Examples:
      sealift fleet import /media/usb && sealift rollout advance repo/ vision-app 1.4.0 --keys keys/
    """)
@_db_option
@inventory_option
@click.option("--unchecked", is_flag=True, help="Open the next wave without asking the fleet database how the open ones go.")
def rollout_advance(directory: Path, app: str, version: str, keydir: Path, publish: tuple[str, ...], plain_http: bool,
                    as_json: bool, db: Path, inventory: Path, unchecked: bool) -> None:
    from bundler.rollout_status import failing

    rollouts = _rollouts(directory, keydir)
    plan = rollouts.advance(app, version, failing=(lambda _: None) if unchecked else lambda p: failing(_waves(db, inventory, p), p))
    _done(rollouts, plan, publish=publish, plain_http=plain_http, as_json=as_json,
          said=f"opened wave {plan.waves[plan.opened - 1].name} of the rollout of {app} {version}")


@_step("pause", """Stop APP VERSION's rollout for now: devices that wait keep waiting; those that installed keep it.

    \b
    Examples:
      sealift rollout pause repo/ vision-app 1.4.0 --keys keys/ --reason 'camera timeouts at plant-7'
    """)
@click.option("--reason", default="", help="Why: devices say it in their status.")
def rollout_pause(directory: Path, app: str, version: str, keydir: Path, publish: tuple[str, ...], plain_http: bool,
                  as_json: bool, reason: str) -> None:
    rollouts = _rollouts(directory, keydir)
    plan = rollouts.pause(app, version, reason=reason)
    _done(rollouts, plan, publish=publish, plain_http=plain_http, as_json=as_json, said=f"paused the rollout of {app} {version}")


@_step("resume", """Go on with APP VERSION's paused rollout.

    \b
    Examples:
      sealift rollout resume repo/ vision-app 1.4.0 --keys keys/ --publish registry.example.com/vision-app
    """)
def rollout_resume(directory: Path, app: str, version: str, keydir: Path, publish: tuple[str, ...], plain_http: bool,
                   as_json: bool) -> None:
    rollouts = _rollouts(directory, keydir)
    plan = rollouts.resume(app, version)
    _done(rollouts, plan, publish=publish, plain_http=plain_http, as_json=as_json, said=f"resumed the rollout of {app} {version}")


@_step("halt", """Stop APP VERSION's rollout for good; devices that run it go back to the previous release.

    \b
    Examples:
      sealift rollout halt repo/ vision-app 1.4.0 --keys keys/ --reason 'detector misses at night'
      sealift rollout halt repo/ vision-app 1.4.0 --keys keys/ --reason 'superseded by 1.4.1' --no-rollback
    """)
@click.option("--reason", required=True, help="Why: devices say it in their status and reports.")
@click.option("--no-rollback", "keep", is_flag=True, help="Devices that installed the release keep it.")
def rollout_halt(directory: Path, app: str, version: str, keydir: Path, publish: tuple[str, ...], plain_http: bool,
                 as_json: bool, reason: str, keep: bool) -> None:
    rollouts = _rollouts(directory, keydir)
    plan = rollouts.halt(app, version, reason=reason, rollback=not keep)
    _done(rollouts, plan, publish=publish, plain_http=plain_http, as_json=as_json,
          said=f"halted the rollout of {app} {version}" + ("" if keep else "; devices that run it go back"))


@rollout.command("show")
@_repo_arg
@click.argument("app", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the plans as JSON.")
@reports_errors
def rollout_show(directory: Path, app: str | None, as_json: bool) -> None:
    """The rollout plans REPO signs (of APP only, when given), newest release first; no keys needed.

    \b
    Examples:
      sealift rollout show repo/
      sealift rollout show repo/ vision-app --json
    """
    from bundler.repo import Repository

    plans = [p for p in Repository.reading(directory).plans() if app is None or p.app == app]
    if as_json:
        emit([p.to_json() for p in plans], as_json=True)
        return
    if not plans:
        click.echo("no rollout plans" + (f" of {app}" if app else ""))
    for plan in plans:
        click.echo(f"{plan.app} {plan.version} (signed {plan.changed:%Y-%m-%d %H:%M}Z)")
        for line in _summary(plan):
            click.echo(f"  {line}")


@rollout.command("status")
@_repo_arg
@click.argument("app")
@click.argument("version")
@_db_option
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print each wave's counts and devices as JSON.")
@reports_errors
def rollout_status(directory: Path, app: str, version: str, db: Path, inventory: Path, as_json: bool) -> None:
    """How APP VERSION's rollout goes, wave by wave, by the devices' reports: updated, failed,
    waiting, unheard (no report since the rollout started); no keys needed.

    \b
    Examples:
      sealift rollout status repo/ vision-app 1.4.0 --db fleet.db
    """
    from bundler.repo import Repository
    from bundler.rollout import Rollouts
    from bundler.rollout_status import failing

    plan = Rollouts(Repository.reading(directory)).get(app, version)
    waves = _waves(db, inventory, plan)
    why = failing(waves, plan)
    if as_json:
        emit({"plan": plan.to_json(), "waves": [w.to_json() for w in waves], "failing": why}, as_json=True)
        return
    click.echo(f"{app} {version}: {plan.state.value}" + (f" ({plan.reason})" if plan.reason else "")
               + f"; {plan.opened} of {len(plan.waves)} waves open; failure threshold {plan.failure_threshold:g}%")
    for wave in waves:
        counts = ", ".join(f"{len(found)} {kind}" for kind, found in wave.devices.items())
        click.echo(f"  {wave.name:16} {'open' if wave.open else 'waiting':8} {counts}; failure rate {wave.failure_rate:.0f}%")
    if why:
        click.echo(f"failing: {why} (`sealift rollout check` halts it)")


@rollout.command("check")
@_repo_arg
@_keys_option
@_db_option
@inventory_option
@_publish_option
@_plain_http_option
@click.option("--json", "as_json", is_flag=True, help="Print what was checked and halted as JSON.")
@reports_errors
def rollout_check(directory: Path, keydir: Path, db: Path, inventory: Path, publish: tuple[str, ...], plain_http: bool,
                  as_json: bool) -> None:
    """Halt every running or paused rollout one of whose open waves fails more than its plan's threshold
    allows, by the devices' reports; the halt is signed, and devices that run the release go back.
    Exits 0 whether or not it halted one: schedule it after each `sealift fleet import`.

    \b
    Examples:
      sealift rollout check repo/ --keys keys/ --db fleet.db --publish mirror:5000/vision-app
    """
    from bundler.rollout_status import failing
    from updater.rollout import State

    rollouts = _rollouts(directory, keydir)
    checked, halted = [], []
    for plan in rollouts.repo.plans():
        if plan.state is State.HALTED:  # a paused one too: devices that installed it still run it
            continue
        why = failing(_waves(db, inventory, plan), plan)
        checked.append(f"{plan.app} {plan.version}")
        if why:
            rollouts.halt(plan.app, plan.version, reason=why[:200])  # a reason devices show: one short line
            halted.append({"app": plan.app, "version": plan.version, "reason": why})
    published = rollouts.publish(publish, plain_http=plain_http) if publish and halted else []
    if as_json:
        emit({"checked": checked, "halted": halted, "published": published}, as_json=True)
        return
    for item in halted:
        click.echo(f"halted {item['app']} {item['version']}: {item['reason']}")
    click.echo(f"checked {len(checked)} rollouts (running or paused); halted {len(halted)}")
