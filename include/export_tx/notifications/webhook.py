"""The webhook channel, as payment platforms deliver events: a signed JSON POST to the requester's
URL when the export succeeded (from the ``export_notification`` run, retried by Airflow) or failed
(at once, from the export's own run).

The event::

    {"id": "evt_…", "type": "export.succeeded" | "export.failed", "created": <unix seconds>,
     "data": {"transaction": <the status record of GET /exports/v1/transactions/{id}>}}

``id`` is the same for every attempt of one event (receivers drop repeats by it); ``created`` is
when the export ended. Headers: ``Export-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
"<t>.<raw body>")>``, ``Export-Event-Id``, ``Content-Type: application/json``, ``User-Agent:
export-tx-webhook/1``. The secret is the deployment's (the password of the Airflow connection
``export_webhook``, else ``EXPORT_TX_WEBHOOK_SECRET``); without one, webhooks are not offered.

Who may be called is the deployment's choice, never the requester's: the URL's host must be on
``EXPORT_TX_WEBHOOK_ALLOWED_HOSTS`` (checked when the request is made and again before each POST,
as the list may have shrunk since), https unless ``EXPORT_TX_WEBHOOK_ALLOW_HTTP``, and redirects
are never followed — otherwise a requester could make the workers POST to internal addresses.
Nothing is resolved when the request is checked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from export_tx import config
from export_tx.states import WebhookState

if TYPE_CHECKING:
    from export_tx.store import Header, HeaderStore

log = logging.getLogger(__name__)

SUCCEEDED = "export.succeeded"
FAILED = "export.failed"
SIGNATURE_HEADER = "Export-Signature"
EVENT_ID_HEADER = "Export-Event-Id"
USER_AGENT = "export-tx-webhook/1"
NOT_ENABLED = "webhooks are not enabled in this deployment"

#: A host name as the allow-list holds it: letters, digits, hyphens and dots (no percent-encoding,
#: no IDN tricks); IPv6 literals come out of urlsplit without their brackets.
_HOST = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$|^[0-9a-f:.]+$")


# -- the deployment's secret and allow-list --------------------------------------------------------


def secret() -> str | None:
    """The signing secret: the ``export_webhook`` connection's password, else the environment's."""
    try:
        from airflow.sdk import BaseHook

        password = BaseHook.get_connection(config.WEBHOOK_CONN_ID).password
    except Exception:  # AirflowNotFoundException and friends: no connection, fall back
        password = None
    return password or config.webhook_secret_env()


def enabled() -> bool:
    return bool(secret())


def host_allowed(host: str, patterns: tuple[str, ...]) -> bool:
    """``host`` equals an entry, or ends with a ``*.example.com`` pattern's ``.example.com``
    (at least one label more: the pattern does not admit ``example.com`` itself)."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def rule() -> str:
    """What a request's ``notify_webhook`` may be, as refusals say it."""
    hosts = config.webhook_allowed_hosts()
    listed = ", ".join(hosts[:10]) + (f" (and {len(hosts) - 10:,} more)" if len(hosts) > 10 else "")
    schemes = "an http or https URL" if config.webhook_allow_http() else "an https URL"
    return (
        f"{schemes} of at most {config.WEBHOOK_URL_MAX_CHARS:,} characters, without a user or password, "
        f"to a host this deployment allows ({listed or 'none'})"
    )


def url_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a webhook URL here (None: it can). The message never quotes the
    value: a refused URL may carry a token, and an error is shown and logged."""
    allowed = rule()
    if not isinstance(value, str):
        return f"must be text: {allowed}"
    if len(value) > config.WEBHOOK_URL_MAX_CHARS:
        return f"too long; allowed: {allowed}"
    # Whitespace, control characters and backslashes are where URL parsers disagree (one reads a
    # host where another reads a path): refused rather than interpreted.
    if not value.isprintable() or any(c.isspace() or c == "\\" for c in value):
        return f"is not a URL; allowed: {allowed}"
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        _ = parts.port  # a port that is not a number raises here
    except ValueError:
        return f"is not a URL; allowed: {allowed}"
    if parts.scheme not in ("http", "https") or not parts.netloc or not host:
        return f"is not a URL; allowed: {allowed}"
    if "@" in parts.netloc:
        return f"must not carry a user or password; allowed: {allowed}"
    if not _HOST.match(host):
        return f"is not a URL; allowed: {allowed}"
    if parts.scheme == "http" and not config.webhook_allow_http():
        return f"plain http is not allowed in this deployment; allowed: {allowed}"
    if not host_allowed(host, config.webhook_allowed_hosts()):
        return f"its host is not one this deployment allows; allowed: {allowed}"
    return None


# -- the signature -----------------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``v1`` signature: hex HMAC-SHA256 of ``"<timestamp>.<raw body>"`` with the secret."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={sign(secret, t, body)}"


def verify(secret: str, header: str, body: bytes | str, tolerance_s: int = 300, now: float | None = None) -> bool:
    """A receiver's check (copy it): the ``Export-Signature`` header signs exactly this raw body
    with this secret, at most ``tolerance_s`` seconds ago (an old one is a replay). Several ``v1``
    entries are accepted, so a secret can be rotated."""
    raw = body.encode() if isinstance(body, str) else body
    timestamp: int | None = None
    signatures: list[str] = []
    for item in (header or "").split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, raw)
    return any(hmac.compare_digest(expected, s) for s in signatures)


# -- the event ---------------------------------------------------------------------------------------


def event_id(tx_id: str, event_type: str) -> str:
    """The same for every attempt of one event of one transaction, different for any other."""
    return "evt_" + hashlib.sha256(f"{tx_id}\n{event_type}".encode()).hexdigest()[:32]


def event_body(header: Header, event_type: str) -> bytes:
    """The event as sent: the transaction as its status record shows it (links absolute: the
    receiver is not on this server), as compact JSON."""
    from export_tx.api.views import transaction

    base = config.get_settings().public_base_url
    record = transaction(header, admin=False).model_dump(mode="json")
    record["links"] = {k: base + v if v.startswith("/") else v for k, v in record["links"].items()}
    if record.get("result"):
        record["result"]["uri"] = base + record["result"]["uri"]
    ended = header.finished_at or header.updated_at
    event = {
        "id": event_id(header.id, event_type),
        "type": event_type,
        "created": int(ended.timestamp()),
        "data": {"transaction": record},
    }
    return json.dumps(event, separators=(",", ":")).encode()


# -- delivery ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """How one delivery went: delivered, or not and whether trying again may help."""

    delivered: bool
    transient: bool
    #: What the log says: ``HTTP 503``, ``ConnectTimeout``, …
    detail: str
    status: int | None = None
    error: str | None = None


def post(url: str, body: bytes, secret: str, event: str, timeout: float | None = None) -> Attempt:
    """One signed POST. Only what may go through next time is transient: a lost connection, a
    timeout, 429 and 5xx. Any other answer is final — a redirect too: it is not followed, since
    it could point anywhere."""
    import httpx

    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_ID_HEADER: event,
        SIGNATURE_HEADER: signature_header(secret, body),
    }
    try:
        # trust_env=False: no proxy settings or .netrc credentials of the worker's environment
        # are applied to a requester's URL.
        with httpx.Client(timeout=timeout or config.webhook_timeout_seconds(), follow_redirects=False,
                          trust_env=False) as client:  # fmt: skip
            response = client.post(url, content=body, headers=headers)
    except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        return Attempt(False, True, type(exc).__name__, error=type(exc).__name__)
    except Exception as exc:  # an invalid URL, a protocol the client refuses: no retry helps
        return Attempt(False, False, type(exc).__name__, error=type(exc).__name__)
    code = response.status_code
    if 200 <= code < 300:
        return Attempt(True, False, f"HTTP {code}", status=code)
    if 300 <= code < 400:
        return Attempt(False, False, f"HTTP {code}, a redirect (not followed)", status=code)
    return Attempt(False, code == 429 or code >= 500, f"HTTP {code}", status=code)


def _host(url: str | None) -> str:
    # Logs name the host only: a webhook URL's path or query often holds the receiver's own token.
    try:
        return urlsplit(url or "").hostname or "?"
    except ValueError:
        return "?"


def _give_up(store: HeaderStore, header: Header, event_type: str, reason: str) -> Attempt:
    store.update(header.id, webhook_state=WebhookState.FAILED)
    store.add_event(header.id, "notification", f"webhook {event_type} not sent: {reason}",
                    {"webhook": WebhookState.FAILED.value, "event": event_type})  # fmt: skip
    return Attempt(False, False, reason)


def attempt(store: HeaderStore, header: Header, event_type: str, *, last: bool) -> Attempt:
    """POST the event once and record it on the header (attempts, state) and in the processing
    log. ``last``: no retry follows, so a transient failure is recorded ``failed`` too."""
    from export_tx.store import headers, utcnow

    key = secret()
    if not key:
        return _give_up(store, header, event_type, "no signing secret is configured")
    problem = url_problem(header.webhook_url)
    if problem is not None:  # the allow-list changed since the request was accepted
        return _give_up(store, header, event_type, f"the URL is no longer allowed ({problem.split(';')[0]})")
    assert header.webhook_url is not None
    result = post(header.webhook_url, event_body(header, event_type), key, event_id(header.id, event_type))
    if result.delivered:
        state = WebhookState.DELIVERED
    elif result.transient and not last:
        state = WebhookState.PENDING
    else:
        state = WebhookState.FAILED
    values: dict[str, Any] = {"webhook_state": state, "webhook_attempts": headers.c.webhook_attempts + 1}
    if result.delivered:
        values["webhook_delivered_at"] = utcnow()
    store.update(header.id, **values)
    number = store.get(header.id).webhook_attempts
    outcome = {
        WebhookState.DELIVERED: "delivered",
        WebhookState.PENDING: "not delivered, will retry",
        WebhookState.FAILED: "not delivered, given up" if result.transient else "not delivered (final answer)",
    }[state]
    data: dict[str, Any] = {"webhook": state.value, "event": event_type, "attempt": number}
    data.update({"status": result.status} if result.status is not None else {"error": result.error})
    store.add_event(header.id, "notification",
                    f"webhook {event_type} to {_host(header.webhook_url)}, attempt {number}: {result.detail}; "
                    f"{outcome}", data)  # fmt: skip
    return result


def deliver_failure_event(store: HeaderStore, header: Header) -> None:
    """Tell a failed export's webhook at once, from the export's own run: a few quick attempts
    (the run must end soon), transient failures only retried. Never raises."""
    if not header.webhook_url or header.webhook_state != WebhookState.PENDING:
        return
    delay = config.webhook_retry_delay_seconds()
    try:
        for n in range(config.WEBHOOK_INLINE_ATTEMPTS):
            last = n == config.WEBHOOK_INLINE_ATTEMPTS - 1
            result = attempt(store, store.get(header.id), FAILED, last=last)
            if result.delivered or not result.transient or last:
                return
            time.sleep(min(delay * 2**n, config.WEBHOOK_INLINE_DELAY_MAX))
    except Exception as exc:
        log.exception("failure webhook not sent")
        try:
            _give_up(store, header, FAILED, f"an error ({type(exc).__name__})")
        except Exception:
            log.exception("failure webhook's state not recorded")
