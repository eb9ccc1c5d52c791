"""Routines: runbook requests stored with a cadence, fired exactly once per
scheduled time by whichever gateway replica claims it first."""
