# Sourced by .ci/run: a throwaway PostgreSQL cluster for the store tests' PostgreSQL half.
# start_test_postgres installs Debian's postgresql package when no initdb is found, initialises a
# cluster in a temp folder as an unprivileged user (the `postgres` system user when run as root),
# starts it on a free local port with password authentication, creates the database kvfold_test
# and exports KVFOLD_TEST_POSTGRES_URL. stop_test_postgres stops it and removes the folder.

pg_bin=""
pg_dir=""
pg_user=""

_pg_as() {
  if [[ -n "$pg_user" ]]; then runuser -u "$pg_user" -- "$@"; else "$@"; fi
}

start_test_postgres() {
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [[ -z "$pg_bin" || ! -x "$pg_bin/initdb" ]]; then
    echo "ci: installing postgresql" >&2
    (apt-get update -qq && apt-get install -y -qq postgresql) >&2 || { echo "ci: cannot install postgresql" >&2; return 1; }
    pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  fi
  # initdb refuses root: run the cluster as the package's unprivileged user.
  if [[ "$(id -u)" == 0 ]]; then pg_user=postgres; fi
  pg_dir="$(mktemp -d /tmp/kvfold-ci-pg.XXXXXX)"
  [[ -n "$pg_user" ]] && chown "$pg_user" "$pg_dir"
  local password port
  password="kvfold-ci-$RANDOM$RANDOM"
  echo "$password" >"$pg_dir/pw"
  [[ -n "$pg_user" ]] && chown "$pg_user" "$pg_dir/pw"
  _pg_as "$pg_bin/initdb" -D "$pg_dir/data" -U kvfold --pwfile="$pg_dir/pw" --auth-local=trust \
    --auth-host=scram-sha-256 -E UTF8 >"$pg_dir/initdb.log" 2>&1 || { cat "$pg_dir/initdb.log" >&2; return 1; }
  rm -f "$pg_dir/pw"
  for port in $(seq 55432 55532); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue # taken
    if _pg_as "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 \
      -o "-p $port -k $pg_dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >&2; then
      export KVFOLD_TEST_POSTGRES_URL="postgres://kvfold:$password@127.0.0.1:$port/kvfold_test"
      _pg_as "$pg_bin/psql" -h "$pg_dir" -p "$port" -U kvfold -d postgres -qc "CREATE DATABASE kvfold_test" >&2 ||
        return 1
      echo "ci: PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($pg_dir)" >&2
      return 0
    fi
  done
  echo "ci: cannot start PostgreSQL (see $pg_dir/server.log)" >&2
  return 1
}

stop_test_postgres() {
  [[ -z "$pg_dir" ]] && return 0
  _pg_as "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast -w stop >/dev/null 2>&1
  rm -rf "$pg_dir"
  pg_dir=""
}
