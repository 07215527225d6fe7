#!/usr/bin/env bash
# Starts the real services the backend-parameterised tests need, on loopback, under one
# directory: a throwaway PostgreSQL cluster and an s3s-fs S3-compatible server. Source it:
#
#   . scripts/test-services.sh && start_test_services DIR
#
# It exports KURA_TEST_PG_URL, KURA_TEST_S3_ENDPOINT, KURA_TEST_S3_BUCKET and the AWS
# credentials, and registers stop_test_services to run on exit. Nothing listens beyond 127.0.0.1.

start_test_services() {
  local root="$1"
  local pg_port="${KURA_TEST_PG_PORT:-55432}" s3_port="${KURA_TEST_S3_PORT:-59000}"
  mkdir -p "$root"
  _KURA_SERVICES_ROOT="$root"

  # PostgreSQL: initdb refuses to run as root, so the cluster belongs to the postgres user.
  local pgbin
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -x "$pgbin/initdb" ] || { echo "PostgreSQL server binaries not found" >&2; return 1; }
  local pgdata="$root/pg"
  rm -rf "$pgdata"
  install -d -o postgres -g postgres "$pgdata"
  runuser -u postgres -- "$pgbin/initdb" -D "$pgdata" -U postgres --auth=trust >"$root/initdb.log" 2>&1 \
    || { cat "$root/initdb.log" >&2; return 1; }
  # fsync off: these clusters are thrown away after each run.
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w -t 60 \
    -o "-p $pg_port -k $pgdata -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null || { cat "$pgdata/server.log" >&2; return 1; }
  export KURA_TEST_PG_URL="postgres://postgres@127.0.0.1:$pg_port"
  _KURA_PGBIN="$pgbin"

  # S3: s3s-fs keeps each bucket as a directory under its root.
  mkdir -p "$root/s3/kura-test"
  s3s-fs --host 127.0.0.1 --port "$s3_port" --access-key kuratest --secret-key kuratestsecret \
    "$root/s3" >"$root/s3s.log" 2>&1 &
  _KURA_S3_PID=$!
  local i
  for i in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$s3_port") 2>/dev/null; then break; fi
    sleep 0.1
  done
  export KURA_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
  export KURA_TEST_S3_BUCKET="kura-test"
  # Where s3s-fs keeps the bucket's objects: tests remove their own prefix there when done.
  export KURA_TEST_S3_DIR="$root/s3/kura-test"
  export AWS_ACCESS_KEY_ID="kuratest" AWS_SECRET_ACCESS_KEY="kuratestsecret" AWS_REGION="us-east-1"
  trap stop_test_services EXIT
  echo "test services: PostgreSQL at $KURA_TEST_PG_URL, S3 at $KURA_TEST_S3_ENDPOINT"
}

stop_test_services() {
  [ -n "${_KURA_S3_PID:-}" ] && kill "$_KURA_S3_PID" 2>/dev/null
  if [ -n "${_KURA_PGBIN:-}" ] && [ -d "${_KURA_SERVICES_ROOT:-}/pg" ]; then
    runuser -u postgres -- "$_KURA_PGBIN/pg_ctl" -D "$_KURA_SERVICES_ROOT/pg" -m immediate stop >/dev/null 2>&1
  fi
  _KURA_S3_PID="" _KURA_PGBIN=""
}
