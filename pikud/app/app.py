"""App: what the control API acts on, one per app.

Every action takes the app's lock, so two requests for one app never
interleave (a second push waits, and says so) while different apps proceed
in parallel. Each action that changes what runs goes through AppCore's one
apply path (``_change``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pikud import identity
from pikud.app.core import AppCore, Progress, quiet, remove_tree
from pikud.app.desired import Desired
from pikud.appspec import format_env, format_scaling, parse_env, parse_scale_args, supervised_kinds
from pikud.appusers import provision, retire
from pikud.atomic import written_unless_failed
from pikud.deploy.buildkeys import BUILD_KEYS
from pikud.deploy.checkout import ref_value, wait_for_ref
from pikud.deploy.releases import Release
from pikud.errors import AppUserError, DeployError, EnvError, PikudError
from pikud.handover import AppRecord, adopt_slot
from pikud.identity import user_name
from pikud.procman.logs import log_files, tail

if TYPE_CHECKING:
    from pikud.deploy.pipeline import PushInfo

log = logging.getLogger(__name__)


class App(AppCore):
    _accepted: tuple[str, str] | None = None     # (ref, revision) of the last push

    async def _locked(self, progress: Progress) -> None:
        if self.lock.locked():
            progress(f"-----> Waiting for another action on {self.name} to finish")
        await self.lock.acquire()

    async def deploy(self, push: PushInfo | None = None, progress: Progress = quiet, *,
                     admin: bool = True) -> None:
        """Build and switch to a new release (a push, or a rebuild of the current one).

        An app without releases (code placed in apps/APP) is re-read and applied.
        ``admin``: the caller has admin on the app (a new NGINX_INCLUDE_FILE needs it).
        """
        await self._locked(progress)
        try:
            self.note("deploy", f"{self.name}: deploying" + (
                f" {push.revision[:12]} pushed by {push.pusher or 'unknown'}" if push else ""))
            if push is None and self.release is None:
                await self._change(*self.load())      # files placed by hand: accepted
                return
            if push is not None:
                await self._check_ref(push)
            await self._build(push, progress, admin)
        finally:
            self.lock.release()

    async def _build(self, push: PushInfo | None, progress: Progress, admin: bool) -> None:
        """Build ``push`` (or the current revision again) with the ENV as it is, switch to
        it and prune; the lock is held. The include is vetted as built: a build step may
        have written it."""
        # imported on first use: the resting daemon stays light; see README
        from pikud.deploy.pipeline import build_release
        files = self._files()
        await provision(identity.current(), self.paths, self.name)   # its preflight, release
        release, spec = await build_release(
            self.paths, self.releases, push, self.release, self.services.base_env,
            self.services.defaults, self.config(), progress, self.admit)
        try:
            self._vet_include(spec, self.releases.directory(release.number), admin)
        except PikudError:
            await remove_tree(self.releases.directory(release.number))   # never went live
            raise
        await self._change(spec, files, to=release, progress=progress)
        if push is not None:
            self._accepted = (push.ref, push.revision)
        await self._prune(spec.settings.keep_releases, progress)
        self.note("deploy", f"{self.name}: release {release.number} is live")

    async def _check_ref(self, push: PushInfo) -> None:
        """Refuse a push that waited while another one moved its branch.

        git moves the ref only after the hook that deployed returns, so the
        last accepted push of this branch is waited for (briefly) first.
        """
        repo = self.paths.repo(self.name)
        if self._accepted is not None and self._accepted[0] == push.ref:
            await wait_for_ref(repo, *self._accepted, timeout=10.0)
        current = await ref_value(repo, push.ref)
        expected = push.old if push.old.strip("0") else ""      # zeros: a new branch
        if expected != current:
            raise DeployError(f"{push.ref} moved to {current[:12] or 'nothing'} while this "
                              "push waited: fetch, merge and push again")

    async def rollback(self, number: int | None, progress: Progress = quiet, *,
                       admin: bool = True) -> Release:
        """Switch back to release ``number`` (default: the one before the current) unbuilt."""
        await self._locked(progress)
        try:
            target = self.releases.get(number) if number is not None else self.releases.previous()
            spec, files = self.load(target)
            self._vet_include(spec, self.source(target), admin)
            progress(f"-----> Rolling {self.name} back to release {target.number}")
            await self._change(spec, files, to=target, progress=progress)
            self.note("rollback", f"{self.name}: rolled back to release {target.number}")
            return target
        finally:
            self.lock.release()

    async def _prune(self, keep: int, progress: Progress) -> None:
        """Drop all but the newest ``keep`` releases, the folders no release record names
        (a push killed half-way) and the environments none of them uses."""
        removed = self.releases.prune(keep)
        for path in [*map(self.releases.directory, removed), *self.releases.unrecorded()]:
            await remove_tree(path)
        in_use = self.releases.env_paths_in_use()
        env_dir = self.paths.env_dir(self.name)
        for path in env_dir.iterdir() if env_dir.is_dir() else ():
            if (path / ".pikud-complete").exists() and str(path) not in in_use:
                await remove_tree(path)
        if removed:
            progress(f"-----> Pruned releases {', '.join(map(str, removed))}")

    async def start(self, *, boot: bool = False) -> None:
        """Run the app; @reboot cron entries run when it was not running (or at boot).

        At boot only while it is still wanted: a `piku stop` may have come first.
        """
        async with self.lock:
            if boot and not self.running:
                return
            await self._change(*self.load(), starting=boot or not self.running)

    async def adopt(self, record: AppRecord) -> None:
        """Take over the processes the previous image ran (handover.py), starting and
        stopping nothing, and make them the app's state as a change would.

        The spec comes from the ENV and SCALING texts they were applied from. If
        this pikud refuses those files now, the processes keep running as they
        were (unrouted through the built-in router) and the error says why.
        """
        async with self.lock:
            self.group.adopt({slot.spec: adopt_slot(slot) for slot in record.slots})
            self.claimed = len(record.slots)
            files = (record.env_text, record.scaling_text)
            try:    # "" for a file there was none of: not the one made since
                spec, _ = self.load(overrides=files[0] or "", scaling_text=files[1] or "")
                self.claimed = self.admit(spec)
                release, source = self.release, self.source(self.release)
                env = self._env(spec, release)
                jobs = self._cron_jobs(spec, release)
            except PikudError as exc:
                self.note("error", f"{self.name}: adopted its processes, but its files do not "
                          f"load: {exc}", logging.ERROR)
                return
            self._commit(spec, files, None, env, self.addresses, jobs, starting=False)
            self._deferred = record.deferred
            await self.publish(spec, source, self.group.specs)

    async def recheck_files(self) -> None:
        """After adopting: an edit of ENV or SCALING made during the re-exec (its reload
        waited for the lock and went with the old image) is applied now."""
        if self.own_write() is None:
            try:
                await self.reload_files("config")
            except PikudError as exc:
                self.note("error", f"{self.name}: {exc}", logging.ERROR)

    async def restart(self) -> None:
        """Replace every process: web ones as a new generation, workers one at a time."""
        async with self.lock:
            spec, files = self.load()
            self.note("restart", f"{self.name}: restarting")
            await self._change(spec, files, restart_all=True, starting=True)

    async def stop(self, *, persist: bool = True) -> None:
        """Stop every process; ``persist=False`` (daemon shutdown) keeps the desired state.

        Stopped first, then saved: a save that fails (a full disk) never leaves
        the app called stopped while it runs.
        """
        async with self.lock:
            if not persist:     # the daemon's shutdown: an action queued behind it starts nothing
                self.group.close()
            if self.spec is not None:       # the router answers 503; nginx keeps its config
                await self.publish(self.spec, self.source(self.release), {})
            self._watch_idle(0)
            await self._stop_all(untracked=persist)
            if persist:
                self.desired = Desired.STOPPED
                self.services.save()

    async def scale(self, args: Mapping[str, Any]) -> None:
        """Change kind counts; only the difference is started or stopped."""
        async with self.lock:
            spec, _ = self.load()
            kinds = supervised_kinds(spec.procfile)
            changes = parse_scale_args([f"{k}={v}" for k, v in args.items()], kinds)
            text = format_scaling(dict(spec.scaling, **changes))
            spec, files = self.load(scaling_text=text)
            self.admit(spec)
            with self._kept_if_applied(self.paths.scaling_file(self.name), text, 0o600):
                self.note("scale", f"{self.name}: scaled to "
                          + ", ".join(f"{k}={v}" for k, v in spec.scaling.items()))
                if self.running:
                    await self._change(spec, files)

    @contextlib.contextmanager
    def _kept_if_applied(self, path: Path, text: str, mode: int) -> Iterator[None]:
        """Write a settings file for the block to apply; undo it, and say so, if that fails."""
        with written_unless_failed(path, text, mode, identity.current().deploy_owner()):
            try:
                yield
            except PikudError as exc:
                self.note("error", f"{self.name}: the change was undone, {path.name} is as it "
                          f"was: {exc}", logging.WARNING)
                raise

    async def reload_files(self, why: str) -> None:
        """A watched file changed: apply a valid edit, report and ignore a bad one."""
        async with self.lock:
            if not self.running:
                return
            try:
                spec, files = self.load()
                self.admit(spec)
            except PikudError as exc:
                self.note("error", f"{self.name}: ignored an edit, what runs is unchanged: "
                          f"{exc}", logging.WARNING)
                return
            if why == "touch":
                self.note("reload", f"{self.name}: touch-reload, restarting")
                await self._change(spec, files, restart_all=True)
            elif spec != self.spec:
                self.note("reload", f"{self.name}: ENV or SCALING edited, applying")
                await self._change(spec, files)

    async def republish(self) -> bool:
        """Publish the running app's traffic again (new Cloudflare ranges), as it is now;
        False when it is not running. PikudError when the new site was refused."""
        async with self.lock:
            if not self.running or self.spec is None:
                return False
            await self.publish(self.spec, self.source(self.release), self.group.specs)
            return True

    def config(self) -> dict[str, str]:
        try:
            text = self.paths.env_file(self.name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        return parse_env(text, f"envs/{self.name}/ENV", {})

    async def configure(self, updates: Mapping[str, str], removals: list[str], *,
                        admin: bool = True) -> dict[str, str]:
        """Change the overrides in envs/APP/ENV, then restart what changed (as restart does).

        Vetted even when nothing restarts now: a later start or restart needs no role."""
        async with self.lock:
            current = self.config()
            unknown = [key for key in removals if key not in current]
            if unknown:
                raise EnvError(f"not set: {', '.join(unknown)}", key=unknown[0])
            wanted = {k: v for k, v in current.items() if k not in removals} | dict(updates)
            text = format_env(wanted)
            spec, files = self.load(overrides=text)     # the whole result, before any write
            self.admit(spec)
            self.services.traffic.check(self.name, spec, self.source(self.release))
            self._vet_include(spec, self.source(self.release), admin)
            self._cron_jobs(spec, self.release)     # TZ, PIKU_CRON_*: even with no restart now
            changed = sorted(set(updates) | set(removals))
            build_keys = [key for key in changed if key in BUILD_KEYS]
            with self._kept_if_applied(self.paths.env_file(self.name), text, 0o600):
                self.note("config", f"{self.name}: config changed ({', '.join(changed)})")
                if not (self.running and spec.settings.auto_restart):
                    self._deferred = files   # at the next start or restart, not by the watcher
                    if build_keys and self.release is not None:
                        self.note("config", f"{self.name}: {', '.join(build_keys)} changes the "
                                  f"build: it applies at the next push or `piku deploy "
                                  f"{self.name}`", logging.WARNING)
                elif build_keys and self.release is not None:
                    # The environment is built for them: build again, or undo as a push fails.
                    self.note("config", f"{self.name}: {', '.join(build_keys)} changed, "
                              "rebuilding")
                    await self._build(None, quiet, admin)
                else:
                    await self._change(spec, files)
            return self.config()

    async def destroy(self) -> dict[str, list[str]]:
        """Stop and remove everything but data/APP and cache/APP (with app users, nginx's
        cache of the app goes: it is nginx's, not the app's)."""
        async with self.lock:
            await self._stop_all()
            self.services.cron.set_jobs(self.name, [], starting=False)   # forget history
            await self.services.traffic.withdraw(self.name)
            self._watch_idle(0)
            self.log.close()
            self.services.unwatch(self.name)
            nginx, who = self.paths.nginx(), identity.current()
            removed = []
            for path in (self.releases.root, self.releases.file, self.paths.app(self.name),
                         self.paths.repo(self.name), self.paths.env_dir(self.name),
                         self.paths.log_dir(self.name),
                         *([who.nginx_cache(self.paths, self.name),
                            who.socket_folder(self.paths, self.name)] if who.separate else []),
                         *(nginx / f"{self.name}.{suffix}" for suffix in ("conf", "crt", "key")),
                         *nginx.glob(f"{self.name}.include-*")):
                if path.is_symlink() or path.is_file():
                    path.unlink()
                elif path.is_dir():
                    await remove_tree(path)
                else:
                    continue
                removed.append(str(path))
            self.services.forget(self.name)
            kept = [str(p) for p in (self.paths.data(self.name), self.paths.cache(self.name))
                    if p.exists()]
            try:
                if await retire(who, self.paths, self.name):
                    removed.append(f"user {user_name(self.name)}")
            except AppUserError as exc:     # the app is gone already: say so, never fail here
                log.warning("%s: app user kept: %s", self.name, exc)
                kept.append(f"user {user_name(self.name)} ({exc}; remove it with userdel "
                            "once nothing runs as it)")
            log.info("%s: destroyed", self.name)
            self.services.events.emit(self.name, None, "destroy", f"{self.name}: destroyed")
            return {"removed": removed, "kept": kept}

    # -- reporting -----------------------------------------------------------

    def live(self) -> dict[str, Any]:
        spec = self.spec or self.load()[0]
        return {"env": self._env(spec, self.release), "cwd": str(self.source(self.release))}

    def logs(self, lines: int, kind: str | None) -> list[dict[str, str]]:
        found = []
        for source, path in log_files(self.paths.log_dir(self.name), kind):
            found += [{"source": source, "line": line} for line in tail(path, lines)]
        found.sort(key=lambda entry: entry["line"].split(" ", 1)[0])     # by timestamp
        return found[-lines:] if lines else []

    def _formation(self) -> dict[str, int]:
        if self.spec is not None:
            return dict(self.spec.scaling)
        try:
            return dict(self.load()[0].scaling)
        except PikudError:
            return {}

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for proc in self.group.processes.values():
            counts[proc.state.value] = counts.get(proc.state.value, 0) + 1
        release = self.release
        return {"name": self.name, "state": self.desired.value, "formation": self._formation(),
                "processes": counts, "release": release.number if release else None,
                "problems": ([self.releases.problem] if self.releases.problem else [])
                + list(self._noted.get("nginx", ()))}

    def detail(self) -> dict[str, Any]:
        """The summary, its processes, and its problems with the daemon-wide ones."""
        summary = self.summary()
        return dict(summary, processes=[p.snapshot() for p in self.group.all()],
                    problems=self.services.problems() + summary["problems"])

    def cron(self) -> list[dict[str, Any]]:
        return self.services.cron.describe(self.name)

    async def cron_run(self, kind: str) -> dict[str, Any]:
        return await self.services.cron.run_now(self.name, kind)

    def releases_list(self) -> list[dict[str, Any]]:
        return [r.summary(self.releases.current) for r in reversed(self.releases.releases)]

    def state(self) -> dict[str, Any]:
        return {"desired": self.desired.value, "ports": self.addresses}
