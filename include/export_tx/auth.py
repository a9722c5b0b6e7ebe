"""Who may do what: one door per person.

Airflow's permissions are per DAG, and a transaction is a run of ``export_transaction``: whoever
may see or change that DAG's runs sees every requester's parameters and e-mail addresses and can
stop anyone's export. So the product's own DAGs (the export, its e-mail, bulk exports,
housekeeping) belong to the platform team alone — Airflow's ``op`` and ``admin`` roles — and
everyone else goes through ``/exports`` and its Exports page, which authorise on a resource of
their own ("Exports", a custom view in Airflow's auth-manager terms) and show each person only
their own transactions.

:class:`ExportsAuthManager` is Airflow's SimpleAuthManager with that rule
(``AIRFLOW__CORE__AUTH_MANAGER=export_tx.auth.ExportsAuthManager``). With another auth manager
(FAB, Keycloak) give the platform team the export DAGs and everyone else the "Exports" custom view
instead: :func:`may_use_exports` asks the auth manager for that resource.
"""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

from export_tx.settings import is_product_dag

#: The resource the /exports API and the Exports page authorise on.
EXPORTS_RESOURCE = "Exports"
#: SimpleAuthManager's roles, lowest first.
ROLES = ("VIEWER", "USER", "OP", "ADMIN")
PLATFORM_ROLES = {"OP", "ADMIN"}


def _role(user: Any) -> str | None:
    from airflow.configuration import conf

    if conf.getboolean("core", "simple_auth_manager_all_admins", fallback=False):
        return "ADMIN"  # every signed-in person is an admin in that mode
    role = getattr(user, "role", None)
    return None if role is None else str(getattr(role, "value", role)).upper()


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
