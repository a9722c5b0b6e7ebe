"""The PostgreSQL table behind the type-matrix tests: every type the product maps, with NULLs,
extremes, NaN/±Infinity, DST-crossing times, 1 MB values and unicode."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

BIG_TEXT = ("ünïcødé 🚀 שלום مرحبا\t\n" * 40_000)[:1_000_000]  # ~1 MB: emoji, RTL, tab, newline
BIG_BYTES = bytes(range(256)) * 4096  # 1 MiB, every byte value
ASCII_UUID = uuid.UUID(bytes=b"ABCDEFGHIJKLMNOP")  # its 16 bytes are printable: must stay a uuid

DDL = """
DROP TABLE IF EXISTS type_matrix;
DROP DOMAIN IF EXISTS tm_positive;
DROP TYPE IF EXISTS tm_mood;
CREATE TYPE tm_mood AS ENUM ('sad', 'ok', 'happy 😀');
CREATE DOMAIN tm_positive AS numeric(10, 2) CHECK (VALUE > 0);
CREATE TABLE type_matrix (
    id bigint PRIMARY KEY,
    i2 smallint, i4 integer, i8 bigint,
    n numeric(38, 10), n50 numeric(50, 5), nu numeric, nneg numeric(5, -2),
    f4 real, f8 double precision,
    b boolean,
    t text, vc varchar(20), ch char(5),
    by bytea,
    d date, tm time, ts timestamp, tstz timestamptz,
    iv interval,
    u uuid,
    j json, jb jsonb,
    ai integer[], at text[], an numeric(8, 2)[], ats timestamptz[],
    e tm_mood,
    ip inet, cd cidr,
    dom tm_positive, doms tm_positive[],
    o oid
)
"""

# Hand-picked rows: extremes and traps. Columns not named are NULL.
SPECIAL_ROWS: list[dict[str, Any]] = [
    {"id": 1},  # every column NULL
    {
        "id": 2,
        "i2": -32768,
        "i4": -(2**31),
        "i8": -(2**63),
        "n": "-9999999999999999999999999999.9999999999",
        "n50": "-999999999999999999999999999999999999999999999.99999",
        "nu": "0.000000000000000001",
        "nneg": "-99900",
        "f4": "-3.4028235e38",
        "f8": "-1.7976931348623157e308",
        "b": False,
        "t": "",
        "vc": "",
        "ch": "",
        "by": b"",
        "d": "4713-01-01 BC",
        "tm": "00:00:00",
        "ts": "4713-01-01 00:00:00 BC",
        "tstz": "0001-01-01 00:00:00+00",
        "iv": "-178000000 years",
        "u": str(uuid.UUID(int=0)),
        "j": "[]",
        "jb": "{}",
        "ai": "{}",
        "at": "{}",
        "an": "{}",
        "ats": "{}",
        "e": "sad",
        "ip": "::1",
        "cd": "0.0.0.0/0",
        "dom": "0.01",
        "o": 0,
    },
    {
        "id": 3,
        "i2": 32767,
        "i4": 2**31 - 1,
        "i8": 2**63 - 1,
        "n": "9999999999999999999999999999.9999999999",
        "n50": "999999999999999999999999999999999999999999999.99999",
        "nu": "123456789012345678.5",
        "nneg": "99900",
        "f4": "3.4028235e38",
        "f8": "1.7976931348623157e308",
        "b": True,
        "t": "tab\there",
        "vc": "x" * 20,
        "ch": "abcde",
        "by": b"\x00\x01\xff",
        "d": "9999-12-31",
        "tm": "23:59:59.999999",
        "ts": "294246-12-31 23:59:59.999999",
        "tstz": "9999-12-31 23:59:59.999999+00",
        "iv": "178000000 years 11 mons 30 days 23:59:59.999999",
        "u": str(uuid.UUID(int=2**128 - 1)),
        "j": '{"nested": {"k": [1, 2.5, null, "ü"]},   "spaces": true}',
        "jb": '{"b": [1, 2], "a": "😀"}',
        "ai": "{1,NULL,-2147483648}",
        "at": '{"a,b","",NULL,"🚀"}',
        "an": "{1.50,NULL,-999999.99}",
        "ats": '{"2024-03-31 01:59:59+01","2024-03-31 03:00:00+02"}',
        "e": "happy 😀",
        "ip": "2001:db8::ff00:42:8329/64",
        "cd": "10.0.0.0/8",
        "dom": "99999999.99",
        "o": 4294967295,
    },
    {
        "id": 4,
        "f4": "NaN",
        "f8": "NaN",
        "t": "emoji 🚀 and RTL שלום مرحبا\nnewline",
        "ch": "ab",
        "u": str(ASCII_UUID),
        "nu": "-1.5",
        "tstz": "2024-10-27 02:30:00+02",
        "ts": "2024-03-31 02:30:00",
        "iv": "1 mon 2 days 00:00:01.5",
        "ip": "192.168.0.1/24",
    },
    {
        "id": 5,
        "f4": "Infinity",
        "f8": "Infinity",
        "tstz": "2024-10-27 02:30:00+01",
        "t": BIG_TEXT,
        "by": BIG_BYTES,
        "nu": "0",
        "iv": "-1 years -2 days -00:00:00.000001",
    },
    {
        "id": 6,
        "f4": "-Infinity",
        "f8": "-Infinity",
        "tstz": "2024-03-31 01:59:59.999999+01",
        "ts": "1970-01-01 00:00:00",
        "f8_neg_zero": True,
    },
    {"id": 7, "f4": "1.17549435e-38", "f8": "5e-324", "tstz": "1969-12-31 23:59:59.999999+00", "d": "1970-01-01"},
]
# Filler rows: every type with ordinary values, keys skewed and gappy up to 10^12.
FILLER = """
INSERT INTO type_matrix
SELECT k, (g % 30000)::smallint, g * 7919, g::bigint * 2654435761, (g * 1.1)::numeric(38, 10),
       (g::numeric * 1000003.5)::numeric(50, 5), (g::numeric / 7)::numeric(20, 6)::numeric, (g * 100)::numeric(5, -2),
       (g / 3.0)::real, g / 7.0, g % 2 = 0,
       'row ' || g || repeat('é', g % 5), 'v' || g, 'c' || (g % 10), decode(md5(g::text), 'hex'),
       DATE '2000-01-01' + g, TIME '00:00' + g * INTERVAL '1 second',
       TIMESTAMP '2024-03-30 00:00' + g * INTERVAL '37 seconds',
       TIMESTAMPTZ '2024-10-26 00:00:00+00' + g * INTERVAL '41 seconds',
       make_interval(months => g % 13, days => g % 40, secs => g / 1000.0),
       md5(g::text)::uuid, json_build_object('g', g, 'name', 'n' || g), jsonb_build_array(g, 'x'),
       ARRAY[g, -g], ARRAY['a' || g], ARRAY[(g / 100.0)::numeric(8, 2)],
       ARRAY[TIMESTAMPTZ '2024-01-01 00:00+00' + g * INTERVAL '1 hour'],
       (ARRAY['sad', 'ok', 'happy 😀'])[1 + g % 3]::tm_mood,
       ('10.' || (g % 256) || '.0.' || (g % 200))::inet, ('10.' || (g % 256) || '.0.0/16')::cidr,
       (1 + g % 1000)::numeric(10, 2)::tm_positive, ARRAY[(g / 10.0)::numeric(10, 2)::tm_positive], g::oid
FROM (SELECT g, CASE WHEN g < 1500 THEN 100 + g * 3 WHEN g < 2500 THEN 10000000 + g * 977
                     ELSE 1000000000000 - (3200 - g) * 1234567 END AS k
      FROM generate_series(1, 3200) AS g) AS s
"""
COLUMNS = [
    "id", "i2", "i4", "i8", "n", "n50", "nu", "nneg", "f4", "f8", "b", "t", "vc", "ch", "by", "d", "tm", "ts",
    "tstz", "iv", "u", "j", "jb", "ai", "at", "an", "ats", "e", "ip", "cd", "dom", "doms", "o",
]  # fmt: skip


def _insert_special(conn: psycopg.Connection[Any]) -> None:
    for row in SPECIAL_ROWS:
        values = {k: v for k, v in row.items() if k in COLUMNS}
        names = ", ".join(values)
        marks = ", ".join(["%s"] * len(values))
        conn.execute(f"INSERT INTO type_matrix ({names}) VALUES ({marks})", list(values.values()))
        if row.get("f8_neg_zero"):
            conn.execute("UPDATE type_matrix SET f8 = '-0'::float8, f4 = '-0'::float4 WHERE id = %s", (row["id"],))


def create_type_matrix(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'Europe/Paris'")  # DST-crossing values typed in local time
        for statement in DDL.split(";"):
            if statement.strip():
                conn.execute(statement)
        _insert_special(conn)
        conn.execute(FILLER)
        conn.execute("ANALYZE type_matrix")
