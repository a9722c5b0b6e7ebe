"""Who may do what: one door per person.

Airflow's permissions are per DAG, and a transaction is a run of ``export_transaction``: whoever
may see or change that DAG's runs sees every requester's parameters and e-mail addresses and can
stop anyone's export. So the product's own DAGs (the export, its e-mail, bulk exports,
housekeeping) belong to the platform team alone — Airflow's ``op`` and ``admin`` roles — and
everyone else goes through ``/exports`` and its Exports page, which authorise on a resource of
their own ("Exports", a custom view in Airflow's auth-manager terms) and show each person only
their own transactions.

:class:`ExportsAuthManager` is Airflow's SimpleAuthManager with that rule
(``AIRFLOW__CORE__AUTH_MANAGER=export_tx.api.auth.ExportsAuthManager``). With another auth manager
(FAB, Keycloak) give the platform team the export DAGs and everyone else the "Exports" custom view
instead: :func:`may_use_exports` asks the auth manager for that resource.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import cache
from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

from export_tx.config import is_product_dag

#: The resource the /exports API and the Exports page authorise on.
EXPORTS_RESOURCE = "Exports"
#: SimpleAuthManager's roles, lowest first.
ROLES = ("VIEWER", "USER", "OP", "ADMIN")
PLATFORM_ROLES = {"OP", "ADMIN"}

log = logging.getLogger(__name__)


@cache
def _all_admins() -> bool:
    """SimpleAuthManager's "everyone is an admin" mode. Read once per process: Airflow's settings
    do not change under a running api-server, and asking its configuration costs more than the
    rest of the authorisation (it was called twice per request)."""
    from airflow.configuration import conf

    return conf.getboolean("core", "simple_auth_manager_all_admins", fallback=False)


#: How often :func:`token_revoked` lets Airflow's own check run, which also deletes the revoked
#: tokens that have expired (Airflow does that at most once per token lifetime anyway).
AIRFLOW_REVOCATION_CHECK_SECONDS = 60.0
_revocation = {"airflow_checked_at": float("-inf")}
_revocation_lock = threading.Lock()


@cache
def _revoked_query() -> Any:
    import sqlalchemy as sa
    from airflow.models.revoked_token import RevokedToken

    return sa.select(RevokedToken.jti).where(RevokedToken.jti == sa.bindparam("jti")).limit(1)


def token_revoked(jti: str) -> bool:
    """Whether the token ``jti`` was revoked (its holder logged out): a row in Airflow's
    ``revoked_token`` table, as ``RevokedToken.is_revoked`` asks, but read with one statement on
    Airflow's engine. ``is_revoked`` opens an ORM session and commits it: 280 µs of CPU against
    57 µs on a quiet machine here, for every request that carries a token. Airflow's own check still runs once every
    :data:`AIRFLOW_REVOCATION_CHECK_SECONDS`, for its clean-up of expired entries."""
    from airflow import settings
    from airflow.models.revoked_token import RevokedToken

    now = time.monotonic()
    with _revocation_lock:
        airflow_turn = now - _revocation["airflow_checked_at"] >= AIRFLOW_REVOCATION_CHECK_SECONDS
        if airflow_turn:
            _revocation["airflow_checked_at"] = now
    if airflow_turn or settings.engine is None:
        return bool(RevokedToken.is_revoked(jti))
    with settings.engine.connect() as conn:
        return conn.execute(_revoked_query(), {"jti": jti}).first() is not None


def _role(user: Any) -> str | None:
    if _all_admins():
        return "ADMIN"  # every signed-in person is an admin in that mode
    role = getattr(user, "role", None)
    return None if role is None else str(getattr(role, "value", role)).upper()


def decided_by_role(user: Any) -> bool:
    """Whether :func:`may_use_exports` decides from the user's role alone (SimpleAuthManager,
    ours or Airflow's): then it asks nothing of the auth manager and does no I/O."""
    return hasattr(user, "role") or _role(user) is not None


def may_use_exports(user: Any, method: str) -> bool:
    """Reading one's own exports needs a viewer; requesting, cancelling and re-sending a user."""
    role = _role(user)
    if role is not None or hasattr(user, "role"):  # SimpleAuthManager (ours or Airflow's): its roles decide
        needed = "VIEWER" if method == "GET" else "USER"
        return role in ROLES and ROLES.index(role) >= ROLES.index(needed)
    from airflow.api_fastapi.app import get_auth_manager

    manager: Any = get_auth_manager()
    return bool(manager.is_authorized_custom_view(method=method, resource_name=EXPORTS_RESOURCE, user=user))


class ExportsAuthManager(SimpleAuthManager):
    """SimpleAuthManager where the product's DAGs are the platform team's (``op``, ``admin``):
    requesters never see or touch other people's export runs through Airflow's REST API or UI."""

    async def get_user_from_token(self, token: str) -> Any:
        """Airflow's own check of a bearer token or session cookie, every step of it — signature,
        expiry, audience, then whether the token was revoked (logged out) — with that last step,
        a query of the metadata database, run in a worker thread. Airflow runs it on the
        api-server's event loop, where every request of every client waits while one request
        waits for the database (on SQLite, for a writer's lock)."""
        import anyio.to_thread
        from jwt import InvalidTokenError

        try:
            payload: dict[str, Any] = await self._get_token_validator().avalidated_claims(token)
        except InvalidTokenError as e:
            log.error("JWT token is not valid: %s", e)
            raise
        jti = payload.get("jti")
        if jti and await anyio.to_thread.run_sync(token_revoked, jti):
            raise InvalidTokenError("Token has been revoked")
        try:
            return self.deserialize_user(payload)
        except (ValueError, KeyError) as e:
            log.error("Couldn't deserialize user from token, JWT token is not valid: %s", e)
            raise InvalidTokenError(str(e)) from e

    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        dag_id = getattr(details, "id", None)
        if dag_id and is_product_dag(dag_id) and _role(user) not in PLATFORM_ROLES:
            return False
        return bool(super().is_authorized_dag(method=method, user=user, access_entity=access_entity,
                                              details=details))  # fmt: skip

    def is_authorized_custom_view(self, *, method: Any, resource_name: str, user: Any) -> bool:
        if resource_name == EXPORTS_RESOURCE:
            return may_use_exports(user, str(method))
        return bool(super().is_authorized_custom_view(method=method, resource_name=resource_name, user=user))
