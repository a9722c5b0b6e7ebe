"""The container stack (docker-compose.yaml, Dockerfile, .dockerignore), checked without a Docker engine.

There is no Docker engine on the test machines (and the docker client has no compose plugin), so the
compose file is parsed with PyYAML and checked against the code: the connections and EXPORT_TX_*
variables the library reads, the folders the image copies DAGs and plugins to, the components of a
CeleryExecutor deployment and the way they reach each other. ``${VAR:-default}`` values are resolved
the way ``docker compose`` resolves them when none of the variables is set (defaults only).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

# Airflow services are named airflow-*; the common block is the x-airflow-common extension.
AIRFLOW_PREFIX = "airflow-"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
EXPORT_QUEUES = {"default", "exports_batches", "exports_merge"}
# EXPORT_TX_* variables a deployment must set (the rest have defaults that suit containers).
REQUIRED_EXPORT_TX = {
    "EXPORT_TX_STORE_CONN_ID",
    "EXPORT_TX_STORAGE_URI",
    "EXPORT_TX_PUBLIC_URL",
    "EXPORT_TX_MAIL_FROM",
    "EXPORT_TX_DEMO_DB",  # the default ($AIRFLOW_HOME) is private to each container
}
# Modules that run on a user's machine, not in the Airflow components: their variables have no
# business in the containers' environment.
CLIENT_MODULES = {"cli.py"}
# devstack settings that are specific to one machine running every component on loopback.
DEVSTACK_ONLY = {"AIRFLOW__API__HOST", "AIRFLOW__API__PORT", "AIRFLOW__API__WORKERS",
                 # only for the embedded SQLite metadata database; compose runs PostgreSQL
                 "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"}  # fmt: skip


# -- loading ---------------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yaml is not a mapping"
    return data


def services() -> dict[str, dict[str, Any]]:
    found = compose().get("services")
    assert isinstance(found, dict) and found, "docker-compose.yaml defines no services"
    return found


def airflow_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services().items() if name.startswith(AIRFLOW_PREFIX)}


def common() -> dict[str, Any]:
    block = compose().get("x-airflow-common")
    assert isinstance(block, dict), "docker-compose.yaml has no x-airflow-common block"
    return block


_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::?[-?]([^}]*))?\}|\$(\w+)")


def interpolate(value: Any) -> str:
    """A compose value as ``docker compose`` resolves it with no variable set."""

    def resolve(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return match.group(2) or ""

    return _VARIABLE.sub(resolve, str(value))


def env_of(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(key): "" if value is None else str(value) for key, value in raw.items()}


def common_env() -> dict[str, str]:
    env = env_of(common())
    assert env, "x-airflow-common has no environment"
    return env


def resolved_common_env() -> dict[str, str]:
    return {key: interpolate(value) for key, value in common_env().items()}


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return {str(name): "service_started" for name in raw}
    return {str(name): str((spec or {}).get("condition", "service_started")) for name, spec in raw.items()}


def published_ports(service: dict[str, Any]) -> dict[int, int]:
    """Container port -> host port, from short ("8080:8080", "127.0.0.1:80:8080/tcp") or long syntax."""
    ports: dict[int, int] = {}
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            if entry.get("published") is not None:
                ports[int(entry["target"])] = int(entry["published"])
            continue
        parts = str(entry).split("/", 1)[0].split(":")
        if len(parts) >= 2:
            ports[int(parts[-1])] = int(parts[-2])
    return ports


def services_running(*command: str) -> list[str]:
    """Services whose command contains ``command`` (with or without a leading ``airflow``)."""
    found = []
    for name, svc in services().items():
        words = command_of(svc)
        if words[:1] == ["airflow"]:
            words = words[1:]
        if words[: len(command)] == list(command):
            found.append(name)
    return found


def service_by_image(fragment: str) -> str:
    names = [name for name, svc in services().items() if fragment in str(svc.get("image", ""))]
    assert len(names) == 1, f"expected one service running an image with {fragment!r}, found {names}"
    return names[0]


def bind_port(address: str) -> int:
    """Port of a bind address such as ``0.0.0.0:1025`` or ``:9000``."""
    return int(address.rsplit(":", 1)[1])


def option(words: list[str], *names: str) -> str | None:
    for i, word in enumerate(words):
        for name in names:
            if word == name and i + 1 < len(words):
                return words[i + 1]
            if word.startswith(name + "="):
                return word.split("=", 1)[1]
    return None


# -- Dockerfile ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    user: str | None  # the USER in effect (None: the base image's default)


@cache
def dockerfile() -> tuple[Instruction, ...]:
    assert DOCKERFILE.is_file(), "Dockerfile is missing"
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    instructions = []
    user: str | None = None
    for text in logical:
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "USER":
            user = args.strip().split(":")[0]
        instructions.append(Instruction(keyword, args.strip(), user))
    return tuple(instructions)


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in dockerfile():
        if ins.keyword != "ENV":
            continue
        words = shlex.split(ins.args)
        if words and "=" not in words[0]:  # legacy form: ENV KEY value
            env[words[0]] = " ".join(words[1:])
        else:
            for word in words:
                key, _, value = word.partition("=")
                env[key] = value
    return env


@dataclass(frozen=True)
class Copy:
    index: int
    sources: tuple[str, ...]
    dest: str
    chown: str | None


def dockerfile_copies() -> list[Copy]:
    copies = []
    for index, ins in enumerate(dockerfile()):
        if ins.keyword not in ("COPY", "ADD"):
            continue
        words = shlex.split(ins.args)
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        chown = next((f.split("=", 1)[1] for f in flags if f.startswith("--chown=")), None)
        copies.append(Copy(index, tuple(p.rstrip("/") for p in paths[:-1]), paths[-1], chown))
    return copies


def copied(source: str) -> tuple[int, str]:
    """(instruction index, path in the image) of a file or directory of the repository."""
    for copy in dockerfile_copies():
        if source in copy.sources:
            if (REPO / source).is_dir():
                return copy.index, copy.dest.rstrip("/")
            dest = copy.dest
            return copy.index, (dest + Path(source).name) if dest.endswith("/") else dest
    raise AssertionError(f"the Dockerfile does not copy {source}")


# -- what the code reads ---------------------------------------------------------------------------

_ENV_READ = re.compile(
    r"""(?:\b_env|\b_whole|\b_seconds|os\.environ\.get|os\.getenv)\(\s*["'](EXPORT_TX_\w+)["']|os\.environ\[\s*["'](EXPORT_TX_\w+)["']\s*\]"""
)


def code_files() -> Iterator[Path]:
    for folder in (REPO / "include" / "export_tx", REPO / "dags", REPO / "plugins", REPO / "config"):
        yield from sorted(folder.rglob("*.py"))


def export_tx_reads(*, server_side: bool) -> set[str]:
    names: set[str] = set()
    for path in code_files():
        if server_side and path.name in CLIENT_MODULES:
            continue
        for match in _ENV_READ.finditer(path.read_text()):
            names.add(match.group(1) or match.group(2))
    if server_side:
        from export_tx.config import CLIENT_VARIABLES

        names -= CLIENT_VARIABLES
    return names


def connection(conn_id: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The connection as Airflow resolves it from the compose environment (AIRFLOW_CONN_<ID>)."""
    from airflow.sdk import BaseHook

    variable = f"AIRFLOW_CONN_{conn_id.upper()}"
    value = resolved_common_env().get(variable)
    assert value, f"{variable} is not set in x-airflow-common (connection {conn_id!r} is used by the code)"
    if value.lstrip().startswith("{"):
        json.loads(value)  # a JSON connection must be valid JSON, not merely look like it
    monkeypatch.setenv(variable, value)
    return BaseHook.get_connection(conn_id)


# -- the image -------------------------------------------------------------------------------------


def test_every_service_has_an_image_or_a_build() -> None:
    missing = [name for name, svc in services().items() if not (svc.get("image") or svc.get("build"))]
    assert not missing, f"services with neither image nor build: {missing}"


def test_airflow_services_build_the_project_dockerfile() -> None:
    assert airflow_services(), "no airflow-* services"
    for name, svc in airflow_services().items():
        build = svc.get("build")
        assert build, f"{name} does not build the project image (DAGs, plugins and library would be missing)"
        spec = {"context": build} if isinstance(build, str) else dict(build)
        context = (REPO / str(spec.get("context", "."))).resolve()
        assert context == REPO, f"{name} builds from {context}, not the repository"
        assert (context / str(spec.get("dockerfile", "Dockerfile"))).resolve() == DOCKERFILE
    assert DOCKERFILE.is_file()


def test_dockerfile_extends_the_official_image_at_the_pinned_versions() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = [dep for dep in project["dependencies"] if re.match(r"apache-airflow==", dep)]
    assert pins, "pyproject.toml does not pin apache-airflow"
    version = pins[0].split("==", 1)[1]
    python = re.search(r">=\s*(\d+\.\d+)", project["requires-python"])
    assert python
    froms = [ins.args for ins in dockerfile() if ins.keyword == "FROM"]
    assert froms == [f"apache/airflow:{version}-python{python.group(1)}"]
    assert f"apache-airflow=={version}\n" in (REPO / "constraints.txt").read_text()


def test_dockerfile_copies_the_project_and_installs_it_with_the_constraints() -> None:
    instructions = dockerfile()
    installs = [(i, ins) for i, ins in enumerate(instructions) if ins.keyword == "RUN" and "pip install" in ins.args]
    assert len(installs) == 1, f"expected one pip install, found {[ins.args for _, ins in installs]}"
    index, install = installs[0]
    assert re.search(r"pip install --no-cache-dir -c constraints\.txt \.(\s|$)", install.args), install.args
    assert install.user == "airflow", "the official image is extended by installing as the airflow user"
    workdir = re.search(r"\bcd\s+(\S+)\s*&&", install.args)
    assert workdir, "the install must run where pyproject.toml was copied"
    project_dir = workdir.group(1).rstrip("/")
    for source in ("pyproject.toml", "constraints.txt", "include"):
        at, path = copied(source)
        assert at < index, f"{source} is copied after the install"
        assert path == f"{project_dir}/{source}", f"{source} lands in {path}, the install runs in {project_dir}"
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("readme")
    if readme:  # setuptools reads it while building the package
        at, path = copied(readme)
        assert at < index and path == f"{project_dir}/{readme}"
    for source in ("dags", "plugins"):
        copied(source)
    for copy in dockerfile_copies():
        assert copy.chown and copy.chown.split(":")[0] == "airflow", f"{copy.sources} is not owned by airflow"


def test_dags_and_plugins_folders_agree_with_the_dockerfile() -> None:
    image_env = dockerfile_env()
    env = resolved_common_env()
    for source, variable in (("dags", "AIRFLOW__CORE__DAGS_FOLDER"), ("plugins", "AIRFLOW__CORE__PLUGINS_FOLDER")):
        _, path = copied(source)
        assert image_env.get(variable) == path, f"the Dockerfile copies {source}/ to {path}: ENV {variable}"
        assert env.get(variable, path) == path, f"x-airflow-common sets {variable}={env.get(variable)}"
        volumes = [str(v) for svc in [common(), *airflow_services().values()] for v in svc.get("volumes") or []]
        hidden = [v for v in volumes if v.split(":")[1:2] == [path]]
        assert not hidden, f"a volume hides the image's {source}: {hidden}"


def test_local_settings_land_where_airflow_imports_them() -> None:
    """``config/airflow_local_settings.py`` (the preload of what export tasks import) goes to
    ``$AIRFLOW_HOME/config``, which Airflow puts on ``sys.path`` in every process; no volume hides it."""
    _, path = copied("config")
    home = dockerfile_env().get("AIRFLOW_HOME", "/opt/airflow")  # the official image's
    assert path == f"{home}/config"
    assert (REPO / "config" / "airflow_local_settings.py").is_file()
    volumes = [str(v) for svc in [common(), *airflow_services().values()] for v in svc.get("volumes") or []]
    assert not [v for v in volumes if v.split(":")[1:2] == [path]], "a volume hides the image's config/"


def test_dockerignore_leaves_out_local_state_and_keeps_the_sources() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    patterns = [p.rstrip("/") for p in patterns if p and not p.startswith("#")]
    for needed in (".venv", ".git", ".airflow", "bench/results", ".pytest_cache"):
        assert needed in patterns, f".dockerignore does not exclude {needed}"
    for source in ("pyproject.toml", "constraints.txt", "README.md", "include", "dags", "plugins", "config"):
        matched = [p for p in patterns if fnmatch.fnmatch(source, p.removeprefix("**/"))]
        assert not matched, f".dockerignore excludes {source}, which the Dockerfile copies ({matched})"


# -- the Airflow deployment ------------------------------------------------------------------------


def test_every_airflow_service_shares_the_common_block() -> None:
    shared_env = common_env()
    for name, svc in airflow_services().items():
        env = env_of(svc)
        differing = {k: env.get(k) for k, v in shared_env.items() if env.get(k) != v}
        assert not differing, f"{name} lacks or overrides the shared environment: {differing}"
        assert svc.get("image") == common().get("image")
        for volume in common().get("volumes") or []:
            assert volume in (svc.get("volumes") or []), f"{name} does not mount {volume}"


def test_one_service_per_component_and_celery_workers() -> None:
    for component in COMPONENTS:
        running = services_running(component)
        assert len(running) == 1, f"{component}: {running}"
        assert running[0].startswith(AIRFLOW_PREFIX)
    assert services_running("celery", "worker"), "no Celery worker"
    init = services().get("airflow-init")
    assert init, "no airflow-init service"
    assert "airflow db migrate" in " ".join(command_of(init)), "airflow-init does not migrate the metadata DB"


def test_depends_on_names_existing_services_with_meaningful_conditions() -> None:
    known = set(services())
    for name, svc in services().items():
        for target, condition in depends_on(svc).items():
            assert target in known, f"{name} depends on unknown service {target}"
            assert target != name
            assert condition in ("service_started", "service_healthy", "service_completed_successfully")
            if condition == "service_healthy":
                assert services()[target].get("healthcheck"), f"{name} waits for {target}, which has no healthcheck"
            if condition == "service_completed_successfully":
                assert services()[target].get("restart") in (None, "no"), f"{target} must be a one-off"

    def reaches(start: str, seen: tuple[str, ...]) -> None:
        for target in depends_on(services()[start]):
            assert target not in seen, f"dependency cycle: {' -> '.join((*seen, target))}"
            reaches(target, (*seen, target))

    for name in services():
        reaches(name, (name,))
    for name, svc in airflow_services().items():
        if name != "airflow-init":
            assert depends_on(svc).get("airflow-init") == "service_completed_successfully", name
    for name, svc in services().items():
        if svc.get("restart") == "always":
            assert svc.get("healthcheck"), f"long-running {name} has no healthcheck"


def test_celery_executor_with_redis_broker_and_postgres_result_backend() -> None:
    env = resolved_common_env()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    redis = service_by_image("redis")
    broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
    assert broker.scheme == "redis" and broker.hostname == redis
    postgres = service_by_image("postgres")
    pg_env = env_of(services()[postgres])
    for variable, schemes in (
        ("AIRFLOW__CELERY__RESULT_BACKEND", ("db+postgresql",)),
        ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", ("postgresql", "postgresql+psycopg2", "postgresql+psycopg")),
    ):
        url = urlsplit(env[variable])
        assert url.scheme in schemes, f"{variable}: {url.scheme}"
        assert url.hostname == postgres, f"{variable} points at {url.hostname}, not the {postgres} service"
        assert (url.username, url.password) == (pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"]), variable
        assert url.path.lstrip("/") == pg_env["POSTGRES_DB"], variable


def test_components_reach_the_execution_api_of_the_api_server() -> None:
    (apiserver,) = services_running("api-server")
    url = urlsplit(resolved_common_env()["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert url.hostname == apiserver
    assert url.port in published_ports(services()[apiserver]), "the execution API port is not the api-server's"
    assert url.path == "/execution/"


def test_all_components_share_one_jwt_secret_and_api_secret_key() -> None:
    for variable in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
        values = {interpolate(env_of(svc).get(variable, "")) for svc in airflow_services().values()}
        assert len(values) == 1, f"{variable} differs between Airflow services"
        # Airflow signs tokens with HS512: RFC 7518 (and PyJWT's warning) want 64 bytes of key.
        shortest = 64 if variable == "AIRFLOW__API_AUTH__JWT_SECRET" else 16
        assert len(values.pop().encode()) >= shortest, f"{variable} is empty or too short"


def test_api_server_and_mail_ui_are_published() -> None:
    (apiserver,) = services_running("api-server")
    assert published_ports(services()[apiserver]).get(8080) == 8080
    mailpit = service_by_image("mailpit")
    ui_port = bind_port(env_of(services()[mailpit]).get("MP_UI_BIND_ADDR", "0.0.0.0:8025"))
    assert published_ports(services()[mailpit]).get(ui_port) == 8025


def test_devstack_settings_carry_over_to_the_containers(tmp_path: Path) -> None:
    """devstack.py is the reference for what a component needs: every Airflow setting it makes is set here."""
    from devtools.stack import AirflowStack

    reference = AirflowStack(tmp_path).env()
    env = resolved_common_env()
    needed = {k for k in reference if k.startswith("AIRFLOW__")} - DEVSTACK_ONLY
    assert needed - set(env) == set(), "settings devstack makes that compose lacks"
    for variable in (
        "AIRFLOW__CORE__LOAD_EXAMPLES",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
        "AIRFLOW__API__BASE_URL",
        "EXPORT_TX_PUBLIC_URL",
    ):
        assert env[variable].lower() == reference[variable].lower(), variable


def test_workers_have_their_own_hostnames_and_consume_the_export_queues() -> None:
    workers = services_running("celery", "worker")
    assert len(workers) >= 2, f"expected two Celery workers, found {workers}"
    hostnames = [services()[name].get("hostname") for name in workers]
    assert all(hostnames) and len(set(hostnames)) == len(hostnames), f"hostnames: {hostnames}"
    for name, hostname in zip(workers, hostnames, strict=True):
        # The api-server fetches a running task's log from <hostname>:8793: the name must resolve.
        assert hostname == name, f"{name}: hostname {hostname} is not resolvable by the other containers"
    consumed: set[str] = set()
    for name in workers:
        words = command_of(services()[name])
        assert words[:3] == ["airflow", "celery", "worker"], words
        queues = set((option(words, "-q", "--queues") or "default").split(","))
        assert queues <= EXPORT_QUEUES, f"{name} consumes unknown queues {queues - EXPORT_QUEUES}"
        assert "default" in queues, f"{name} does not consume the default queue"
        consumed |= queues
    assert consumed == EXPORT_QUEUES, f"no worker consumes {EXPORT_QUEUES - consumed}"


def test_every_queue_the_dag_routes_to_has_a_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    from export_tx import config

    for key, value in resolved_common_env().items():
        monkeypatch.setenv(key, value)
    routed = {kind: route["queue"] for kind, route in config.task_routing().items()}
    assert routed == {"batch": "exports_batches", "merge": "exports_merge"}, routed
    for kind, queue in routed.items():
        consumers = [
            name
            for name in services_running("celery", "worker")
            if queue in (option(command_of(services()[name]), "-q", "--queues") or "default").split(",")
        ]
        assert consumers, f"{kind} tasks go to queue {queue}, which no worker consumes"


# -- the product's configuration -------------------------------------------------------------------


def test_export_tx_variables_in_compose_are_read_by_the_code() -> None:
    server_side = export_tx_reads(server_side=True)
    assert REQUIRED_EXPORT_TX <= server_side, f"the code no longer reads {REQUIRED_EXPORT_TX - server_side}"
    set_in_compose = {key for svc in services().values() for key in env_of(svc) if key.startswith("EXPORT_TX_")}
    set_in_compose |= set(re.findall(r"\$\{?(EXPORT_TX_\w+)", COMPOSE_FILE.read_text()))
    unknown = set_in_compose - server_side
    assert not unknown, f"compose sets EXPORT_TX_* variables no server-side code reads: {unknown}"
    missing = REQUIRED_EXPORT_TX - set(common_env())
    assert not missing, f"x-airflow-common does not set {missing}"


def test_settings_resolve_from_the_compose_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from export_tx.config import get_settings
    from export_tx.notifications import email

    env = resolved_common_env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cfg = get_settings()
    assert cfg.store_conn_id == "export_tx_store"
    assert cfg.storage_uri.startswith("s3://")
    (apiserver,) = services_running("api-server")
    assert cfg.public_base_url == f"http://localhost:{published_ports(services()[apiserver])[8080]}"
    assert email.mail_from() == env["EXPORT_TX_MAIL_FROM"] and "@" in email.mail_from()
    targets = [str(v).split(":")[1] for v in common().get("volumes") or [] if ":" in str(v)]
    assert any(str(cfg.demo_db_path).startswith(t + "/") for t in targets), "the demo source is not on a shared volume"


def test_header_store_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = resolved_common_env()["EXPORT_TX_STORE_CONN_ID"]
    conn = connection(conn_id, monkeypatch)
    assert conn.conn_type == "postgres"
    assert conn.host == service_by_image("postgres") and conn.port == 5432
    assert conn.login and conn.password and conn.schema


def test_orders_source_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    from export_tx.definitions.orders import SOURCE_CONN_ID

    conn = connection(SOURCE_CONN_ID, monkeypatch)
    assert conn.conn_type == "postgres"
    assert conn.host == service_by_image("postgres") and conn.port == 5432
    assert conn.login and conn.schema


def test_s3_storage_connection_points_at_minio(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.amazon.aws.utils.connection_wrapper import AwsConnectionWrapper

    uri = urlsplit(resolved_common_env()["EXPORT_TX_STORAGE_URI"])
    assert uri.scheme == "s3" and uri.username, "EXPORT_TX_STORAGE_URI must be s3://<aws_conn_id>@<bucket>/<prefix>"
    conn = connection(uri.username, monkeypatch)
    assert conn.conn_type == "aws"
    wrapper = AwsConnectionWrapper(conn=conn)
    minio = service_by_image("minio/minio")
    minio_svc = services()[minio]
    endpoint = urlsplit(str(wrapper.get_service_endpoint_url("s3")))
    assert endpoint.hostname == minio, f"endpoint_url {endpoint.geturl()} is not the {minio} service"
    assert endpoint.port == bind_port(option(command_of(minio_svc), "--address") or ":9000")
    minio_env = env_of(minio_svc)
    assert (wrapper.aws_access_key_id, wrapper.aws_secret_access_key) == (
        minio_env["MINIO_ROOT_USER"],
        minio_env["MINIO_ROOT_PASSWORD"],
    ), "the S3 connection's credentials are not MinIO's"
    bucket_makers = [
        name
        for name, svc in services().items()
        if re.search(rf"\bmc mb\b.*\b\w+/{re.escape(str(uri.hostname))}\b", " ".join(command_of(svc)))
    ]
    assert bucket_makers, f"no service creates the bucket {uri.hostname}"
    for name in bucket_makers:
        assert depends_on(services()[name]).get(minio) == "service_healthy"
        assert f"http://{minio}:{endpoint.port}" in " ".join(command_of(services()[name]))


def test_smtp_connection_points_at_the_mail_catcher(monkeypatch: pytest.MonkeyPatch) -> None:
    from export_tx.notifications.email import SMTP_CONN_ID

    conn = connection(SMTP_CONN_ID, monkeypatch)
    assert conn.conn_type == "smtp"
    mailpit = service_by_image("mailpit")
    assert conn.host == mailpit
    assert conn.port == bind_port(env_of(services()[mailpit]).get("MP_SMTP_BIND_ADDR", "0.0.0.0:1025"))
    extra = conn.extra_dejson
    assert extra.get("disable_ssl") is True and extra.get("disable_tls") is True, extra


def test_every_airflow_conn_variable_is_used_and_points_at_a_service(monkeypatch: pytest.MonkeyPatch) -> None:
    from export_tx.definitions.orders import SOURCE_CONN_ID
    from export_tx.notifications.email import SMTP_CONN_ID

    env = resolved_common_env()
    used = {env["EXPORT_TX_STORE_CONN_ID"], str(urlsplit(env["EXPORT_TX_STORAGE_URI"]).username)}
    used |= {SMTP_CONN_ID, SOURCE_CONN_ID}
    prefix = "AIRFLOW_CONN_"
    conn_ids = {
        key.removeprefix(prefix).lower() for svc in services().values() for key in env_of(svc) if key.startswith(prefix)
    }
    assert conn_ids == used, f"connections set but not used: {conn_ids - used}; used but not set: {used - conn_ids}"
    for conn_id in sorted(conn_ids):
        conn = connection(conn_id, monkeypatch)
        host = conn.host or urlsplit(str(conn.extra_dejson.get("endpoint_url", ""))).hostname
        assert conn.conn_type and host in services(), f"{conn_id}: {conn.conn_type} at {host}, not a compose service"
