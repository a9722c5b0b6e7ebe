# export-tx on the official Apache Airflow image.
#
# One image for every Airflow component (api-server, scheduler, dag-processor, triggerer, Celery
# workers): the DAGs, the plugins and the installed `export_tx` library are baked in, so they are
# identical on every container. Built by `docker compose build` (see docker-compose.yaml).
#
# Extends the image the way Airflow documents it (https://airflow.apache.org/docs/docker-stack/build.html):
# files copied with the airflow user as owner, `pip install` run as the airflow user (the image sets
# PIP_USER, so packages land in ~airflow/.local), against the project's pinned constraints.txt, which
# also pins apache-airflow itself to the image's version.
FROM apache/airflow:3.3.2-python3.11

ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/airflow/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False

USER airflow

# The library first (its layer is rebuilt only when the package or the pins change).
# README.md is copied because pyproject.toml declares it as the package's readme (setuptools reads it).
COPY --chown=airflow:0 pyproject.toml constraints.txt README.md /opt/airflow/export-tx/
COPY --chown=airflow:0 include/ /opt/airflow/export-tx/include/
RUN cd /opt/airflow/export-tx && pip install --no-cache-dir -c constraints.txt .

# DAGs and plugins where AIRFLOW__CORE__DAGS_FOLDER / PLUGINS_FOLDER point.
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
# airflow_local_settings.py: Airflow imports it from $AIRFLOW_HOME/config in each process (the
# processes that fork tasks preload what export tasks import; export_tx.airflow.preload).
COPY --chown=airflow:0 config/ /opt/airflow/config/

# Shared data (demo SQLite source, Simple auth manager passwords): a named volume is mounted here
# in docker-compose.yaml, and a fresh named volume takes over this directory's airflow ownership.
RUN mkdir -p /opt/airflow/data
