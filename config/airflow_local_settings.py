"""Airflow's local settings for this product's deployments.

Airflow imports ``airflow_local_settings`` in each of its processes at start, from
``$AIRFLOW_HOME/config`` (the Dockerfile copies this folder there; ``devtools/stack.py`` puts it
on ``PYTHONPATH``). Keep your own policies here if you have any: this module only asks the
processes that fork Airflow's task processes to import what export tasks import, once
(:mod:`export_tx.airflow.preload`; ``EXPORT_TX_PRELOAD=off`` turns it off).
"""

from __future__ import annotations

from export_tx.airflow.preload import preload

preload()
