"""``export-tx`` — a command-line client for the ``/exports`` API.

The help it prints is :data:`DESCRIPTION`, :data:`EPILOG` and the options' help: plain text, never
this docstring (argparse would show its reStructuredText markup as it is).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from export_tx import config, formats, transfer
from export_tx.errors import CliError
from export_tx.states import ACTIVE as ACTIVE_STATES
from export_tx.states import State
from export_tx.storage import human_size

API = "/exports/v1"
ACTIVE = tuple(s.value for s in State if s in ACTIVE_STATES)
#: ``pipeline.PREVIEW_ROWS_MAX``, not imported: the pipeline loads the database drivers (~0.4 s per command).
PREVIEW_ROWS_MAX = 100
#: The exit status of a process that SIGPIPE ended (128 + 13), as ``yes | head`` leaves it.
EXIT_BROKEN_PIPE = 141

DESCRIPTION = "export-tx: request, follow, cancel and download export transactions through the /exports API."
EPILOG = """\
examples:
  export-tx request demo_orders --param status=shipped --wait
  export-tx status TOKEN [--wait]
  export-tx logs TOKEN
  export-tx cancel TOKEN [--yes] [--keep-partial]
  export-tx retry TOKEN [--wait]        (a FAILED export: only its unfinished batches run again)
  export-tx batches TOKEN
  export-tx download TOKEN [-o FILE] [--no-resume]      (resumes a cut download)
  export-tx list [--state RUNNING]
  export-tx definitions
  export-tx preview demo_orders --param status=shipped [--rows 10]   (nothing is written)

environment:
  EXPORT_TX_URL       the Airflow api-server (default http://localhost:8080)
  EXPORT_TX_TOKEN     an Airflow JWT; without it, EXPORT_TX_USER (default admin)
                      and EXPORT_TX_PASSWORD sign in
"""


def _password_from_airflow_home(user: str) -> str | None:
    """Dev convenience: the simple auth manager's generated passwords file."""
    home = config.airflow_home()
    path = home / "simple_auth_manager_passwords.json.generated"
    if path.exists():
        return json.loads(path.read_text()).get(user)
    return None


def connect(base_url: str | None = None) -> httpx.Client:
    client = config.ClientSettings.from_env()
    base = (base_url or client.url).rstrip("/")
    token = client.token
    if not token:
        user = client.user
        password = client.password or _password_from_airflow_home(user)
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
        raise CliError(error_text(answer.status_code, body))
    return answer.json() if answer.content else None


def error_text(status_code: int, body: Any) -> str:
    """An error answer, each thing said once: the API's ``detail`` often joins the field errors
    it also lists (``invalid request: a: …; b: …``), so they are cut from it and shown one a line."""
    if not isinstance(body, dict):
        return f"{status_code}: {json.dumps(body)[:300]}"
    detail = str(body.get("detail") or "").strip()
    fields = [e for e in body.get("errors") or [] if isinstance(e, dict)]
    lines = [f"{e.get('field')}: {e.get('message')}" for e in fields]
    joined = "; ".join(lines)
    if lines and joined in detail:
        detail = detail.replace(joined, "").strip().rstrip(":;").strip()
    # An error whose message is the detail itself (a refused Origin, say) adds nothing.
    lines = [line for line, e in zip(lines, fields, strict=True) if not detail or str(e.get("message")) != detail]
    head = f"{status_code}: {detail or 'refused'}"
    return "\n".join([head, *(f"  {line}" for line in lines)])


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


#: SI units, as a disk's or a network's sizes are given: 1 kB = 1,000 bytes.


def batches_text(progress: dict[str, Any], state: str) -> str:
    """``batches 3/10``; before planning the total is unknown (None) and never shown as ``0/None``:
    a requested export is queued, a running one planning."""
    total = progress.get("batches_total")
    if total is not None:
        return f"batches {progress['batches_done']:,}/{total:,}"
    if state == State.REQUESTED:
        return "queued"
    return "planning…" if state in ACTIVE else "batches -/-"


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th … 11th, 12th, 13th … 21st, 1,001st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n:,}{suffix}"


def queue_text(queue: dict[str, Any]) -> str:
    """A requested export's place in the line: ``3rd of 7 waiting``."""
    return f"{ordinal(int(queue['position']))} of {int(queue['waiting']):,} waiting"


def time_left_text(seconds: float) -> str:
    """``about 40 s left``, ``about 2 min left``, ``about 1 h 5 min left``, ``about 2 d 3 h left``."""
    if seconds < 1:
        return "any moment now"
    if seconds < 59.5:
        return f"about {round(seconds)} s left"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min left"
    if minutes < 24 * 60:
        hours, minutes = divmod(minutes, 60)
        return f"about {hours} h {minutes} min left" if minutes else f"about {hours} h left"
    days, hours = divmod(round(seconds / 3600), 24)
    return f"about {days} d {hours} h left" if hours else f"about {days} d left"


def eta_text(eta: dict[str, Any], now: datetime | None = None) -> str:
    """A running export's estimate: ``about 2 min left (ETA 14:03 UTC)``; another day's ETA
    gives its date, one from earlier exports says so."""
    seconds = float(eta["seconds_left"])
    left = time_left_text(seconds)
    if seconds < 1:
        return left
    finish = datetime.fromisoformat(str(eta["estimated_finish_at"])).astimezone(UTC)
    finish = (finish + timedelta(seconds=30)).replace(second=0, microsecond=0)  # to the nearest minute
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    clock = f"{finish:%H:%M} UTC" if finish.date() == today else f"{finish:%Y-%m-%d %H:%M} UTC"
    source = ", from earlier exports" if eta.get("basis") == "history" else ""
    return f"{left} (ETA {clock}{source})"


def standing_text(tx: dict[str, Any], now: datetime | None = None) -> str:
    """Where the export stands beyond its batches: ``queued: 3rd of 7 waiting`` while requested,
    the estimate while running; empty when the status has neither."""
    if tx.get("state") == State.REQUESTED and tx.get("queue"):
        return f"queued: {queue_text(tx['queue'])}"
    if tx.get("state") == State.RUNNING and tx.get("eta"):
        return eta_text(tx["eta"], now)
    return ""


def progress_detail(tx: dict[str, Any], now: datetime | None = None) -> str:
    """The text beside the progress bar: the place in the line while queued, else batches, rows
    and (running) the time left."""
    standing = standing_text(tx, now)
    if tx.get("state") == State.REQUESTED and standing:
        return standing
    p = tx["progress"]
    shown = f"{batches_text(p, tx['state'])}  rows {p['rows_written']:,}"
    return f"{shown}  {standing}" if standing else shown


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
            bar.update(task, completed=tx["progress"]["percent"], state=tx["state"], detail=progress_detail(tx))
            if tx["state"] not in ACTIVE:
                return dict(tx)
            if time.monotonic() > deadline:
                raise CliError(f"{tx_id} still {tx['state']} after {timeout:.0f} s")
            time.sleep(interval)


def print_status(tx: dict[str, Any], out: IO[str] | None = None) -> None:
    out = out or sys.stdout  # looked up per call: tests and pipes replace it
    print(f"token      {tx['id']}", file=out)
    print(f"definition {tx['definition']}  params {json.dumps(tx['params'])}", file=out)
    print(f"state      {tx['state']}", file=out)
    p = tx["progress"]
    print(f"progress   {p['percent']}%  {batches_text(p, tx['state'])}  rows {p['rows_written']:,}", file=out)
    if tx["state"] == State.REQUESTED and tx.get("queue"):
        print(f"queue      {queue_text(tx['queue'])}", file=out)
    if tx["state"] == State.RUNNING and tx.get("eta"):
        print(f"eta        {eta_text(tx['eta'])}", file=out)
    if tx.get("result"):
        r = tx["result"]
        print(f"result     {r['rows']:,} rows, {human_size(r['bytes'])}, sha256 {r['sha256']}", file=out)
        print(f"expires    {r['expires_at']}", file=out)
        if r.get("partial"):
            ranges = ", ".join(f"[{k['from']}, {'…' if k['below'] is None else k['below']})" for k in r["ranges"] or [])
            print(f"partial    only the batches that finished: keys in {ranges}", file=out)
    if tx.get("resumes"):
        print(f"resumed    {tx['resumes']} time(s)", file=out)
    if tx.get("point_in_time"):
        pit = tx["point_in_time"]
        print(f"as of      {pit['as_of'] or 'not yet taken'} (point-in-time: snapshot {pit['state']})", file=out)
    if tx.get("error"):
        print(f"error      {tx['error']}", file=out)
    n = tx["notification"]
    print(f"e-mail     {n['state']}" + (f" ({n['email']})" if n.get("email") else ""), file=out)


def print_preview(answer: dict[str, Any], out: IO[str] | None = None) -> None:
    out = out or sys.stdout  # looked up per call: tests and pipes replace it
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


#: A download whose connection drops (or times out) resumes where it stopped, this many times in all,
#: waiting 1, 2, 4, … seconds (at most :data:`DOWNLOAD_BACKOFF_MAX_S`) before each new try.
DOWNLOAD_TRIES = 6
DOWNLOAD_BACKOFF_S = 1.0
DOWNLOAD_BACKOFF_MAX_S = 16.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class _Cut(Exception):
    """The answer ended before the file did: try again, resuming."""


class _StartOver(Exception):
    """The part turned out not to be of this file."""


class _Part:
    """``FILE.part`` (the bytes so far) and ``FILE.part.etag`` (the ETag of the file they are of,
    written before the first byte), and the sha256 of the part, kept up as it grows."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = target.with_name(target.name + ".part")
        self.etag_path = target.with_name(target.name + ".part.etag")
        self._sha = hashlib.sha256()
        self._hashed: int | None = None  # bytes of the part in _sha; None: not read yet

    @property
    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    @property
    def etag(self) -> str | None:
        try:
            return self.etag_path.read_text().strip() or None
        except FileNotFoundError:
            return None

    def sha256(self) -> str:
        if self._hashed != self.size:  # a part left by an earlier run: read it once
            self._sha, self._hashed = hashlib.sha256(), 0
            if self.path.exists():
                with self.path.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        self._sha.update(chunk)
                        self._hashed += len(chunk)
        return self._sha.hexdigest()

    def receive(self, answer: httpx.Response, *, append: bool, etag: str | None) -> None:
        """The answer's body at the end of the part (``append``), or as a new part of the file ``etag`` names."""
        if append:
            self.sha256()
        else:
            self.path.write_bytes(b"")
            self.etag_path.unlink(missing_ok=True)
            if etag:
                self.etag_path.write_text(etag + "\n")
            self._sha, self._hashed = hashlib.sha256(), 0
        with self.path.open("ab") as f:
            for chunk in answer.iter_bytes():  # as they arrive: what came before a drop is kept
                f.write(chunk)
                self._sha.update(chunk)
                self._hashed = (self._hashed or 0) + len(chunk)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.etag_path.unlink(missing_ok=True)
        self._sha, self._hashed = hashlib.sha256(), 0

    def publish(self) -> None:
        """FILE.part → FILE, on disk first, in one rename."""
        with self.path.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(self.path, self.target)
        self.etag_path.unlink(missing_ok=True)


def _say(message: str) -> None:
    print(f"export-tx: {message}", file=sys.stderr, flush=True)


def download(
    client: httpx.Client,
    tx_id: str,
    output: Path | None,
    *,
    resume: bool = True,
    tries: int = DOWNLOAD_TRIES,
    backoff_s: float = DOWNLOAD_BACKOFF_S,
) -> Path:
    """Download into ``FILE.part`` and rename it to ``FILE`` once its sha256 is the status' and the
    server's ``Repr-Digest``. A part left by an earlier run resumes (``Range`` from its size,
    ``If-Range`` with the ETag it is of: another file comes whole); a dropped connection resumes
    by itself, ``tries`` times in all with exponential backoff, each time asking the API again
    (on S3: a fresh presigned URL). ``resume=False`` starts over."""
    tx = _check(client.get(_tx_path(tx_id)))
    # The file as the server names it: the format's suffix (a format this client does not know: Parquet's).
    fmt = formats.FORMATS.get(str(tx.get("format")), formats.get())
    target = output or Path(f"{tx['definition']}-{tx_id.replace(':', '_').replace('+', '_')}{fmt.suffix}")
    result = tx.get("result") or {}
    expected: str | None = result.get("sha256") or None
    size: int | None = result.get("bytes")
    part = _Part(target)
    if not resume:
        part.discard()
    digest: str | None = None  # the sha256 of the server's Repr-Digest
    for attempt in range(1, tries + 1):
        try:
            digest = _fetch(client, tx_id, part, size, expected) or digest
            break
        except (httpx.TransportError, _Cut) as exc:
            reason = str(exc) if isinstance(exc, _Cut) else type(exc).__name__
            if attempt == tries:
                raise CliError(f"the download was cut {tries} times (last: {reason}); {part.size:,} bytes are kept "
                               f"in {part.path}: the same command resumes it") from None  # fmt: skip
            wait = min(backoff_s * 2 ** (attempt - 1), DOWNLOAD_BACKOFF_MAX_S)
            _say(f"the download was cut at {part.size:,} bytes ({reason}); resuming in {wait:g} s "
                 f"(try {attempt + 1} of {tries})")  # fmt: skip
            time.sleep(wait)
    got = part.sha256()
    for want, whose in ((expected, "the status'"), (digest, "the server's Repr-Digest")):
        if want and got != want:
            part.discard()  # resuming it would only give the same file again
            raise CliError(f"downloaded file's sha256 {got} differs from {whose} {want}")
    part.publish()
    return target


def _fetch(client: httpx.Client, tx_id: str, part: _Part, size: int | None, expected: str | None) -> str | None:
    """One try: the rest of the file into the part (all of it, when there is nothing to resume).
    Returns the sha256 the server's ``Repr-Digest`` names, if it sent one."""
    try:
        return _fetch_once(client, tx_id, part, size, expected)
    except _StartOver as exc:
        _say(f"{exc}: starting over")
        part.discard()
        return _fetch_once(client, tx_id, part, size, expected)  # no part: no range, so no _StartOver


def _fetch_once(client: httpx.Client, tx_id: str, part: _Part, size: int | None, expected: str | None) -> str | None:
    have, etag = part.size, part.etag
    if have and size is not None and have >= size:
        if have == size and etag and part.sha256() == expected:
            return None  # complete already: only the rename was left
        _say(f"{part.path} is not a part of this file: starting over")
        part.discard()
        have = 0
    elif have and etag is None:
        _say(f"{part.path} has no {part.etag_path.name} to say which file it is of: starting over")
        part.discard()
        have = 0
    elif have:
        _say(f"resuming {part.path} at {have:,}" + (f" of {size:,} bytes" if size is not None else " bytes"))
    # As stored (identity): ranges count the stored file's bytes.
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers |= {"Range": f"bytes={have}-", "If-Range": etag or ""}
    answer = client.send(client.build_request("GET", _tx_path(tx_id) + "/download", headers=headers), stream=True)
    try:
        ours = answer.headers.get("etag")
        digest = transfer.sha256_of_repr_digest(answer.headers.get("repr-digest"))
        if answer.status_code == 303:
            # Object storage: our ETag on the 303 says whether the part is of this file; the store's
            # own ETags are not ours, so the Range goes there without If-Range.
            location = answer.headers["location"]
            answer.close()
            if have and ours != etag:
                _say(f"the file is not the one {part.path} is of: downloading it whole")
                have = 0
            redirect = client.build_request("GET", location, headers={"Accept-Encoding": "identity"} | (
                {"Range": f"bytes={have}-"} if have else {}))  # fmt: skip
            if redirect.url.netloc != client.base_url.netloc or redirect.url.scheme != client.base_url.scheme:
                del redirect.headers["Authorization"]  # the presigned URL is its own authorisation
            answer = client.send(redirect, stream=True)
        if answer.status_code == 206 and have:
            match = _CONTENT_RANGE.fullmatch(answer.headers.get("content-range", ""))
            if match is None or int(match[1]) != have:
                raise _StartOver("the server sent another range than the one asked for")
            total = None if match[3] == "*" else int(match[3])
            part.receive(answer, append=True, etag=ours)
        elif answer.status_code == 200:
            if have:
                _say(f"the server sent the whole file (it is not the one {part.path} was of): starting over")
            part.receive(answer, append=False, etag=ours)
            total = size
        elif answer.status_code == 416 and have:
            # At least as long as the file is: not a part of it.
            raise _StartOver(f"{part.path} is not a part of this file")
        elif answer.status_code >= 400:
            answer.read()
            _check(answer)
        else:
            raise CliError(f"unexpected answer {answer.status_code} to a download")
    finally:
        answer.close()
    if total is not None and part.size < total:
        raise _Cut(f"the answer ended at {part.size:,} of {total:,} bytes")
    return digest


def build_parser() -> argparse.ArgumentParser:
    """Every option says what it does, its unit and its range; the help is plain text."""
    parser = argparse.ArgumentParser(
        prog="export-tx", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="what to do; 'export-tx COMMAND --help' tells more"
    )

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=summary + ".")

    batch_range = f"{config.BATCH_SIZE_MIN:,} to {config.BATCH_SIZE_MAX:,}, default automatic"
    param_help = (
        "a parameter of the definition, as NAME=VALUE; repeat it for each parameter. A number, true, false or "
        "null is sent as such, anything else as text; 'export-tx definitions' lists each definition's parameters"
    )

    req = command("request", "request an export; prints its token at once")
    req.add_argument("definition", help="the export definition ('export-tx definitions' lists them)")
    req.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help=param_help)
    req.add_argument(
        "--batch-size", type=int, metavar="ROWS",
        help=f"rows per batch, {batch_range}. Each batch is one Airflow task: small batches cost a task each, "
        "few large batches are faster",
    )  # fmt: skip
    req.add_argument(
        "--notify-email", metavar="ADDRESSES",
        help="e-mail these addresses (at most 10, comma-separated) when the export is ready or has failed",
    )  # fmt: skip
    req.add_argument(
        "--notify-delay", type=float, metavar="MINUTES",
        help=f"minutes to wait after the file is ready before e-mailing, 0 to {config.NOTIFY_DELAY_MAX:,} "
        f"(7 days), fractions allowed, default {config.NOTIFY_DELAY_DEFAULT}; a download before then skips the "
        "e-mail",
    )  # fmt: skip
    req.add_argument(
        "--retention-days", type=int, metavar="DAYS",
        help="days the file is kept once the export has succeeded, 1 to the definition's retention_days_max; "
        "default: the definition's retention_days ('export-tx definitions' shows both)",
    )  # fmt: skip
    req.add_argument(
        "--label", metavar="TEXT",
        help="your own name for the export, one line of at most 100 characters, shown beside its token "
        "(export-tx list, the Exports page)",
    )  # fmt: skip
    req.add_argument(
        "--format", choices=formats.NAMES, metavar="FORMAT",
        help=f"the file's format, one of {', '.join(formats.NAMES)}; default {formats.DEFAULT}. csv: RFC 4180 with "
        "one header line, binary as base64; jsonl: JSON Lines, decimals as exact strings; .gz: gzip-compressed",
    )  # fmt: skip
    req.add_argument(
        "--notify-webhook", metavar="URL",
        help="a URL to POST a signed JSON event to when the export ends (export.succeeded, export.failed): https, "
        "without a user or password, on a host the deployment allows; verify its Export-Signature header with the "
        "deployment's webhook secret",
    )  # fmt: skip
    req.add_argument(
        "--idempotency-key", metavar="KEY",
        help="at most 200 characters; requesting again with the same key and options answers the same export "
        "instead of starting another (other options under that key are refused)",
    )  # fmt: skip
    req.add_argument(
        "--force", action="store_true",
        help="start a new export even if you already have the same one (same definition, params and format) "
        "running or downloadable; without it, that one's token is printed and nothing new starts",
    )  # fmt: skip
    req.add_argument(
        "--wait", action="store_true", help="follow the progress until the export ends; exit 0 only if it succeeded"
    )

    rt = command("retry", "resume a FAILED export: only the batches that did not finish run again, same token")
    rt.add_argument("token", help="the transaction's token")
    rt.add_argument(
        "--wait", action="store_true", help="follow the progress until the export ends; exit 0 only if it succeeded"
    )

    bt = command("batches", "list a transaction's batches: key range, state, rows and attempts")
    bt.add_argument("token", help="the transaction's token")

    st = command("status", "show a transaction's state, progress and result")
    st.add_argument("token", help="the transaction's token, as 'export-tx request' printed it")
    st.add_argument(
        "--wait", action="store_true", help="follow the progress until the export ends; exit 0 only if it succeeded"
    )

    ls = command("list", "list transactions, newest first (at most 100)")
    ls.add_argument("--state", choices=[s.value for s in State], help="only transactions in this state")
    ls.add_argument("--definition", help="only transactions of this definition")

    lg = command("logs", "print a transaction's processing log, oldest event first")
    lg.add_argument("token", help="the transaction's token")

    cn = command("cancel", "cancel a requested or running transaction (asks first)")
    cn.add_argument("token", help="the transaction's token")
    cn.add_argument(
        "-y", "--yes", action="store_true",
        help="cancel without asking; needed when the standard input is not a terminal",
    )  # fmt: skip
    cn.add_argument(
        "--keep-partial", action="store_true",
        help="keep a partial file of the batches that finished (download it with 'export-tx download'); the "
        "status lists the key ranges it holds",
    )  # fmt: skip

    dl = command(
        "download",
        "download a succeeded transaction's file, checking its sha256; a download that was cut resumes",
    )
    dl.add_argument("token", help="the transaction's token")
    dl.add_argument(
        "-o", "--output", type=Path, metavar="FILE",
        help="the file to write; default: DEFINITION-TOKEN and the format's suffix (.parquet, .csv, …) in the "
        "current directory. The bytes go to FILE.part first (FILE.part.etag beside it names the file they are "
        "of), renamed to FILE once the sha256 is checked; a dropped connection resumes by itself "
        f"({DOWNLOAD_TRIES} tries in all), and a FILE.part left by a run that was stopped resumes next time",
    )  # fmt: skip
    dl.add_argument(
        "--no-resume", action="store_true",
        help="start over: remove a FILE.part left by an earlier run instead of resuming it",
    )  # fmt: skip

    command("definitions", "list the export definitions, their parameters and retention")

    pv = command("preview", "row count, batch plan, column types and first rows, writing nothing")
    pv.add_argument("definition", help="the export definition ('export-tx definitions' lists them)")
    pv.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help=param_help)
    pv.add_argument("--batch-size", type=int, metavar="ROWS", help=f"rows per batch for the plan, {batch_range}")
    pv.add_argument(
        "--rows", type=int, default=5, metavar="N", help=f"first rows to show, 0 to {PREVIEW_ROWS_MAX}, default 5"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not as a traceback at the interpreter's exit
    except BrokenPipeError:
        # The reader went away (export-tx logs TOKEN | head): end quietly, as Python's documentation
        # (signal, "Note on SIGPIPE") says — stdout to devnull, so the final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "cancel" and not args.yes and not sys.stdin.isatty():
        # Nobody can answer the question: a script must say it means it.
        return _fail("cancel asks for confirmation and the standard input is not a terminal; pass --yes")
    try:
        with connect() as client:
            return _run(client, args)
    except CliError as exc:
        return _fail(str(exc))
    except httpx.HTTPError as exc:
        return _fail(f"cannot reach the API: {exc}")


def _fail(message: str) -> int:
    """Every error: once, on stderr, exit code 2."""
    print(f"export-tx: {message}", file=sys.stderr)
    return 2


def confirm(question: str, stdin: IO[str] | None = None, out: IO[str] | None = None) -> bool:
    """Ask on stderr (stdout stays the command's output); only y or yes is a yes."""
    stdin, out = stdin or sys.stdin, out or sys.stderr
    print(f"{question} [y/N] ", end="", file=out, flush=True)
    try:
        answer = stdin.readline()
    except KeyboardInterrupt:
        answer = ""
    if not answer.endswith("\n"):
        print(file=out)  # end the prompt's line after Ctrl-D / Ctrl-C
    return answer.strip().lower() in ("y", "yes")


def cancel_question(tx: dict[str, Any]) -> str:
    p = tx["progress"]
    if p.get("batches_total") is None:
        done = "not planned yet"
    else:
        done = f"{p['batches_done']:,} of {p['batches_total']:,} batches done"
    return f"Cancel export {tx['id']} ({tx['definition']}, {done})?"


def _retention(limits: dict[str, Any]) -> str:
    if not limits.get("retention_days_default"):
        return ""
    return f"; kept {limits['retention_days_default']} days, up to {limits.get('retention_days_max')}"


def _run(client: httpx.Client, args: argparse.Namespace) -> int:
    if args.command == "definitions":
        for d in _check(client.get(f"{API}/definitions"))["definitions"]:
            params = ", ".join(d["params_schema"]["properties"])
            print(f"{d['name']:<16} {d['description']}  [params: {params or '-'}{_retention(d.get('limits') or {})}]")
            if d.get("available") is False:
                print(f"{'':<16} unavailable here: {d.get('unavailable')}")
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
                           ("notify_delay_minutes", args.notify_delay),
                           ("retention_days", args.retention_days), ("label", args.label),
                           ("format", args.format), ("notify_webhook", args.notify_webhook)):  # fmt: skip
            if value is not None:
                body[key] = value
        if args.force:
            body["force"] = True
        headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
        tx = _check(client.post(f"{API}/transactions", json=body, headers=headers))
        print(tx["id"])
        if tx.get("duplicate"):
            print(f"export-tx: you already have this export ({tx['duplicate']['state']}): {tx['id']}; nothing new "
                  "was started (--force starts another)", file=sys.stderr)  # fmt: skip
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
            label = f"  {tx['label']}" if tx.get("label") else ""
            print(f"{tx['id']:<40} {tx['definition']:<14} {tx['state']:<10} {tx['progress']['percent']:>3}%  "
                  f"{tx['requested_by']:<10} {tx['created_at']}{label}")  # fmt: skip
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
        if not args.yes:
            current = _check(client.get(_tx_path(args.token)))
            # An ended one cannot be cancelled: no question, the API's refusal (409) says why.
            if current["state"] in ACTIVE and not confirm(cancel_question(current)):
                print("export-tx: not cancelled", file=sys.stderr)
                return 1
        cancel_body = {"keep_partial": True} if args.keep_partial else None
        tx = _check(client.post(_tx_path(args.token) + "/cancel", json=cancel_body))
        kept = ""
        if args.keep_partial:
            r = tx.get("result")
            kept = f" (partial file: {r['rows']:,} rows)" if r else " (no batch had finished: no partial file)"
        print(f"{tx['id']} {tx['state']}{kept}")
        return 0
    if args.command == "retry":
        tx = _check(client.post(_tx_path(args.token) + "/retry"))
        print(f"{tx['id']} {tx['state']} (resumed {tx['resumes']} time(s))")
        if not args.wait:
            return 0
        final = follow(client, tx["id"])
        print_status(final)
        return 0 if final["state"] == "SUCCEEDED" else 1
    if args.command == "batches":
        next_batch: int | None = 0
        while next_batch is not None:
            page = _check(client.get(_tx_path(args.token) + "/batches", params={"after": next_batch, "limit": 500}))
            for b in page["batches"]:
                below = "…" if b["below"] is None else b["below"]
                rows = "-" if b["rows"] is None else f"{b['rows']:,}"
                print(f"{b['batch_no']:>5}  [{b['from']}, {below})  {b['state']:<8} rows {rows:>12}  "
                      f"attempts {b['attempts']}")  # fmt: skip
            next_batch = page["next_after"]
        return 0
    if args.command == "download":
        path = download(client, args.token, args.output, resume=not args.no_resume)
        print(path)
        return 0
    raise CliError(f"unknown command {args.command}")


if __name__ == "__main__":
    raise SystemExit(main())
