"""The trigger's former import path, kept for triggers deferred before an upgrade: Airflow stores a
trigger by its class path and loads it again from there. New code imports
:mod:`export_tx.airflow.triggers`."""

from export_tx.airflow.triggers import DownloadOrDelayTrigger

__all__ = ["DownloadOrDelayTrigger"]
