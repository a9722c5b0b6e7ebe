"""The run conf contract (design doc): parsed and validated once, into a typed request."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from export_tx import config, formats
from export_tx.catalog import registry
from export_tx.definition import RETENTION_DAYS_LIMIT
from export_tx.errors import FieldError, RequestInvalid, shown

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
#: Recipients of one notification, and the longest address (RFC 5321's path limit less <>).
MAX_RECIPIENTS = 10
MAX_ADDRESS_CHARS = 254
#: A requester's own name for an export: one line of text.
LABEL_MAX_CHARS = 100


@dataclass(frozen=True)
class ExportRequest:
    definition: str
    params: dict[str, Any]
    #: None: automatic (one batch per batch slot; see planning.choose_batch_size).
    batch_size: int | None = config.BATCH_SIZE_DEFAULT
    notify_email: str | None = None
    notify_delay_minutes: float = config.NOTIFY_DELAY_DEFAULT
    #: Days the result is kept; None: the definition's own retention.
    retention_days: int | None = None
    label: str | None = None
    #: The file format (:data:`export_tx.formats.NAMES`).
    format: str = formats.DEFAULT
    #: A URL to POST the signed ``export.succeeded``/``export.failed`` event to
    #: (:mod:`export_tx.notifications.webhook`); its host must be on the deployment's allow-list.
    notify_webhook: str | None = None

    def as_conf(self) -> dict[str, Any]:
        return asdict(self)


#: The run conf's fields: the request's, named once (the DAG's Params, the API's model and the
#: header's columns carry the same names; tests hold them to these).
KNOWN_FIELDS = tuple(f.name for f in fields(ExportRequest))


def fingerprint(definition: str, params: dict[str, Any] | None, format: str | None) -> str:
    """What makes two requests the same export: the definition, the params and the format. A
    null param is the same as one left out (both bind NULL); the other fields (e-mail, label,
    batch size, retention) change how the export is delivered, not what it holds."""
    import hashlib
    import json

    given = {k: v for k, v in (params or {}).items() if v is not None}
    text = json.dumps([definition, given, format or formats.DEFAULT], sort_keys=True, default=str,
                      separators=(",", ":"))  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()


def salvaged_fields(conf: dict[str, Any]) -> dict[str, Any]:
    """Best-effort header fields from an invalid conf, so the refusal is recorded somewhere."""
    batch_size = conf.get("batch_size")
    delay = conf.get("notify_delay_minutes")
    email = conf.get("notify_email")
    hook = conf.get("notify_webhook")
    return {
        "definition": str(conf.get("definition"))[:100],
        "params": conf.get("params") if isinstance(conf.get("params"), dict) else {},
        "batch_size": batch_size if isinstance(batch_size, int) and not isinstance(batch_size, bool) else 0,
        # Still tell the requester that (and why) the export was refused.
        "notify_email": email
        if isinstance(email, str) and all(EMAIL.match(a.strip()) for a in email.split(","))
        else None,
        "notify_delay_minutes": delay
        if isinstance(delay, int) and not isinstance(delay, bool)
        else config.NOTIFY_DELAY_DEFAULT,
        # The same for a webhook, only if its URL passes every check (never POST to a refused one).
        "notify_webhook": hook if isinstance(hook, str) and hook and _webhook_problem(hook) is None else None,
    }


def _int_field(
    conf: dict[str, Any], name: str, default: int | None, low: int, high: int, errors: list[FieldError]
) -> int | None:
    value = conf.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append(FieldError(name, f"must be an integer between {low:,} and {high:,}"))
        return default
    if not low <= value <= high:
        errors.append(FieldError(name, f"{value:,} is out of range; allowed: {low:,} to {high:,}"))
    return value


def _number_field(
    conf: dict[str, Any], name: str, default: float, low: float, high: float, errors: list[FieldError]
) -> float:
    """Minutes may be fractional (0.5 = 30 s)."""
    value = conf.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        errors.append(FieldError(name, f"must be a number between {low:g} and {high:g}"))
        return default
    if not low <= value <= high:
        errors.append(FieldError(name, f"{value:g} is out of range; allowed: {low:g} to {high:g}"))
    return value


def _email_field(value: Any, errors: list[FieldError]) -> str | None:
    """One address or several, comma-separated: at most 10, each a valid address of at most 254
    characters. Errors never quote more than a few characters of what they refuse."""
    if value in ("", None):
        return None
    rule = f"at most {MAX_RECIPIENTS} addresses, comma-separated, each of at most {MAX_ADDRESS_CHARS} characters"
    if not isinstance(value, str):
        errors.append(FieldError("notify_email", f"must be text: {rule}"))
        return None
    if len(value) > MAX_RECIPIENTS * (MAX_ADDRESS_CHARS + 2):
        errors.append(FieldError("notify_email", f"too long; allowed: {rule}"))
        return None
    addresses = [a.strip() for a in value.split(",")]
    if len(addresses) > MAX_RECIPIENTS:
        errors.append(FieldError("notify_email", f"{len(addresses):,} addresses; allowed: {rule}"))
        return None
    bad = [a for a in addresses if len(a) > MAX_ADDRESS_CHARS or not EMAIL.match(a)]
    if bad:
        errors.append(FieldError("notify_email", f"{shown(bad[0])} is not an email address; allowed: {rule}"))
        return None
    return ", ".join(addresses)


def _label_field(value: Any, errors: list[FieldError]) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    rule = f"one line of at most {LABEL_MAX_CHARS} characters"
    if not isinstance(value, str) or len(value) > LABEL_MAX_CHARS or not value.isprintable():
        errors.append(FieldError("label", f"must be {rule}"))
        return None
    return value.strip()


def _webhook_problem(value: Any) -> str | None:
    """Why ``value`` cannot be this deployment's webhook (None: it can). Nothing is resolved."""
    from export_tx.notifications import webhook

    if not webhook.enabled():
        return webhook.NOT_ENABLED
    return webhook.url_problem(value)


def _webhook_field(value: Any, errors: list[FieldError]) -> str | None:
    """One http(s) URL on the deployment's allow-list. The refusal never quotes the URL (it may
    hold the receiver's token) and says what is allowed."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        value = value.strip()
    problem = _webhook_problem(value)
    if problem is not None:
        errors.append(FieldError("notify_webhook", problem))
        return None
    assert isinstance(value, str)
    return value


def _format_field(value: Any, errors: list[FieldError]) -> str:
    if value is None:
        return formats.DEFAULT
    if not isinstance(value, str) or value not in formats.FORMATS:
        given = shown(value, 12) if isinstance(value, str) else "a non-text value"
        errors.append(FieldError("format", f"{given} is not a file format; allowed: {', '.join(formats.NAMES)}"))
        return formats.DEFAULT
    return value


def parse_batch_size(value: Any) -> int | None:
    """A batch size given on its own (a preview's query string: text), checked as a request's
    (None or empty: automatic)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip().replace(",", "").replace("_", ""))
        except ValueError:
            pass
    errors: list[FieldError] = []
    size = _int_field({"batch_size": value}, "batch_size", config.BATCH_SIZE_DEFAULT, config.BATCH_SIZE_MIN,
                      config.BATCH_SIZE_MAX, errors)  # fmt: skip
    if errors:
        raise RequestInvalid(errors)
    return size


def parse_request(conf: dict[str, Any] | None) -> ExportRequest:
    """Validate a run conf; raise :class:`RequestInvalid` naming every bad field."""
    conf = dict(conf or {})
    errors: list[FieldError] = []
    for unknown in sorted(str(k) for k in set(conf) - set(KNOWN_FIELDS)):
        errors.append(FieldError(shown(unknown).strip("'"), f"unknown field; allowed: {', '.join(KNOWN_FIELDS)}"))

    name = conf.get("definition")
    known = registry.names()
    definition = None
    if not isinstance(name, str) or name not in known:
        given = "missing" if name is None else shown(name)
        errors.append(FieldError("definition", f"{given} is not a registered definition; allowed: {', '.join(known)}"))
    else:
        definition = registry.get(name)

    batch_size = _int_field(
        conf, "batch_size", config.BATCH_SIZE_DEFAULT, config.BATCH_SIZE_MIN, config.BATCH_SIZE_MAX, errors
    )
    delay = _number_field(conf, "notify_delay_minutes", config.NOTIFY_DELAY_DEFAULT, 0, config.NOTIFY_DELAY_MAX,
                          errors)  # fmt: skip
    email = _email_field(conf.get("notify_email"), errors)
    label = _label_field(conf.get("label"), errors)
    file_format = _format_field(conf.get("format"), errors)
    hook = _webhook_field(conf.get("notify_webhook"), errors)
    retention = conf.get("retention_days")
    if retention is not None:
        longest = definition.longest_retention() if definition is not None else RETENTION_DAYS_LIMIT
        retention = _int_field(conf, "retention_days", 0, 1, longest, errors)

    params: dict[str, Any] = {}
    if definition is not None:
        try:
            params = definition.validate_params(conf.get("params"))
        except RequestInvalid as exc:
            errors.extend(exc.errors)
    if errors:
        raise RequestInvalid(errors)
    assert isinstance(name, str)
    return ExportRequest(
        definition=name,
        params=params,
        batch_size=batch_size,
        notify_email=email,
        notify_delay_minutes=delay,
        retention_days=retention,
        label=label,
        format=file_format,
        notify_webhook=hook,
    )
