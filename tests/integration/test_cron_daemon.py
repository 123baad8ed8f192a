"""Cron inside a real daemon: listing, run now, @reboot, bad schedules, restarts."""

from __future__ import annotations

from tests.conftest import FAST, Pikud, json_out, wait_for


def test_cron_jobs_are_listed_run_on_demand_and_survive_a_daemon_restart(pikud_factory) -> None:
    daemon: Pikud = pikud_factory()
    daemon.add_app("cr", "worker: sleep 300\ncron1: 0 3 * * mon-fri echo nightly $APP\n"
                   "cron2: @reboot echo booted\n", FAST + "TZ=Europe/Berlin\n")
    daemon.api("POST", "/apps/cr/deploy")
    wait_for(lambda: "booted" in daemon.log_text("cr", "cron2"), 10, "the @reboot job")
    jobs = {j["kind"]: j for j in json_out(daemon.cli("cron", "cr", "--json"))["jobs"]}
    assert jobs["cron1"]["schedule"] == "0 3 * * mon-fri" and jobs["cron1"]["tz"] == "Europe/Berlin"
    assert jobs["cron1"]["next_run"].endswith(("+01:00", "+02:00"))
    assert jobs["cron1"]["next_run"][11:16] == "03:00"
    started = daemon.cli("cron:run", "cr", "cron1", check=True)
    assert "started at" in started.stdout
    log = wait_for(lambda: "run ended: exit status 0" in daemon.log_text("cr", "cron1")
                   and daemon.log_text("cr", "cron1"), 10, "the run")
    assert "nightly cr" in log and "----- run started at" in log
    table = daemon.cli("cron", "cr", check=True).stdout
    assert "cron1" in table and "exit status 0" in table
    daemon.stop()
    daemon.start()
    # The jobs are set once the app's processes are up (the change's commit).
    wait_for(lambda: daemon.processes("cr") and daemon.api("GET", "/apps/cr/cron")["jobs"], 10,
             "the app back")
    again = {j["kind"]: j for j in daemon.api("GET", "/apps/cr/cron")["jobs"]}
    assert again["cron1"]["last_run"]["status"] == "exit status 0"
    def reboot_runs() -> int:
        return sum(1 for line in daemon.log_text("cr", "cron2").splitlines()
                   if line.split(" ", 1)[1] == "booted")
    wait_for(lambda: reboot_runs() == 2, 10, "the @reboot job at the second start")
    assert reboot_runs() == 2                                   # once per start of the app


def test_a_bad_schedule_is_refused_and_changes_nothing(pikud: Pikud) -> None:
    app = pikud.add_app("badcron", "worker: sleep 300\n", FAST)
    pikud.api("POST", "/apps/badcron/deploy")
    before = [p["pid"] for p in pikud.processes("badcron")]
    (app / "Procfile").write_text("worker: sleep 300\ncron1: 61 * * * * echo never\n")
    result = pikud.cli("deploy", "badcron")
    assert result.returncode == 1 and "minute" in result.stderr and "61" in result.stderr
    assert [p["pid"] for p in pikud.processes("badcron")] == before
    assert pikud.api("GET", "/apps/badcron/cron")["jobs"] == []


def test_stopping_the_app_stops_its_schedule(pikud: Pikud) -> None:
    pikud.add_app("cs", "cron1: * * * * * echo minute\n", FAST)
    pikud.api("POST", "/apps/cs/deploy")
    assert pikud.api("GET", "/apps/cs/cron")["jobs"][0]["next_run"] is not None
    pikud.api("POST", "/apps/cs/stop")
    jobs = pikud.api("GET", "/apps/cs/cron")["jobs"]
    assert all(job["next_run"] is None for job in jobs)
    refused = pikud.cli("cron:run", "cs", "nope")
    assert refused.returncode == 1 and "nope" in refused.stderr
