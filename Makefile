# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install sysdeps bytecode demo down test lint typecheck services browser pytest bench lock clean

$(STAMP): pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory sysdeps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Every Airflow task is a new process that imports the DAG file and the library: from bytecode, as
# `pip install` leaves it, not from source (this machine sets PYTHONDONTWRITEBYTECODE, so nothing
# would ever be cached and every task would compile what it imports: seconds per task).
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q -j0 include dags plugins bench devtools >/dev/null

install: $(STAMP)

# The dev install builds mysqlclient (the MySQL provider's driver, for the MariaDB source tests)
# from source: it needs MariaDB's client headers and pkg-config (Debian's libmariadb-dev).
sysdeps:
	@pkg-config --exists libmariadb 2>/dev/null || pkg-config --exists mysqlclient 2>/dev/null || { \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  echo "installing Debian's libmariadb-dev and pkg-config (mysqlclient builds against them)" && \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libmariadb-dev pkg-config >/dev/null; } || \
	  { echo "the dev install needs MariaDB's client headers: sudo apt-get install libmariadb-dev pkg-config"; exit 1; }

demo: $(STAMP) bytecode
	$(BIN)/python -m devtools.stack demo

down:
	@test -x $(BIN)/python && $(BIN)/python -m devtools.stack down || echo "nothing to stop"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# What the tests talk to, checked (and where this machine allows, started or installed) before
# any test runs: otherwise one line says what is missing.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || { \
	  command -v pg_ctlcluster >/dev/null && pg_ctlcluster --skip-systemctl-redirect "$$(ls /etc/postgresql | head -1)" main start >/dev/null 2>&1; \
	  pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; } || \
	  { echo "make test needs PostgreSQL on 127.0.0.1:5432 (trust auth for user postgres): apt-get install postgresql"; exit 1; }
	@$(BIN)/python -c "import socket; socket.create_connection(('127.0.0.1', 6379), 3).close()" 2>/dev/null || { \
	  command -v redis-server >/dev/null && redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null; \
	  sleep 1; $(BIN)/python -c "import socket; socket.create_connection(('127.0.0.1', 6379), 3).close()" 2>/dev/null; } || \
	  { echo "make test needs Redis on 127.0.0.1:6379: apt-get install redis-server"; exit 1; }
	@test -x /usr/sbin/mariadbd || command -v mariadbd >/dev/null 2>&1 || { \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  echo "installing Debian's mariadb-server (the MariaDB source tests start their own server)" && \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null; } || \
	  { echo "make test needs MariaDB's server binaries (the tests start a private one): apt-get install mariadb-server"; exit 1; }

# The Exports page's browser tests drive Debian's Chromium (Playwright never downloads a browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  echo "installing Debian's chromium for the browser tests" && \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  { echo "make test needs Chromium for the browser tests: sudo apt-get install chromium"; exit 1; }

# Screenshots of the browser tests (each step of the analyst's path) are kept in test-artifacts/.
pytest: $(STAMP) bytecode services browser
	EXPORT_TX_TEST_ARTIFACTS=$(CURDIR)/test-artifacts $(BIN)/pytest

test: lint typecheck pytest

bench: $(STAMP) bytecode
	$(BIN)/python -m bench.bench_export

# Re-pin every dependency (commit the result): the lock Airflow asks users to keep.
lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o constraints.txt

clean: down
	rm -rf .airflow .pytest-airflow
