#!/usr/bin/env bash
# Real PostgreSQL and Redis servers on loopback for the integration tests (tests/integration)
# and the ETL example (examples/apps/etl.py).
#
#   scripts/services.sh install   apt-get install postgresql redis-server (skipped when present)
#   scripts/services.sh start     start both servers on 127.0.0.1, wait until they accept
#                                 connections, write their URLs to $FERROLOOP_SERVICES_ENV
#   scripts/services.sh stop      stop both servers and remove their data
#   scripts/services.sh status    say what runs; exit 1 unless both servers answer
#   scripts/services.sh env       print the services env file (KEY=value lines, sourceable)
#
# Settings (environment variables, all optional):
#   FERROLOOP_SERVICES_DIR   where the servers keep data, sockets and logs
#                            (default: /tmp/ferroloop-services)
#   FERROLOOP_SERVICES_ENV   the file the tests read (default: $FERROLOOP_SERVICES_DIR/services.env)
#   FERROLOOP_PG_PORT        PostgreSQL's TCP port on 127.0.0.1 (default: 55432)
#   FERROLOOP_REDIS_PORT     Redis's TCP port on 127.0.0.1 (default: 56379)
#
# The env file holds FERROLOOP_PG_URL and FERROLOOP_REDIS_URL (TCP), FERROLOOP_PG_UNIX_URL and
# FERROLOOP_REDIS_UNIX_URL (Unix sockets). The tests read it (or the same variables from the
# environment); without it the tests that need a server are skipped.
#
# PostgreSQL's initdb and postgres refuse to run as root, so as root they run as the
# unprivileged 'postgres' user the Debian package creates (runuser), in a data directory under
# $FERROLOOP_SERVICES_DIR owned by that user. The cluster is throwaway test data: fsync is off.
set -euo pipefail

DIR="${FERROLOOP_SERVICES_DIR:-/tmp/ferroloop-services}"
ENV_FILE="${FERROLOOP_SERVICES_ENV:-$DIR/services.env}"
PG_PORT="${FERROLOOP_PG_PORT:-55432}"
REDIS_PORT="${FERROLOOP_REDIS_PORT:-56379}"
PG_USER=ferroloop
PG_PASSWORD=ferroloop
PG_DB=ferroloop
PG_DATA="$DIR/pg/data"
PG_RUN="$DIR/pg/run"
PG_LOG="$DIR/pg/postgres.log"
PG_TLS="$DIR/pg/tls"
REDIS_DIR="$DIR/redis"

log() { echo "services: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

pg_bindir() {
  local d
  if command -v pg_config >/dev/null 2>&1; then
    d="$(pg_config --bindir 2>/dev/null || true)"
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
      echo "$d"
      return 0
    fi
  fi
  # Debian keeps the server binaries out of PATH, one directory per major version.
  d="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then
    echo "$d"
    return 0
  fi
  return 1
}

have_services() {
  pg_bindir >/dev/null && command -v redis-server >/dev/null && command -v redis-cli >/dev/null &&
    command -v openssl >/dev/null # the test certificates (PostgreSQL over TLS, tests/test_tls.py)
}

as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

cmd_install() {
  if have_services; then
    log "postgresql ($(pg_bindir)) and redis-server already installed"
    return 0
  fi
  log "installing postgresql and redis-server with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    -o Dpkg::Use-Pty=0 postgresql redis-server openssl >/dev/null
  have_services || die "postgresql / redis-server / openssl still missing after apt-get install"
  log "installed postgresql ($(pg_bindir)) and $(redis-server --version | cut -d' ' -f1-3)"
}

# PostgreSQL commands run as the unprivileged 'postgres' user when we are root.
pg_as_user() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_ready() {
  local bin="$1"
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -d "$PG_DB" -U "$PG_USER" >/dev/null 2>&1
}

start_pg() {
  local bin
  bin="$(pg_bindir)" || die "PostgreSQL is not installed: run scripts/services.sh install"
  if [ -f "$PG_DATA/postmaster.pid" ] && pg_as_user "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    if pg_ready "$bin"; then
      log "postgresql already running on 127.0.0.1:$PG_PORT"
      return 0
    fi
    pg_as_user "$bin/pg_ctl" -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true
  fi
  # A cluster that is not running is stale test data (say, from a killed session): start over.
  rm -rf "$DIR/pg"
  mkdir -p "$PG_DATA" "$PG_RUN" "$PG_TLS"
  # TLS as well (asyncpg's ssl= upgrades the connection with loop.start_tls): a self-signed
  # certificate for 127.0.0.1, which the tests trust as their CA.
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=localhost" \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$PG_TLS/server.key" -out "$PG_TLS/server.crt" >/dev/null 2>&1 ||
    die "openssl could not make PostgreSQL's test certificate"
  chmod 600 "$PG_TLS/server.key"
  local pwfile="$DIR/pg/pwfile"
  printf '%s\n' "$PG_PASSWORD" >"$pwfile"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "no 'postgres' user to run PostgreSQL as (is the postgresql package installed?)"
    chown -R postgres:postgres "$DIR/pg"
    chmod 700 "$PG_DATA"
  fi
  # Password (SCRAM) authentication over TCP, as a deployed server would have it.
  pg_as_user "$bin/initdb" -D "$PG_DATA" -U "$PG_USER" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 --no-sync \
    >"$DIR/pg/initdb.log" 2>&1 || {
    cat "$DIR/pg/initdb.log" >&2
    die "initdb failed"
  }
  rm -f "$pwfile"
  pg_as_user "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 30 start \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_RUN -c fsync=off \
        -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 \
        -c ssl=on -c ssl_cert_file=$PG_TLS/server.crt -c ssl_key_file=$PG_TLS/server.key" \
    >/dev/null || {
    cat "$PG_LOG" >&2 || true
    die "PostgreSQL did not start (port $PG_PORT in use? set FERROLOOP_PG_PORT)"
  }
  for _ in $(seq 1 100); do
    pg_ready "$bin" && break
    sleep 0.1
  done
  pg_ready "$bin" || die "PostgreSQL does not accept connections on 127.0.0.1:$PG_PORT"
  pg_as_user "$bin/psql" -q -h "$PG_RUN" -p "$PG_PORT" -U "$PG_USER" -d postgres \
    -c "CREATE DATABASE $PG_DB" >/dev/null
  log "postgresql $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT (data in $PG_DATA)"
}

redis_ready() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }

start_redis() {
  command -v redis-server >/dev/null || die "redis-server is not installed: run scripts/services.sh install"
  if redis_ready; then
    log "redis already running on 127.0.0.1:$REDIS_PORT"
    return 0
  fi
  rm -rf "$REDIS_DIR"
  mkdir -p "$REDIS_DIR"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$REDIS_DIR" \
    --daemonize yes --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" \
    --unixsocket "$REDIS_DIR/redis.sock" --unixsocketperm 777 \
    --save "" --appendonly no --protected-mode yes >/dev/null
  for _ in $(seq 1 100); do
    redis_ready && break
    sleep 0.1
  done
  redis_ready || {
    cat "$REDIS_DIR/redis.log" >&2 || true
    die "Redis does not answer on 127.0.0.1:$REDIS_PORT (port in use? set FERROLOOP_REDIS_PORT)"
  }
  log "$(redis-server --version | cut -d' ' -f1-3) on 127.0.0.1:$REDIS_PORT"
}

write_env() {
  mkdir -p "$(dirname "$ENV_FILE")"
  cat >"$ENV_FILE.tmp" <<EOF
# Written by scripts/services.sh start; read by tests/integration and examples/apps/etl.py.
FERROLOOP_PG_URL=postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB
FERROLOOP_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
# The same servers over their Unix sockets.
FERROLOOP_PG_UNIX_URL=postgresql://$PG_USER@/$PG_DB?host=$PG_RUN&port=$PG_PORT
FERROLOOP_REDIS_UNIX_URL=unix://$REDIS_DIR/redis.sock?db=0
EOF
  if [ -f "$PG_TLS/server.crt" ]; then
    echo "# PostgreSQL also speaks TLS; its self-signed certificate, to trust as the CA." >>"$ENV_FILE.tmp"
    echo "FERROLOOP_PG_SSL_CA=$PG_TLS/server.crt" >>"$ENV_FILE.tmp"
  fi
  mv "$ENV_FILE.tmp" "$ENV_FILE"
  log "connection URLs in $ENV_FILE"
}

cmd_start() {
  mkdir -p "$DIR"
  chmod 755 "$DIR"
  start_pg
  start_redis
  write_env
}

cmd_stop() {
  rm -f "$ENV_FILE"
  local bin
  if bin="$(pg_bindir)" && [ -f "$PG_DATA/postmaster.pid" ]; then
    pg_as_user "$bin/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
    log "postgresql stopped"
  fi
  if redis_ready; then
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    log "redis stopped"
  elif [ -f "$REDIS_DIR/redis.pid" ]; then
    kill "$(cat "$REDIS_DIR/redis.pid")" 2>/dev/null || true
  fi
  rm -rf "$DIR/pg" "$REDIS_DIR"
}

cmd_status() {
  local ok=0 bin
  if bin="$(pg_bindir)" && pg_ready "$bin"; then
    log "postgresql: accepting connections on 127.0.0.1:$PG_PORT"
  else
    log "postgresql: not running on 127.0.0.1:$PG_PORT"
    ok=1
  fi
  if command -v redis-cli >/dev/null && redis_ready; then
    log "redis: answering on 127.0.0.1:$REDIS_PORT"
  else
    log "redis: not running on 127.0.0.1:$REDIS_PORT"
    ok=1
  fi
  if [ -f "$ENV_FILE" ]; then log "env file: $ENV_FILE"; else log "env file: none ($ENV_FILE)"; fi
  return $ok
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart)
    cmd_stop
    cmd_start
    ;;
  status) cmd_status ;;
  env)
    [ -f "$ENV_FILE" ] || die "no env file at $ENV_FILE: run scripts/services.sh start"
    cat "$ENV_FILE"
    ;;
  *)
    echo "usage: scripts/services.sh install|start|stop|restart|status|env" >&2
    exit 2
    ;;
esac
