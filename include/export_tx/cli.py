"""``export-tx`` — a command-line client for the ``/exports`` API.

    export-tx request demo_orders --param status=shipped --wait
    export-tx status TOKEN [--wait] · export-tx logs TOKEN · export-tx cancel TOKEN
    export-tx download TOKEN [-o FILE] · export-tx list [--state RUNNING] · export-tx definitions
    export-tx preview demo_orders --param status=shipped [--rows 10]   (nothing is written)

Connection from the environment: ``EXPORT_TX_URL`` (default http://localhost:8080) and either
``EXPORT_TX_TOKEN`` (an Airflow JWT) or ``EXPORT_TX_USER`` + ``EXPORT_TX_PASSWORD``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

API = "/exports/v1"
ACTIVE = ("REQUESTED", "RUNNING", "MERGING")


class CliError(Exception):
    pass


def _password_from_airflow_home(user: str) -> str | None:
    """Dev convenience: the simple auth manager's generated passwords file."""
    home = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow"))
    path = home / "simple_auth_manager_passwords.json.generated"
    if path.exists():
        return json.loads(path.read_text()).get(user)
    return None


def connect(base_url: str | None = None) -> httpx.Client:
    base = (base_url or os.environ.get("EXPORT_TX_URL") or "http://localhost:8080").rstrip("/")
    token = os.environ.get("EXPORT_TX_TOKEN")
    if not token:
        user = os.environ.get("EXPORT_TX_USER", "admin")
        password = os.environ.get("EXPORT_TX_PASSWORD") or _password_from_airflow_home(user)
        if not password:
            raise CliError("set EXPORT_TX_TOKEN, or EXPORT_TX_USER and EXPORT_TX_PASSWORD")
        answer = httpx.post(f"{base}/auth/token", json={"username": user, "password": password}, timeout=30)
        if answer.status_code not in (200, 201):
            raise CliError(f"login as {user} failed ({answer.status_code})")
        token = answer.json()["access_token"]
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _check(answer: httpx.Response) -> Any:
    if answer.status_code >= 400:
        try:
            body = answer.json()
        except ValueError:
            raise CliError(f"{answer.status_code}: {answer.text[:300]}") from None
        lines = [f"{answer.status_code}: {body.get('detail')}"]
        lines += [f"  {e['field']}: {e['message']}" for e in body.get("errors", [])]
        raise CliError("\n".join(lines))
    return answer.json() if answer.content else None


def _tx_path(tx_id: str) -> str:
    return f"{API}/transactions/{quote(tx_id, safe='')}"


def parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise CliError(f"--param {pair!r}: use NAME=VALUE")
        try:
            value = json.loads(raw)
            if isinstance(value, dict | list):
                value = raw
        except ValueError:
            value = raw
        params[name] = value
    return params


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} GB"


def follow(
    client: httpx.Client, tx_id: str, *, interval: float = 1.0, timeout: float = 24 * 3600, start_timeout: float = 30
) -> dict[str, Any]:
    """Poll the status with a progress bar until the transaction ends; return the final status."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("{task.fields[state]:<9}"), BarColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), transient=False,
    ) as bar:  # fmt: skip
        task = bar.add_task("export", total=100, state="", detail="")
        appear_by = time.monotonic() + start_timeout
        while True:
            answer = client.get(_tx_path(tx_id))
            if answer.status_code == 404 and time.monotonic() < appear_by:
                # A run triggered through Airflow's own API gets its header from its first task.
                bar.update(task, state="QUEUED", detail="waiting for the run to start")
                time.sleep(interval)
                continue
            tx = _check(answer)
            p = tx["progress"]
            batches = f"batches {p['batches_done']}/{p['batches_total']}" if p["batches_total"] is not None else ""
            bar.update(task, completed=p["percent"], state=tx["state"],
                       detail=f"{batches}  rows {p['rows_written']:,}")  # fmt: skip
            if tx["state"] not in ACTIVE:
                return dict(tx)
            if time.monotonic() > deadline:
                raise CliError(f"{tx_id} still {tx['state']} after {timeout:.0f} s")
            time.sleep(interval)


def print_status(tx: dict[str, Any], out: Any = sys.stdout) -> None:
    print(f"token      {tx['id']}", file=out)
    print(f"definition {tx['definition']}  params {json.dumps(tx['params'])}", file=out)
    print(f"state      {tx['state']}", file=out)
    p = tx["progress"]
    print(f"progress   {p['percent']}%  batches {p['batches_done']}/{p['batches_total']}  "
          f"rows {p['rows_written']:,}", file=out)  # fmt: skip
    if tx.get("result"):
        r = tx["result"]
        print(f"result     {r['rows']:,} rows, {_size(r['bytes'])}, sha256 {r['sha256']}", file=out)
        print(f"expires    {r['expires_at']}", file=out)
    if tx.get("error"):
        print(f"error      {tx['error']}", file=out)
    n = tx["notification"]
    print(f"e-mail     {n['state']}" + (f" ({n['email']})" if n.get("email") else ""), file=out)


def print_preview(answer: dict[str, Any], out: Any = sys.stdout) -> None:
    plan = answer["plan"]
    print(f"definition {answer['definition']}  params {json.dumps(answer['params'])}", file=out)
    print(f"rows       {answer['rows']:,}", file=out)
    print(f"plan       {plan['note']}", file=out)
    print("columns", file=out)
    width = max((len(c["name"]) for c in answer["columns"]), default=4)
    for c in answer["columns"]:
        note = f"  ({c['note']})" if c.get("note") else ""
        print(f"  {c['name']:<{width}}  {c['source_type'] or '-'} -> {c['type']}{note}", file=out)
    if answer["sample"]:
        print(f"first {len(answer['sample'])} row(s)", file=out)
        for row in answer["sample"]:
            print("  " + json.dumps(row, ensure_ascii=False), file=out)
    print(f"({answer['elapsed_s']:.2f} s, nothing written)", file=out)


def download(client: httpx.Client, tx_id: str, output: Path | None) -> Path:
    tx = _check(client.get(_tx_path(tx_id)))
    target = output or Path(f"{tx['definition']}-{tx_id.replace(':', '_').replace('+', '_')}.parquet")
    sha = hashlib.sha256()
    with client.stream("GET", _tx_path(tx_id) + "/download", follow_redirects=True) as answer:
        if answer.status_code >= 400:
            answer.read()
            _check(answer)
        with target.open("wb") as f:
            for chunk in answer.iter_bytes(1 << 20):
                sha.update(chunk)
                f.write(chunk)
    expected = (tx.get("result") or {}).get("sha256")
    if expected and sha.hexdigest() != expected:
        raise CliError(f"downloaded file's sha256 {sha.hexdigest()} differs from the status' {expected}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="export-tx", description=__doc__.split("\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    req = sub.add_parser("request", help="request an export")
    req.add_argument("definition")
    req.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    req.add_argument("--batch-size", type=int)
    req.add_argument("--notify-email")
    req.add_argument("--notify-delay", type=float, metavar="MINUTES")
    req.add_argument("--idempotency-key")
    req.add_argument("--wait", action="store_true", help="follow progress until it ends")
    st = sub.add_parser("status", help="show a transaction")
    st.add_argument("token")
    st.add_argument("--wait", action="store_true")
    ls = sub.add_parser("list", help="list transactions")
    ls.add_argument("--state")
    ls.add_argument("--definition")
    lg = sub.add_parser("logs", help="the processing log")
    lg.add_argument("token")
    cn = sub.add_parser("cancel", help="cancel a requested or running transaction")
    cn.add_argument("token")
    dl = sub.add_parser("download", help="download the file")
    dl.add_argument("token")
    dl.add_argument("-o", "--output", type=Path)
    sub.add_parser("definitions", help="list export definitions")
    pv = sub.add_parser("preview", help="row count, batch plan, column types and first rows, writing nothing")
    pv.add_argument("definition")
    pv.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    pv.add_argument("--batch-size", type=int)
    pv.add_argument("--rows", type=int, default=5, help="first rows to show (0 to 100)")
    args = parser.parse_args(argv)

    try:
        with connect() as client:
            return _run(client, args)
    except CliError as exc:
        print(f"export-tx: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"export-tx: cannot reach the API: {exc}", file=sys.stderr)
        return 2


def _run(client: httpx.Client, args: argparse.Namespace) -> int:
    if args.command == "definitions":
        for d in _check(client.get(f"{API}/definitions"))["definitions"]:
            params = ", ".join(d["params_schema"]["properties"])
            print(f"{d['name']:<16} {d['description']}  [params: {params or '-'}]")
        return 0
    if args.command == "preview":
        query: dict[str, Any] = {"rows": args.rows}
        if args.batch_size is not None:
            query["batch_size"] = args.batch_size
        for name, value in parse_params(args.param).items():
            query[name] = "true" if value is True else "false" if value is False else str(value)
        print_preview(_check(client.get(f"{API}/definitions/{quote(args.definition, safe='')}/preview", params=query)))
        return 0
    if args.command == "request":
        body: dict[str, Any] = {"definition": args.definition, "params": parse_params(args.param)}
        for key, value in (("batch_size", args.batch_size), ("notify_email", args.notify_email),
                           ("notify_delay_minutes", args.notify_delay)):  # fmt: skip
            if value is not None:
                body[key] = value
        headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
        tx = _check(client.post(f"{API}/transactions", json=body, headers=headers))
        print(tx["id"])
        if not args.wait:
            return 0
        final = follow(client, tx["id"])
        print_status(final)
        return 0 if final["state"] == "SUCCEEDED" else 1
    if args.command == "status":
        tx = follow(client, args.token) if args.wait else _check(client.get(_tx_path(args.token)))
        print_status(tx)
        return 0 if tx["state"] in ("SUCCEEDED", *ACTIVE) else 1
    if args.command == "list":
        query = {k: v for k, v in (("state", args.state), ("definition", args.definition)) if v}
        page = _check(client.get(f"{API}/transactions", params={**query, "limit": 100}))
        for tx in page["transactions"]:
            print(f"{tx['id']:<40} {tx['definition']:<14} {tx['state']:<10} {tx['progress']['percent']:>3}%  "
                  f"{tx['requested_by']:<10} {tx['created_at']}")  # fmt: skip
        print(f"{page['total_entries']} transaction(s)")
        return 0
    if args.command == "logs":
        after = 0
        while True:
            page = _check(client.get(_tx_path(args.token) + "/logs", params={"after": after, "limit": 500}))
            for e in page["events"]:
                print(f"{e['at']}  {e['kind']:<12} {e['message']}")
            if page["next_after"] is None:
                return 0
            after = page["next_after"]
    if args.command == "cancel":
        tx = _check(client.post(_tx_path(args.token) + "/cancel"))
        print(f"{tx['id']} {tx['state']}")
        return 0
    if args.command == "download":
        path = download(client, args.token, args.output)
        print(path)
        return 0
    raise CliError(f"unknown command {args.command}")


if __name__ == "__main__":
    raise SystemExit(main())
