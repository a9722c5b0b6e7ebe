"""The export-tx client without a server: its formatting, its options, its errors and its questions,
against an ``httpx.MockTransport`` standing in for the ``/exports`` API."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import httpx
import pytest

from export_tx import cli
from export_tx.storage import human_size

TOKEN = "exp_demo_orders_1"


def _tx(state: str = "RUNNING", done: int = 3, total: int | None = 10) -> dict[str, Any]:
    return {
        "id": TOKEN,
        "definition": "demo_orders",
        "params": {"status": "shipped"},
        "state": state,
        "progress": {"percent": 30, "batches_done": done, "batches_total": total, "rows_written": 3_000},
        "result": None,
        "error": None,
        "notification": {"state": "none"},
    }


class FakeApi:
    """Answers like the API and records every request the CLI sends."""

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def calls(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Callable[[httpx.Request], httpx.Response]], FakeApi]]:
    def install(handler: Callable[[httpx.Request], httpx.Response]) -> FakeApi:
        fake = FakeApi(handler)
        client = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(fake))
        monkeypatch.setattr(cli, "connect", lambda: client)
        return fake

    yield install


class Terminal(io.StringIO):
    """Standard input as a person's terminal: what they type, already in the buffer."""

    def isatty(self) -> bool:
        return True


# 1. A closed stdout ends the command quietly.


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    # A real pipe whose reader leaves after one line, as `export-tx logs TOKEN | head -1` does.
    script = textwrap.dedent(
        """
        import httpx
        from export_tx import cli

        def answer(request):
            after = int(request.url.params["after"])
            events = [{"at": "2025-01-01T00:00:00Z", "kind": "BATCH", "message": "x" * 80}] * 500
            return httpx.Response(200, json={"events": events, "next_after": after + 500 if after < 50_000 else None})

        client = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(answer))
        cli.connect = lambda: client
        raise SystemExit(cli.main(["logs", "exp_1"]))
        """
    )
    reader = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert reader.stdout is not None and reader.stderr is not None
    assert reader.stdout.readline().startswith(b"2025-01-01T00:00:00Z")
    reader.stdout.close()
    stderr = reader.stderr.read().decode()
    assert reader.wait(timeout=60) == cli.EXIT_BROKEN_PIPE
    assert stderr == ""  # no traceback, no "Exception ignored"


# 2. Every error once, on stderr, with a non-zero exit code.

INVALID = {
    "detail": "invalid request: batch_size: 10 is out of range; allowed: 1,000 to 5,000,000; "
    "params.status: 'lost' is not allowed",
    "errors": [
        {"field": "batch_size", "message": "10 is out of range; allowed: 1,000 to 5,000,000"},
        {"field": "params.status", "message": "'lost' is not allowed"},
    ],
}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            INVALID,
            "422: invalid request\n  batch_size: 10 is out of range; allowed: 1,000 to 5,000,000\n"
            "  params.status: 'lost' is not allowed",
        ),
        # The preview's refusals: the detail is nothing but the errors joined.
        (
            {"detail": "columns.x: too big", "errors": [{"field": "columns.x", "message": "too big"}]},
            "422: refused\n  columns.x: too big",
        ),
        # A refused Origin: the one error repeats the detail.
        ({"detail": "cross-site", "errors": [{"field": "Origin", "message": "cross-site"}]}, "422: cross-site"),
        ({"detail": "no such transaction"}, "422: no such transaction"),
        ({"detail": "the store is busy", "errors": []}, "422: the store is busy"),
        (["not", "an", "object"], '422: ["not", "an", "object"]'),
    ],
)
def test_error_text_says_each_thing_once(body: Any, expected: str) -> None:
    assert cli.error_text(422, body) == expected


def test_a_refused_request_is_printed_once_on_stderr(
    api: Callable[..., FakeApi], capsys: pytest.CaptureFixture[str]
) -> None:
    api(lambda request: httpx.Response(422, json=INVALID))
    assert cli.main(["request", "demo_orders", "--batch-size", "10", "--param", "status=lost"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("export-tx: 422: invalid request\n")
    assert err.count("is out of range") == 1 and err.count("'lost' is not allowed") == 1


def test_an_unreachable_api_is_one_line(api: Callable[..., FakeApi], capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    api(refuse)
    assert cli.main(["status", TOKEN]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "export-tx: cannot reach the API: Connection refused\n"


# 3 and 4. Plain-text help; every option says what it does.


def _parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    parser = cli.build_parser()
    yield "export-tx", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


@pytest.mark.parametrize(("name", "parser"), list(_parsers()))
def test_help_is_plain_text(name: str, parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    for markup in ("``", ":class:", ":func:", ":data:", ":meth:", "`"):
        assert markup not in text, f"{name} --help shows {markup!r}"


@pytest.mark.parametrize(("name", "parser"), list(_parsers()))
def test_every_option_has_help(name: str, parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_help_gives_units_and_ranges_with_commas() -> None:
    request = dict(_parsers())["request"].format_help()
    flat = " ".join(request.split())
    assert "rows per batch, 1,000 to 5,000,000, default automatic" in flat
    assert "small batches cost a task each, few large batches are faster" in flat
    assert "minutes to wait" in flat and "0 to 10,080" in flat
    assert "--retention-days DAYS" in flat and "retention_days_max" in flat
    assert "_000" not in flat


def test_preview_rows_limit_is_the_pipelines() -> None:
    from export_tx import pipeline

    assert cli.PREVIEW_ROWS_MAX == pipeline.PREVIEW_ROWS_MAX


def _accepted(request: httpx.Request) -> httpx.Response:
    return httpx.Response(202, json=_tx("REQUESTED", 0, None))


def test_retention_days_is_sent(api: Callable[..., FakeApi], capsys: pytest.CaptureFixture[str]) -> None:
    fake = api(_accepted)
    assert cli.main(["request", "orders", "--retention-days", "30", "--batch-size", "5000", "--param", "n=5",
                     "--label", "Q3 for finance"]) == 0  # fmt: skip
    body = json.loads(fake.requests[0].content)
    assert body == {"definition": "orders", "params": {"n": 5}, "batch_size": 5000, "retention_days": 30,
                    "label": "Q3 for finance"}  # fmt: skip
    assert capsys.readouterr().out == f"{TOKEN}\n"


def test_options_not_given_are_not_sent(api: Callable[..., FakeApi]) -> None:
    fake = api(_accepted)
    assert cli.main(["request", "orders"]) == 0
    assert json.loads(fake.requests[0].content) == {"definition": "orders", "params": {}}


def test_retention_days_must_be_a_whole_number(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["request", "orders", "--retention-days", "a week"])
    assert info.value.code == 2 and "--retention-days: invalid int value" in capsys.readouterr().err


# 5. Progress before planning.


@pytest.mark.parametrize(
    ("state", "done", "total", "expected"),
    [
        ("REQUESTED", 0, None, "queued"),  # not started yet: nothing is being planned
        ("RUNNING", 0, None, "planning…"),
        ("FAILED", 0, None, "batches -/-"),
        ("RUNNING", 3, 10, "batches 3/10"),
        ("SUCCEEDED", 1_200, 1_200, "batches 1,200/1,200"),
    ],
)
def test_batches_text(state: str, done: int, total: int | None, expected: str) -> None:
    assert cli.batches_text({"batches_done": done, "batches_total": total}, state) == expected


def test_status_before_planning_never_shows_none() -> None:
    out = io.StringIO()
    cli.print_status(_tx("REQUESTED", 0, None), out=out)
    assert "None" not in out.getvalue()
    assert "progress   30%  queued  rows 3,000" in out.getvalue()


# 6. Where it stands: the place in the line, the time left.


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (10, "10th"), (11, "11th"), (12, "12th"), (13, "13th"),
     (21, "21st"), (22, "22nd"), (23, "23rd"), (101, "101st"), (111, "111th"), (112, "112th"), (1_001, "1,001st")],
)  # fmt: skip
def test_ordinal(n: int, expected: str) -> None:
    assert cli.ordinal(n) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0.0, "any moment now"), (0.6, "any moment now"), (1.0, "about 1 s left"), (42.4, "about 42 s left"),
     (59.4, "about 59 s left"), (60.0, "about 1 min left"), (130.0, "about 2 min left"),
     (3_569.0, "about 59 min left"), (3_600.0, "about 1 h left"), (3_900.0, "about 1 h 5 min left"),
     (86_400.0, "about 1 d left"), (183_600.0, "about 2 d 3 h left")],
)  # fmt: skip
def test_time_left(seconds: float, expected: str) -> None:
    assert cli.time_left_text(seconds) == expected


NOW = datetime(2026, 5, 2, 14, 1, 0, tzinfo=UTC)


def _eta(seconds: float, finish: str, basis: str = "this_run") -> dict[str, Any]:
    return {"estimated_finish_at": finish, "seconds_left": seconds, "basis": basis, "rows_per_second": 250.0,
            "rows_left": 30_000}  # fmt: skip


@pytest.mark.parametrize(
    ("eta", "expected"),
    [
        (_eta(125.0, "2026-05-02T14:03:05Z"), "about 2 min left (ETA 14:03 UTC)"),
        (_eta(150.0, "2026-05-02T14:03:30.5+00:00"), "about 2 min left (ETA 14:04 UTC)"),  # to the nearest minute
        (_eta(7_200.0, "2026-05-02T18:01:00+02:00"), "about 2 h left (ETA 16:01 UTC)"),  # any offset, shown in UTC
        (_eta(40_000.0, "2026-05-03T01:07:40Z"), "about 11 h 7 min left (ETA 2026-05-03 01:08 UTC)"),  # tomorrow
        (_eta(300.0, "2026-05-02T14:06:00Z", "history"), "about 5 min left (ETA 14:06 UTC, from earlier exports)"),
        (_eta(0.0, "2026-05-02T14:01:00Z"), "any moment now"),
    ],
)
def test_eta_text(eta: dict[str, Any], expected: str) -> None:
    assert cli.eta_text(eta, now=NOW) == expected


def test_the_progress_shows_the_place_in_the_line_and_the_time_left() -> None:
    queued = {**_tx("REQUESTED", 0, None), "queue": {"position": 3, "ahead": 2, "waiting": 7}, "eta": None}
    assert cli.progress_detail(queued) == "queued: 3rd of 7 waiting"
    running = {**_tx("RUNNING", 3, 10), "queue": None, "eta": _eta(125.0, "2026-05-02T14:03:05Z")}
    assert cli.progress_detail(running, now=NOW) == "batches 3/10  rows 3,000  about 2 min left (ETA 14:03 UTC)"
    # Without them (an older server, or no estimate yet): what it showed before.
    assert cli.progress_detail(_tx("REQUESTED", 0, None)) == "queued  rows 3,000"
    assert cli.progress_detail({**_tx("RUNNING", 0, 10), "eta": None}) == "batches 0/10  rows 3,000"
    # Only where the state says so.
    assert cli.progress_detail({**_tx("MERGING", 10, 10), "eta": _eta(5.0, "2026-05-02T14:01:05Z")}) == (
        "batches 10/10  rows 3,000")  # fmt: skip

    out = io.StringIO()
    cli.print_status(queued, out=out)
    assert "queue      3rd of 7 waiting\n" in out.getvalue() and "eta " not in out.getvalue()
    out = io.StringIO()
    cli.print_status(running, out=out)
    assert "\neta        about 2 min left (ETA " in out.getvalue() and "queue " not in out.getvalue()


# 7. Sizes in SI units.


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (999, "999 B"),
        (1_000, "1.0 kB"),
        (1_024, "1.0 kB"),
        (1_050, "1.1 kB"),
        (999_949, "999.9 kB"),
        (999_999, "1.0 MB"),  # never "1,000.0 kB"
        (1_000_000, "1.0 MB"),
        (3_506_533, "3.5 MB"),  # the analyst's file: 3.3 MiB, 3.5 MB
        (999_999_999, "1.0 GB"),
        (1_000_000_000, "1.0 GB"),
        (1_234_567_890_123, "1.2 TB"),
        (10**18, "1,000.0 PB"),
    ],
)
def test_size(n: int, expected: str) -> None:
    assert human_size(n) == expected


# 8. Cancelling asks first.


def _cancel_api(state: str = "RUNNING") -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            if state not in cli.ACTIVE:
                detail = f"the transaction is {state}; only a requested or running one can be cancelled"
                return httpx.Response(409, json={"detail": detail})
            return httpx.Response(202, json=_tx("CANCELLED"))
        return httpx.Response(200, json=_tx(state))

    return answer


def test_cancel_asks_and_proceeds_on_yes(
    api: Callable[..., FakeApi], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = api(_cancel_api())
    monkeypatch.setattr(sys, "stdin", Terminal("yes\n"))
    assert cli.main(["cancel", TOKEN]) == 0
    out, err = capsys.readouterr()
    assert err == f"Cancel export {TOKEN} (demo_orders, 3 of 10 batches done)? [y/N] "
    assert out == f"{TOKEN} CANCELLED\n"
    assert fake.calls() == [f"GET {cli._tx_path(TOKEN)}", f"POST {cli._tx_path(TOKEN)}/cancel"]


@pytest.mark.parametrize("typed", ["\n", "n\n", "no\n", "yess\n", "", "maybe\n"])
def test_cancel_does_nothing_without_a_yes(
    typed: str, api: Callable[..., FakeApi], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = api(_cancel_api())
    monkeypatch.setattr(sys, "stdin", Terminal(typed))
    assert cli.main(["cancel", TOKEN]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.endswith("export-tx: not cancelled\n")
    assert [r.method for r in fake.requests] == ["GET"]


@pytest.mark.parametrize("flag", ["--yes", "-y"])
def test_cancel_with_yes_does_not_ask(
    flag: str, api: Callable[..., FakeApi], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = api(_cancel_api())
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal
    assert cli.main(["cancel", TOKEN, flag]) == 0
    assert capsys.readouterr() == (f"{TOKEN} CANCELLED\n", "")
    assert [r.method for r in fake.requests] == ["POST"]


def test_cancel_without_a_terminal_needs_yes(
    api: Callable[..., FakeApi], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = api(_cancel_api())
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # piped: nobody to answer
    assert cli.main(["cancel", TOKEN]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "pass --yes" in err
    assert fake.requests == []


def test_an_ended_export_is_not_asked_about(
    api: Callable[..., FakeApi], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    api(_cancel_api("SUCCEEDED"))
    monkeypatch.setattr(sys, "stdin", Terminal(""))
    assert cli.main(["cancel", TOKEN]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "export-tx: 409: the transaction is SUCCEEDED; only a requested or running one can be cancelled\n"


def test_the_question_before_planning() -> None:
    assert cli.cancel_question(_tx("REQUESTED", 0, None)) == f"Cancel export {TOKEN} (demo_orders, not planned yet)?"
    assert cli.cancel_question(_tx(done=1_500, total=2_000)).endswith("(demo_orders, 1,500 of 2,000 batches done)?")


def test_ctrl_c_at_the_question_is_a_no() -> None:
    interrupted = mock.Mock(spec=io.StringIO)
    interrupted.readline.side_effect = KeyboardInterrupt
    err = io.StringIO()
    assert cli.confirm("Cancel?", stdin=interrupted, out=err) is False
    assert err.getvalue() == "Cancel? [y/N] \n"


def test_definitions_show_the_retention_a_request_may_ask_for(
    api: Callable[..., FakeApi], capsys: pytest.CaptureFixture[str]
) -> None:
    definition = {
        "name": "orders",
        "description": "Orders",
        "params_schema": {"properties": {"since": {}, "status": {}}},
        "limits": {"max_rows": None, "retention_days_default": 7, "retention_days_max": 90},
    }
    api(lambda request: httpx.Response(200, json={"definitions": [definition]}))
    assert cli.main(["definitions"]) == 0
    assert capsys.readouterr().out == "orders           Orders  [params: since, status; kept 7 days, up to 90]\n"


def test_a_duplicate_prints_the_existing_token_and_says_so(
    api: Callable[..., FakeApi], capsys: pytest.CaptureFixture[str]
) -> None:
    def duplicate(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={**_tx("RUNNING"), "duplicate": {"of": TOKEN, "state": "RUNNING"}})

    fake = api(duplicate)
    assert cli.main(["request", "orders"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{TOKEN}\n"
    assert err == (f"export-tx: you already have this export (RUNNING): {TOKEN}; nothing new was started "
                   "(--force starts another)\n")  # fmt: skip
    assert "force" not in json.loads(fake.requests[0].content)
    forced = api(_accepted)
    assert cli.main(["request", "orders", "--force"]) == 0
    assert json.loads(forced.requests[0].content)["force"] is True
    assert capsys.readouterr() == (f"{TOKEN}\n", "")


def test_retry_resumes_and_batches_lists_attempts(
    api: Callable[..., FakeApi], capsys: pytest.CaptureFixture[str]
) -> None:
    pages = {
        0: {"batches": [{"batch_no": 1, "from": 1, "below": 500, "planned_rows": 499, "state": "DONE", "rows": 499,
                         "attempts": 1, "duration_s": 0.4, "done_at": None}], "total": 2, "next_after": 1},
        1: {"batches": [{"batch_no": 2, "from": 500, "below": None, "planned_rows": 501, "state": "PLANNED",
                         "rows": None, "attempts": 3, "duration_s": None, "done_at": None}], "total": 2,
            "next_after": None},
    }  # fmt: skip

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/retry"):
            return httpx.Response(202, json={**_tx("RUNNING"), "resumes": 1})
        return httpx.Response(200, json=pages[int(request.url.params["after"])])

    fake = api(answer)
    assert cli.main(["retry", TOKEN]) == 0
    assert capsys.readouterr().out == f"{TOKEN} RUNNING (resumed 1 time(s))\n"
    assert fake.calls() == [f"POST {cli._tx_path(TOKEN)}/retry"]
    fake = api(answer)
    assert cli.main(["batches", TOKEN]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "    1  [1, 500)  DONE     rows          499  attempts 1",
        "    2  [500, …)  PLANNED  rows            -  attempts 3",
    ]
    assert [r.url.params["after"] for r in fake.requests] == ["0", "1"]


def test_cancel_keep_partial_sends_it_and_says_what_was_kept(
    api: Callable[..., FakeApi], capsys: pytest.CaptureFixture[str]
) -> None:
    result = {"rows": 4_000, "bytes": 10, "sha256": "ab", "expires_at": "2026-12-07T00:00:00Z", "partial": True,
              "ranges": [{"batch_no": 1, "from": 1, "below": 4001, "rows": 4_000}]}  # fmt: skip

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(202, json={**_tx("CANCELLED"), "result": result})

    fake = api(answer)
    assert cli.main(["cancel", TOKEN, "--yes", "--keep-partial"]) == 0
    assert capsys.readouterr().out == f"{TOKEN} CANCELLED (partial file: 4,000 rows)\n"
    assert json.loads(fake.requests[0].content) == {"keep_partial": True}
    out = io.StringIO()
    cli.print_status({**_tx("CANCELLED"), "result": result}, out)
    assert "partial    only the batches that finished: keys in [1, 4001)\n" in out.getvalue()


def test_the_status_says_what_moment_a_point_in_time_export_shows() -> None:
    out = io.StringIO()
    cli.print_status({**_tx("RUNNING"), "point_in_time": {"as_of": "2026-11-30T04:00:00Z", "state": "held"}}, out)
    assert "as of      2026-11-30T04:00:00Z (point-in-time: snapshot held)\n" in out.getvalue()
    plain = io.StringIO()
    cli.print_status({**_tx("RUNNING"), "point_in_time": None}, plain)
    assert "as of" not in plain.getvalue()
