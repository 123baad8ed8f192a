"""Cron run by the daemon: Procfile ``cron*`` entries parsed, scheduled and run."""

from pikud.cron.jobs import cron_entries
from pikud.cron.schedule import CronEntry, local_zone, next_run, parse_cron, zone
from pikud.cron.scheduler import JobSpec, Scheduler, job_settings

__all__ = ["CronEntry", "JobSpec", "cron_entries", "Scheduler", "job_settings", "local_zone",
           "next_run", "parse_cron", "zone"]
