"""The DAG's Params: the run conf contract of the design doc, with titles for the UI form."""

from __future__ import annotations

from typing import Any

from export_tx import config, formats
from export_tx.catalog import registry
from export_tx.definition import RETENTION_DAYS_LIMIT
from export_tx.request import LABEL_MAX_CHARS


def build_params() -> dict[str, Any]:
    """Airflow Params (JSON-schema validated at trigger time). Reads only the registry's names."""
    from airflow.sdk import Param

    names = registry.names()
    return {
        "definition": Param(
            names[0] if names else None,
            type="string",
            enum=names,
            title="Export definition",
            description="Which registered export to run. Each definition names its source, query and limits. "
            "Analysts: the Exports page (/exports/ui) has a form with one field per parameter and a live preview.",
        ),
        "params": Param(
            {},
            type="object",
            title="Definition parameters",
            description=(
                "The definition's own parameters as a JSON object, e.g. "
                '{"since": "2025-06-01", "status": "shipped"}. Unknown parameters are refused.'
            ),
        ),
        "batch_size": Param(
            config.BATCH_SIZE_DEFAULT,
            type=["null", "integer"],
            minimum=config.BATCH_SIZE_MIN,
            maximum=config.BATCH_SIZE_MAX,
            title="Rows per batch",
            description="Empty: automatic — one batch per batch slot, each of at least 1,000,000 rows (fastest). "
            "Or 1,000 to 5,000,000 rows per batch; each batch is one task with about a second of start-up. "
            "Beyond 200 batches they are made larger, and the log says so.",
        ),
        "notify_email": Param(
            None,
            type=["null", "string"],
            maxLength=2560,
            title="Notify e-mail",
            description="Optional address(es), at most 10, comma-separated, to e-mail when the file is ready "
            "(not sent if already downloaded).",
        ),
        "notify_delay_minutes": Param(
            config.NOTIFY_DELAY_DEFAULT,
            # Not required: without an e-mail address there is no delay to give.
            type=["null", "number"],
            minimum=0,
            maximum=config.NOTIFY_DELAY_MAX,
            title="E-mail delay (minutes)",
            description="How long to wait after the file is ready before e-mailing (fractions allowed: 0.5 = 30 s).",
        ),
        "retention_days": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=RETENTION_DAYS_LIMIT,
            title="Keep the file (days)",
            description="Days the result is kept before it expires; empty: the definition's default. "
            "At most the definition's maximum (GET /exports/v1/definitions lists both).",
        ),
        "label": Param(
            None,
            type=["null", "string"],
            maxLength=LABEL_MAX_CHARS,
            title="Label",
            description="Optional: your own name for this export, shown beside its token.",
        ),
        "format": Param(
            formats.DEFAULT,
            type="string",
            enum=list(formats.NAMES),
            title="File format",
            description="parquet (the default; typed, zstd inside); csv (RFC 4180, one header line, binary as "
            "base64); jsonl (JSON Lines, decimals as exact strings, binary as base64); csv.gz, jsonl.gz: the same, "
            "gzip-compressed.",
        ),
        "notify_webhook": Param(
            None,
            type=["null", "string"],
            maxLength=config.WEBHOOK_URL_MAX_CHARS,
            title="Notify webhook",
            description="Optional: a URL to POST a signed JSON event to when the export ends (export.succeeded or "
            "export.failed). https, no user or password, a host on the deployment's allow-list "
            "(EXPORT_TX_WEBHOOK_ALLOWED_HOSTS); refused when the deployment has no webhook secret.",
        ),
    }
