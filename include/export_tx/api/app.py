"""The ``/exports`` API: request, list, status, logs, cancel and download export transactions.

Every route needs an authenticated Airflow user (bearer token or UI session cookie) and
Airflow's permission on the ``export_transaction`` DAG's runs: reading needs GET (viewer),
requesting and cancelling need POST/PUT (user). Non-admins only ever see their own
transactions — anyone else's answer 404, exactly like a transaction that does not exist.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hashlib
import html
import json
import logging
import secrets
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from time import monotonic
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from sqlalchemy import exc as sa_exc
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from export_tx import config, formats, storage, transfer
from export_tx.api import airflow_side, batching, downloads, views
from export_tx.api.auth import decided_by_role, may_use_exports
from export_tx.api.views import BatchPage, ErrorBody, LogPage, Transaction, TransactionList
from export_tx.catalog import registry
from export_tx.config import BATCH_SIZE_MAX, BATCH_SIZE_MIN
from export_tx.control import NotResumable, record_download
from export_tx.control import cancel as cancel_transaction
from export_tx.control import resume as resume_transaction
from export_tx.definition import RETENTION_DAYS_LIMIT
from export_tx.errors import FieldError, RequestInvalid, shown
from export_tx.pipeline import PREVIEW_ROWS_MAX
from export_tx.request import (
    LABEL_MAX_CHARS,
    MAX_ADDRESS_CHARS,
    MAX_RECIPIENTS,
    fingerprint,
    parse_batch_size,
    parse_request,
)
from export_tx.states import State
from export_tx.store import Header as TxHeader
from export_tx.store import HeaderStore, NewHeader, utcnow

try:  # Inside the api-server (pinned Airflow): its own authentication.
    from airflow.api_fastapi.core_api.security import GetUserDep
except ImportError as exc:  # pragma: no cover - the plugin only ever loads inside Airflow
    raise ImportError("the /exports API runs inside the Airflow api-server") from exc

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
MAX_OFFSET = 1_000_000
MAX_EVENT_ID = 2**63 - 1
MAX_TOKEN_CHARS = 250
# Routes of the app; the plugin mounts it at /exports, so clients see /exports/v1/… (views.PREFIX).
V1 = "/v1"
STATIC = Path(__file__).with_name("static")

app = FastAPI(
    title="Export transactions",
    version="1",
    description="Asynchronous export transactions on Airflow: request → token → poll or e-mail → download.",
)

#: The largest request body accepted (a request is a few hundred bytes; 64 KiB leaves room).
MAX_BODY_BYTES = 64 * 1024
_MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


class _Refused(HTTPException):
    """Refused before a route ran (an HTTPException, so FastAPI passes it on from body parsing)."""

    def __init__(self, code: int, body: dict[str, Any]) -> None:
        super().__init__(code, body["detail"])
        self.code, self.body = code, body


class Guard:
    """ASGI middleware in front of every route: bounded request bodies (413) and, for mutations
    authenticated by the UI's session cookie alone, a same-origin check (403) — a page on another
    site cannot make a signed-in browser cancel an export. It also freezes the api-server's
    long-lived heap (:func:`freeze_long_lived_heap`), starts its run maker
    (:class:`airflow_side.RunMaker`) and sets its interpreter's switch interval
    (``config.API_SWITCH_INTERVAL_MS_DEFAULT``): a mounted app has no startup hook of its own."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        if not _run_maker_started.is_set():  # this process's first request: it starts its imports
            _run_maker_started.set()
            airflow_side.maker.start()
            interval = config.api_switch_interval_seconds()
            if interval is not None:
                sys.setswitchinterval(interval)
        freeze_long_lived_heap()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            _check_origin(scope, headers)
            declared = headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
                raise _Refused(413, _too_large())
        except _Refused as refused:
            await _answer(send, refused)
            return
        seen = 0

        async def bounded_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY_BYTES:
                    raise _Refused(413, _too_large())
            return message

        try:
            await self.inner(scope, bounded_receive, send)
        except _Refused as refused:  # a chunked body that grew past the limit
            await _answer(send, refused)


#: Full collections whose survivors are frozen: those of the api-server's start and warm-up (its
#: first runs created, the execution API's first calls). Bounded, so nothing made later is kept
#: out of the collector's reach for good.
HEAP_FREEZES = 4
_heap = {"freezes": 0, "full_collections": -1}
_run_maker_started = threading.Event()


def freeze_long_lived_heap() -> None:
    """At an api-server process's first ``/exports`` request, and after each of its next full
    collections up to :data:`HEAP_FREEZES` in all: move every object alive by then out of the
    garbage collector's reach (``gc.freeze``, as Airflow's scheduler does before it forks). A full
    collection walks every tracked object while it holds the interpreter lock: over Airflow's
    ~1M long-lived objects it stopped the whole api-server for 0.2-0.55 s at a time here, every
    request waiting. After the warm-up, full collections walk only what was made since."""
    if _heap["freezes"] >= HEAP_FREEZES:
        return
    full = gc.get_stats()[2]["collections"]
    if full != _heap["full_collections"]:
        _heap["full_collections"] = full
        _heap["freezes"] += 1
        gc.freeze()


def _too_large() -> dict[str, Any]:
    message = f"larger than {MAX_BODY_BYTES:,} bytes"
    return {"detail": f"the request body is {message}", "errors": [{"field": "body", "message": message}]}


def _check_origin(scope: Any, headers: dict[str, str]) -> None:
    if scope.get("method") not in _MUTATING or "authorization" in headers or "cookie" not in headers:
        return
    from urllib.parse import urlsplit

    from export_tx.config import get_settings

    origin = headers.get("origin") or headers.get("referer")
    # The address the request came to, or the public one (behind a proxy that rewrites Host).
    allowed = {headers.get("host", ""), urlsplit(get_settings().public_base_url).netloc}
    if not origin or urlsplit(origin).netloc not in allowed:
        message = "a request signed in by the UI's cookie must come from the Airflow UI itself (Origin header)"
        raise _Refused(403, {"detail": message, "errors": [{"field": "Origin", "message": message}]})


async def _answer(send: Any, refused: _Refused) -> None:
    body = json.dumps(refused.body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": refused.code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


app.add_middleware(Guard)


@app.exception_handler(_Refused)
async def _refused(request: Request, exc: _Refused) -> JSONResponse:
    return JSONResponse(exc.body, status_code=exc.code)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Every refusal has the same shape. FastAPI's own 400 for a body it cannot even decode (not
    UTF-8, say) names the body like any malformed request."""
    if exc.status_code == status.HTTP_400_BAD_REQUEST and exc.detail == "There was an error parsing the body":
        message = "not valid JSON"
        body: dict[str, Any] = {"detail": f"the request body is {message}",
                                "errors": [{"field": "body", "message": message}]}  # fmt: skip
        return JSONResponse(body, status_code=exc.status_code)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


@app.exception_handler(sa_exc.OperationalError)
@app.exception_handler(sa_exc.InterfaceError)
async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The header store is down or locked for long: try again, not an internal error."""
    detail = "the transaction store is unavailable for a moment; try again"
    return JSONResponse({"detail": detail, "errors": []}, status_code=503,
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})  # fmt: skip


#: Per event loop (the api-server has one; tests start several) and kind.
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, anyio.CapacityLimiter]] = (
    weakref.WeakKeyDictionary()
)


def _limiter(kind: str) -> anyio.CapacityLimiter:
    total = config.api_threads()
    pools = _limiters.setdefault(asyncio.get_running_loop(), {})
    limiter = pools.get(kind)
    if limiter is None:
        limiter = pools[kind] = anyio.CapacityLimiter(total)
    elif limiter.total_tokens != total:
        limiter.total_tokens = total
    return limiter


R = TypeVar("R")


def threaded(kind: str) -> Callable[[Callable[..., R]], Callable[..., Awaitable[R]]]:
    """A route that does I/O (the store, Airflow's database) runs in a worker thread, as
    FastAPI runs any ``def`` route, but in this app's own pool for its kind ("read" or "write",
    :func:`_limiter`)."""

    def decorate(fn: Callable[..., R]) -> Callable[..., Awaitable[R]]:
        @functools.wraps(fn)
        async def route(*args: Any, **kwargs: Any) -> R:
            call = functools.partial(fn, *args, **kwargs)
            return await anyio.to_thread.run_sync(call, limiter=_limiter(kind))

        return route

    return decorate


def _requires(method: str) -> Any:
    """Authorisation on the product's own resource (export_tx.api.auth): reading one's own exports
    needs a viewer, requesting, cancelling and re-sending a user. Never Airflow's permissions on
    the export DAG's runs: those are the platform team's.

    Decided on the event loop when the user's role decides (no I/O); another auth manager is
    asked from a worker thread, as it may query a database."""

    async def check(user: GetUserDep) -> None:
        if decided_by_role(user):
            allowed = may_use_exports(user, method)
        else:
            allowed = await run_in_threadpool(may_use_exports, user, method)
        if not allowed:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"{user.get_name()} may not {_VERBS[method]} exports")

    return Depends(check)


_VERBS = {"GET": "read", "POST": "request", "PUT": "change"}
CanRead = _requires("GET")
CanRequest = _requires("POST")
CanCancel = _requires("PUT")

#: Every route may answer these, all with the same body: ``detail`` and the ``errors`` naming fields.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "the request body is not valid JSON"},
    401: {"model": ErrorBody, "description": "not authenticated"},
    403: {"model": ErrorBody, "description": "no permission on exports, or a cookie-signed mutation from another site"},
    413: {"model": ErrorBody, "description": f"the request body is larger than {MAX_BODY_BYTES:,} bytes"},
    422: {"model": ErrorBody, "description": "a field or parameter is not allowed; errors name each one"},
    503: {"model": ErrorBody, "description": "the transaction store is unavailable for a moment; see Retry-After"},
}


#: How long the store URL of an Airflow connection (``EXPORT_TX_STORE_CONN_ID``) is reused
#: before it is looked up again (a secrets backend or the metadata database: not per request).
STORE_CONNECTION_TTL_SECONDS = 60.0
_stores: dict[tuple[str | None, str], tuple[float, HeaderStore]] = {}


async def get_store() -> HeaderStore:
    """The header store, on the event loop when it is known already (the settings are read from
    the environment each time: no I/O); the first time, and when an Airflow connection names it
    and was last looked up a while ago, from a worker thread."""
    cfg = config.get_settings()
    key = (cfg.store_conn_id, cfg.store_url)
    cached = _stores.get(key)
    if cached is not None and (not cfg.store_conn_id or monotonic() - cached[0] < STORE_CONNECTION_TTL_SECONDS):
        return cached[1]
    store = await run_in_threadpool(HeaderStore.from_settings)
    _stores[key] = (monotonic(), store)
    return store


StoreDep = Annotated[HeaderStore, Depends(get_store)]


def _documented(schema: dict[str, Any]) -> Any:
    """Accept any JSON value here and describe what is allowed in the OpenAPI document: the values
    are checked by the same code the DAG runs (``request.parse_request``), so every door refuses
    the same mistakes with the same message naming the field."""
    return WithJsonSchema(schema)


class TransactionRequest(BaseModel):
    """The run conf of the design doc."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"required": ["definition"]})
    definition: Annotated[
        Any,
        _documented(
            {
                "type": "string",
                "maxLength": 100,
                "description": "a registered definition (GET /exports/v1/definitions lists them)",
            }
        ),
    ] = None
    params: Annotated[
        Any,
        _documented(
            {
                "type": "object",
                "description": "the definition's parameters, as its params_schema in GET /exports/v1/definitions says",
            }
        ),
    ] = None
    batch_size: Annotated[
        Any,
        _documented(
            {
                "type": ["integer", "null"],
                "minimum": config.BATCH_SIZE_MIN,
                "maximum": config.BATCH_SIZE_MAX,
                "default": None,
                "description": "rows per batch; omitted or null: automatic (one batch per batch slot, at least "
                f"{config.BATCH_ROWS_AUTO_MIN:,} rows each)",
            }
        ),
    ] = None
    notify_email: Annotated[
        Any,
        _documented(
            {
                "type": ["string", "null"],
                "maxLength": MAX_RECIPIENTS * (MAX_ADDRESS_CHARS + 2),
                "description": f"at most {MAX_RECIPIENTS} addresses, comma-separated, each of at most "
                f"{MAX_ADDRESS_CHARS} characters: e-mailed when the file is ready",
            }
        ),
    ] = None
    notify_delay_minutes: Annotated[
        Any,
        _documented(
            {
                "type": "number",
                "minimum": 0,
                "maximum": config.NOTIFY_DELAY_MAX,
                "default": config.NOTIFY_DELAY_DEFAULT,
                "description": "minutes to wait before e-mailing; no e-mail if the file was downloaded by then",
            }
        ),
    ] = None
    retention_days: Annotated[
        Any,
        _documented(
            {
                "type": "integer",
                "minimum": 1,
                "maximum": RETENTION_DAYS_LIMIT,
                "description": "days the file is kept; at most the definition's retention_days_max",
            }
        ),
    ] = None
    label: Annotated[
        Any,
        _documented(
            {
                "type": ["string", "null"],
                "maxLength": LABEL_MAX_CHARS,
                "description": "your own name for the export, shown beside its token (one line)",
            }
        ),
    ] = None
    format: Annotated[
        Any,
        _documented(
            {
                "type": "string",
                "enum": list(formats.NAMES),
                "default": formats.DEFAULT,
                "description": "the file's format: parquet (zstd inside); csv (RFC 4180, one header line, binary as "
                "base64); jsonl (JSON Lines, decimals as exact strings, binary as base64); csv.gz and jsonl.gz: "
                "the same, gzip-compressed",
            }
        ),
    ] = None
    notify_webhook: Annotated[
        Any,
        _documented(
            {
                "type": ["string", "null"],
                "maxLength": config.WEBHOOK_URL_MAX_CHARS,
                "description": "a URL to POST a signed JSON event to when the export ends (export.succeeded or "
                "export.failed; the Export-Signature header is t=<unix seconds>,v1=<hex HMAC-SHA256 of "
                '"<t>.<raw body>" with the deployment\'s webhook secret>). https (http only where the deployment '
                "allows it), no user or password, and a host on the deployment's allow-list; redirects are not "
                "followed. Refused when this deployment has no webhook secret",
            }
        ),
    ] = None
    force: Annotated[
        bool,
        Field(
            strict=True,
            description="true: start a new export even if you already have the same one (same definition, "
            "params and format) running or downloadable; otherwise that one is answered (200, with "
            "`duplicate`). Not part of the run conf",
        ),
    ] = False


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    malformed = False
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        if err.get("type") == "json_invalid":
            malformed = True
        field = ".".join(loc) or "body"
        message = (
            "unknown field; allowed: " + ", ".join(TransactionRequest.model_fields)
            if err.get("type") == "extra_forbidden"
            else str(err.get("msg"))
        )
        errors.append({"field": field, "message": message})
    code = status.HTTP_400_BAD_REQUEST if malformed else status.HTTP_422_UNPROCESSABLE_CONTENT
    detail = "the request body is not valid JSON" if malformed else "invalid request"
    return JSONResponse({"detail": detail, "errors": errors}, status_code=code)


def _visible(store: HeaderStore, tx_id: str, user: Any) -> TxHeader:
    if len(tx_id) > MAX_TOKEN_CHARS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such transaction")
    header = store.find(tx_id)
    if header is None or not (airflow_side.is_admin(user) or header.requested_by == user.get_name()):
        # Someone else's transaction is indistinguishable from a missing one.
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no transaction {shown(tx_id)}")
    return header


def _request_hash(conf: dict[str, Any]) -> str:
    if conf.get("format") == formats.DEFAULT:
        # Requests made before the format could be chosen keep their hash (an Idempotency-Key replay).
        conf = {k: v for k, v in conf.items() if k != "format"}
    if conf.get("notify_webhook") is None:
        # Likewise requests made before webhooks existed.
        conf = {k: v for k, v in conf.items() if k != "notify_webhook"}
    return hashlib.sha256(json.dumps(conf, sort_keys=True, default=str).encode()).hexdigest()


def _new_tx_id() -> str:
    return f"exp_{datetime.now(UTC):%Y%m%dT%H%M%S}_{secrets.token_hex(4)}"


def _duplicate(header: TxHeader, user: Any, store: HeaderStore) -> JSONResponse:
    """200 with the requester's transaction of the same export: nothing new was started."""
    record = views.status(store, header, admin=airflow_side.is_admin(user))
    record.duplicate = views.Duplicate(of=header.id, state=header.state.value)
    body = record.model_dump(mode="json")
    return JSONResponse(body, status_code=status.HTTP_200_OK, headers={"Location": body["links"]["self"]})


def _accepted(header: TxHeader, user: Any, replayed: bool = False) -> JSONResponse:
    body = views.transaction(header, admin=airflow_side.is_admin(user)).model_dump(mode="json")
    headers = {"Location": body["links"]["self"], "Retry-After": str(RETRY_AFTER_SECONDS)}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body, status_code=status.HTTP_202_ACCEPTED, headers=headers)


@app.get(f"{V1}/definitions", dependencies=[CanRead], responses=ERRORS, tags=["definitions"])
@threaded("read")
def list_definitions(user: GetUserDep) -> dict[str, list[dict[str, Any]]]:
    """Every registered definition: name, description, parameter schema, limits, and whether it
    can run in this deployment (``unavailable``: why not, e.g. its source's connection is missing)."""
    described = []
    for name in registry.names():
        definition = registry.get(name)
        reason = definition.source.unavailable()
        described.append({**definition.describe(), "available": reason is None, "unavailable": reason})
    return {"definitions": described}


def _query_params(definition: Any, request: Request) -> dict[str, Any]:
    """The definition's parameters from the query string, typed by their JSON schema
    (``?since=2025-01-01&min_id=5``); a value that does not parse stays text for the schema to refuse."""
    from export_tx.definition import RESERVED_PARAMS

    values: dict[str, Any] = {}
    errors: list[FieldError] = []
    for name, raw in request.query_params.multi_items():
        if name in RESERVED_PARAMS:
            continue
        if name in values:
            errors.append(FieldError(f"params.{name}", "given more than once"))
            continue
        values[name] = _typed(raw, definition.params.get(name, {}))
    if errors:
        raise RequestInvalid(errors)
    return values


def _typed(raw: str, spec: dict[str, Any]) -> Any:
    kinds = spec.get("type")
    kinds = set(kinds) if isinstance(kinds, list) else {kinds}
    if raw == "" and "null" in kinds:
        return None
    try:
        if "integer" in kinds:
            return int(raw)
        if "number" in kinds:
            return float(raw)
    except ValueError:
        return raw
    if "boolean" in kinds and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if kinds & {"array", "object"}:
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def _refusal(exc: Exception) -> JSONResponse:
    """A preview that cannot be done: 422 naming the field or column, 503 when the source is away."""
    from export_tx.errors import (
        DataNotExportable,
        DefinitionInvalid,
        ExportError,
        TooManyRows,
        is_transient,
        user_message,
    )

    errors: list[dict[str, str]]
    if isinstance(exc, RequestInvalid | DefinitionInvalid):
        errors = [e.as_dict() for e in exc.errors]
    elif isinstance(exc, DataNotExportable):
        errors = [{"field": f"columns.{exc.column}", "message": str(exc)}]
    elif isinstance(exc, TooManyRows):
        errors = [{"field": "params", "message": str(exc)}]
    elif isinstance(exc, ExportError):
        errors = [{"field": "definition", "message": str(exc)}]
    elif is_transient(exc):
        message = user_message("the preview", exc, retries=False) + "; try again in a moment"
        return JSONResponse({"detail": message, "errors": []}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
    else:
        errors = [{"field": "definition", "message": user_message("the preview", exc, retries=False)}]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse({"detail": detail, "errors": errors}, status_code=422)


@app.get(
    f"{V1}/definitions/{{name}}/preview",
    dependencies=[CanRequest],
    responses={**ERRORS, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    tags=["definitions"],
)
# Not @threaded: a preview queries the source, for seconds maybe; FastAPI's own pool keeps it
# from holding a place that status polls need.
def preview_definition(
    name: str,
    request: Request,
    user: GetUserDep,
    batch_size: Annotated[
        str | None,
        Query(
            max_length=20,
            description=f"rows per batch, {BATCH_SIZE_MIN:,} to {BATCH_SIZE_MAX:,}; default: automatic",
        ),
    ] = None,  # fmt: skip
    rows: Annotated[int, Query(ge=0, le=PREVIEW_ROWS_MAX, description="first rows to show")] = 10,
) -> Any:
    """Try an export before requesting it, writing nothing: the row count, the batch plan, each
    column's source type → file type, and the first rows as the file would hold them. The
    definition's parameters are query parameters (``?status=shipped``)."""
    from export_tx import pipeline

    definition = registry.definitions().get(name)
    if definition is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such definition; GET /exports/v1/definitions lists them")
    try:
        # Checked by the same code as a request's, so the form shows the same message either way.
        size = parse_batch_size(batch_size)
        params = definition.validate_params(_query_params(definition, request))
        return pipeline.preview(definition, params, size, rows)
    except Exception as exc:
        return _refusal(exc)


@app.post(
    f"{V1}/transactions",
    dependencies=[CanRequest],
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Transaction,
    responses={
        **ERRORS,
        200: {
            "model": Transaction,
            "description": "you already have this export (same definition, params and "
            "format) running or downloadable: that transaction, with `duplicate`; nothing new was started",
        },
        409: {"model": ErrorBody},
        422: {"model": ErrorBody},
        400: {"model": ErrorBody},
    },
    tags=["transactions"],
)
@threaded("write")
def request_export(
    body: TransactionRequest,
    user: GetUserDep,
    store: StoreDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JSONResponse:
    """Validate, record the header, start the Airflow run; answer 202 with the token at once."""
    airflow_side.starter.enter()
    try:
        return _request_export(body, user, store, idempotency_key)
    finally:
        airflow_side.starter.leave()


def _request_export(
    body: TransactionRequest, user: Any, store: HeaderStore, idempotency_key: str | None
) -> JSONResponse:
    try:
        request = parse_request(body.model_dump(exclude_none=True, exclude={"force"}))
    except RequestInvalid as exc:
        errors = [e.as_dict() for e in exc.errors]
        return JSONResponse({"detail": str(exc), "errors": errors}, status_code=422)
    reason = registry.get(request.definition).source.unavailable()
    if reason is not None:  # refused now, not after a run failed
        message = f"{request.definition} cannot run in this deployment: {reason}"
        return JSONResponse({"detail": f"invalid request: definition: {message}",
                             "errors": [{"field": "definition", "message": message}]}, status_code=422)  # fmt: skip
    conf = request.as_conf()
    digest = _request_hash(conf)
    who = user.get_name()
    if idempotency_key:
        existing = store.find_by_idempotency_key(who, idempotency_key)
        if existing is not None:
            if existing.request_hash != digest:
                raise HTTPException(status.HTTP_409_CONFLICT, KEY_REUSED)
            return _accepted(existing, user, replayed=True)
    mark = fingerprint(request.definition, request.params, request.format)
    if not body.force:
        same = store.find_live_duplicate(who, mark, utcnow())
        if same is not None:
            return _duplicate(same, user, store)
    created = False
    while not created:  # a token taken already (same second, same 32 random bits): draw again
        tx_id = _new_tx_id()
        try:
            new = NewHeader(tx_id, requested_by=who, idempotency_key=idempotency_key, request_hash=digest,
                            dedup_key=None if body.force else mark, **conf)  # fmt: skip
            header, created = batching.writer.create(store, new)
        except sa_exc.IntegrityError:
            # Two identical requests raced on the same key: the other one created it.
            existing = store.find_by_idempotency_key(who, idempotency_key) if idempotency_key else None
            if existing is not None:
                if existing.request_hash != digest:
                    raise HTTPException(status.HTTP_409_CONFLICT, KEY_REUSED) from None
                return _accepted(existing, user, replayed=True)
            # Or the same export, requested twice at once: the other request made it.
            same = None if body.force else store.find_live_duplicate(who, mark, utcnow())
            if same is not None:
                return _duplicate(same, user, store)
            if body.force or not store.release_stale_dedup_key(who, mark, utcnow()):
                raise
    started = airflow_side.starter.submit(lambda: _start_run(store, tx_id, conf, who))
    if airflow_side.starter.wait(started, config.run_start_wait_seconds()) and started.exception() is not None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the export could not be started; try again",
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from started.exception()  # fmt: skip
    # The run is created, or will be right after this answer (a burst of requests; see RunStarter).
    return _accepted(header, user)


KEY_REUSED = "this Idempotency-Key was already used with a different request"


def _start_run(store: HeaderStore, tx_id: str, conf: dict[str, Any], who: str) -> None:
    """Create the transaction's Airflow run (in the run starter's thread). When it cannot be
    created the transaction ends FAILED, saying so, and its Idempotency-Key is free again: the
    client's retry with it must start the export, not replay this one."""
    try:
        airflow_side.trigger_run(tx_id, conf, who)
    except Exception as exc:
        log.warning("the Airflow run of %s could not be created: %s", tx_id, exc)
        store.fail(tx_id, f"the Airflow run could not be started ({airflow_side.error_kind(exc)}); try again later")
        store.update(tx_id, idempotency_key=None)
        raise


@app.get(f"{V1}/transactions", dependencies=[CanRead], responses=ERRORS, tags=["transactions"])
@threaded("read")
def list_transactions(
    user: GetUserDep,
    store: StoreDep,
    state: State | None = None,
    definition: Annotated[str | None, Query(max_length=100)] = None,
    q: Annotated[str | None, Query(max_length=100, description="a part of the token or the label")] = None,
    created_from: Annotated[date | None, Query(description="created on or after this day (UTC)")] = None,
    created_to: Annotated[date | None, Query(description="created on or before this day (UTC)")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> TransactionList:
    """The caller's transactions, newest first (admins: everyone's), filtered by state,
    definition, a part of the token or label, and the day they were created."""
    requester = None if airflow_side.is_admin(user) else user.get_name()

    def day_start(day: date | None, plus: int = 0) -> datetime | None:
        return None if day is None else datetime.combine(day + timedelta(days=plus), time.min, tzinfo=UTC)

    found, total = store.list_headers(
        requested_by=requester,
        state=state,
        definition=definition,
        search=q.strip() if q else None,
        created_from=day_start(created_from),
        created_before=day_start(created_to, plus=1),
        limit=limit,
        offset=offset,
    )
    admin = airflow_side.is_admin(user)
    return TransactionList(transactions=views.statuses(store, found, admin=admin), total_entries=total)


@app.get(f"{V1}/transactions/{{tx_id}}", dependencies=[CanRead], responses={**ERRORS, 404: {"model": ErrorBody}},
         tags=["transactions"])  # fmt: skip
@threaded("read")
def get_transaction(tx_id: str, user: GetUserDep, store: StoreDep) -> Transaction:
    """The status record: state, live progress, place in the queue or estimated finish, result or
    error, notification, links."""
    return views.status(store, _visible(store, tx_id, user), admin=airflow_side.is_admin(user))


@app.get(f"{V1}/transactions/{{tx_id}}/logs", dependencies=[CanRead],
         responses={**ERRORS, 404: {"model": ErrorBody}}, tags=["transactions"])  # fmt: skip
@threaded("read")
def get_logs(
    tx_id: str,
    user: GetUserDep,
    store: StoreDep,
    after: Annotated[int, Query(ge=0, le=MAX_EVENT_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> LogPage:
    """The processing log, oldest first; page with ``after`` (the last event id seen)."""
    _visible(store, tx_id, user)
    events = store.events(tx_id, after_id=after, limit=limit)
    next_after = events[-1].id if len(events) == limit else None
    return LogPage(events=[views.log_event(e) for e in events], next_after=next_after)


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep_partial: Annotated[
        bool,
        Field(
            strict=True,
            description="true: keep a partial file of the batches that finished, in key order, downloadable "
            "until its retention ends (the status shows result.partial and the key ranges it covers)",
        ),
    ] = False


@app.post(f"{V1}/transactions/{{tx_id}}/cancel", dependencies=[CanCancel], status_code=202,
          responses={**ERRORS, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
          tags=["transactions"])  # fmt: skip
@threaded("write")
def cancel(tx_id: str, user: GetUserDep, store: StoreDep, body: CancelRequest | None = None) -> JSONResponse:
    """Cancel a queued or running transaction: CANCELLED, the run stopped, parts removed, no e-mail —
    with ``{"keep_partial": true}``, the finished batches kept as a partial file."""
    header = _visible(store, tx_id, user)
    keep = body is not None and body.keep_partial
    if header.terminal or not cancel_transaction(store, tx_id, user.get_name(), airflow_side.stop_run,
                                                 keep_partial=keep):  # fmt: skip
        current = store.get(tx_id).state.value
        message = f"the transaction is {current}; only a requested or running one can be cancelled"
        raise HTTPException(status.HTTP_409_CONFLICT, message)
    body_out = views.transaction(store.get(tx_id), admin=airflow_side.is_admin(user)).model_dump(mode="json")
    return JSONResponse(body_out, status_code=202)


@app.post(f"{V1}/transactions/{{tx_id}}/retry", dependencies=[CanRequest], status_code=202,
          responses={**ERRORS, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
          tags=["transactions"])  # fmt: skip
@threaded("write")
def retry(tx_id: str, user: GetUserDep, store: StoreDep) -> JSONResponse:
    """Resume a FAILED transaction (owner or admin): the same token, the same Airflow run, its log
    continued. Only the batches that did not finish run again, then the merge; the file equals an
    uninterrupted run's. 409 says why not: another state, or the definition or its source changed
    shape since it was planned (its finished batches would not fit)."""
    _visible(store, tx_id, user)
    try:
        resume_transaction(store, tx_id, user.get_name(), airflow_side.resume_run)
    except NotResumable as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    body = views.status(store, store.get(tx_id), admin=airflow_side.is_admin(user)).model_dump(mode="json")
    return JSONResponse(body, status_code=202, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


@app.get(f"{V1}/transactions/{{tx_id}}/batches", dependencies=[CanRead],
         responses={**ERRORS, 404: {"model": ErrorBody}}, tags=["transactions"])  # fmt: skip
@threaded("read")
def get_batches(
    tx_id: str,
    user: GetUserDep,
    store: StoreDep,
    after: Annotated[int, Query(ge=0, le=100_000, description="the last batch_no seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
) -> BatchPage:
    """The plan's batches in key order: each one's key range, state, rows and attempts (every
    Airflow try, across resumes)."""
    header = _visible(store, tx_id, user)
    plan = [b for b in store.plan(tx_id) if b.batch_no > after]
    shown_batches = plan[:limit]
    return BatchPage(
        batches=[views.batch(b) for b in shown_batches],
        total=header.batches_total,
        next_after=shown_batches[-1].batch_no if len(plan) > limit else None,
    )


@app.get(f"{V1}/transactions/{{tx_id}}/download", dependencies=[CanRead],
         responses={**ERRORS, **downloads.RESPONSES, 404: {"model": ErrorBody}, 409: {"model": ErrorBody},
                    410: {"model": ErrorBody}},
         response_class=Response, tags=["transactions"])  # fmt: skip
@threaded("write")
def download(
    tx_id: str,
    user: GetUserDep,
    store: StoreDep,
    range_: downloads.RangeHeader = None,
    if_range: downloads.IfRangeHeader = None,
    if_none_match: downloads.IfNoneMatchHeader = None,
) -> Any:
    """The file, in the format it was requested in, or a 303 to a short-lived URL on S3.

    Resumable: ``Range`` (206; 416 past the end) and ``If-Range`` with the ``ETag``
    (``"sha256-<hex>"``: the same file resumes, another is sent whole). Every answer about the file
    carries ``ETag``, ``Repr-Digest: sha-256=:<base64>:`` and ``Digest: SHA-256=<base64>`` — the
    whole file's sha256, on a 206 and on the 303 too — and ``If-None-Match`` with the ETag is a 304.

    Each answer that hands out the file — the whole (200), any part of it (206: a resumed download
    is still a download), or the URL (303) — records the download: ``downloaded_at`` the first
    time, a ``download`` event each time. A 304 or a 416 hands out nothing and records nothing.
    """
    header = _visible(store, tx_id, user)
    partial = header.state == State.CANCELLED and header.result_partial
    if header.state == State.EXPIRED or (header.state == State.CANCELLED and not (partial and header.result_uri)):
        gone = "its partial file's retention ended" if partial else "its file is gone"
        raise HTTPException(status.HTTP_410_GONE, f"the transaction is {header.state.value}; {gone}")
    if not partial and (header.state != State.SUCCEEDED or not header.result_uri):
        hint = f": {header.error}" if header.error else "; poll the transaction until it is SUCCEEDED"
        raise HTTPException(status.HTTP_409_CONFLICT, f"the transaction is {header.state.value}{hint}")
    assert header.result_uri is not None
    fmt = formats.get(header.format)
    kind = "-partial" if partial else ""
    filename = f"{header.definition}-{storage.tx_folder_name(header.id)}{kind}{fmt.suffix}"
    validators = transfer.headers(header.result_sha256)
    path = storage.local_file(header.result_uri)
    if path is not None:
        try:
            stat = Path(path).stat()
        except FileNotFoundError:
            raise HTTPException(status.HTTP_410_GONE, "the file is no longer in storage") from None
        if transfer.none_match(if_none_match, validators.get("ETag")):
            return downloads.not_modified(validators)
        answer = downloads.FileDownload(path, stat, fmt.media_type, filename, validators)
        if answer.unsatisfiable(range_, if_range):
            return downloads.range_not_satisfiable(stat.st_size, validators)
        record_download(store, tx_id, user.get_name())
        return answer
    if transfer.none_match(if_none_match, validators.get("ETag")):
        return downloads.not_modified(validators)
    url = storage.presigned_url(header.result_uri, filename, fmt.media_type)
    record_download(store, tx_id, user.get_name())
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER, headers=validators)


@app.post(f"{V1}/transactions/{{tx_id}}/notify", dependencies=[CanRequest], status_code=202,
          responses={**ERRORS, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 503: {"model": ErrorBody}},
          tags=["transactions"])  # fmt: skip
@threaded("write")
def notify_again(tx_id: str, user: GetUserDep, store: StoreDep) -> JSONResponse:
    """Send the "your export is ready" e-mail again, now (owner or admin): a run of
    ``export_notification`` that neither waits nor skips a downloaded file."""
    from export_tx.config import NOTIFICATION_DAG_ID, notification_run_id
    from export_tx.states import NotificationState

    header = _visible(store, tx_id, user)
    if header.state != State.SUCCEEDED:
        raise HTTPException(status.HTTP_409_CONFLICT, f"the transaction is {header.state.value}; only a SUCCEEDED "
                            "export's e-mail can be sent")  # fmt: skip
    if not header.notify_email:
        raise HTTPException(status.HTTP_409_CONFLICT, "the request gave no notify_email to send to")
    again = 1 + len(store.events(tx_id, kind="notification-request", limit=1000))
    run_id = notification_run_id(tx_id, again)
    try:
        airflow_side.trigger_run(run_id, {"transaction": tx_id, "resend": True}, user.get_name(),
                                 dag_id=NOTIFICATION_DAG_ID)  # fmt: skip
    except Exception as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the e-mail could not be requested; try again",
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from exc  # fmt: skip
    store.update(tx_id, notification_state=NotificationState.PENDING)
    store.add_event(tx_id, "notification-request", f"e-mail asked for again by {user.get_name()}",
                    {"notification": NotificationState.PENDING, "run_id": run_id})  # fmt: skip
    body = views.transaction(store.get(tx_id), admin=airflow_side.is_admin(user)).model_dump(mode="json")
    return JSONResponse(body, status_code=202)


@app.get(f"{V1}/me", dependencies=[CanRead], responses=ERRORS, tags=["definitions"])
@threaded("read")
def me(user: GetUserDep) -> dict[str, Any]:
    """Who the caller is and what they may do (the Exports page shows buttons accordingly)."""
    return {"user": user.get_name(), "admin": airflow_side.is_admin(user),
            "can_request": may_use_exports(user, "POST"), "can_cancel": may_use_exports(user, "PUT")}  # fmt: skip


@app.get("/ui", response_class=HTMLResponse, dependencies=[CanRead], include_in_schema=False)
@threaded("read")
def exports_page(user: GetUserDep) -> HTMLResponse:
    """The Exports page shown inside the Airflow UI (plugin external view)."""
    page = (STATIC / "exports.html").read_text()
    return HTMLResponse(page.replace("{{USER}}", html.escape(user.get_name())))
