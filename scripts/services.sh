#!/usr/bin/env bash
# Makes sure the local services the integration tests use are up, starting
# the ones that are installed but down, and prints the environment
# variables that point the tests at them. A service that cannot be reached
# is left unset: its tests skip with a message.
set -u

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
  for _ in $(seq 1 50); do answers "$1" && return 0; sleep 0.2; done
  return 1
}

if ! answers 5432 && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  echo "starting PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start >&2 || true
  wait_for 5432 || echo "PostgreSQL did not come up" >&2
fi
if ! answers 4222 && [ -x /usr/sbin/nats-server ]; then
  echo "starting NATS" >&2
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log >&2 || true
  wait_for 4222 || echo "NATS did not come up" >&2
fi

if answers 5432; then
  echo "export BUILDBRIDGE_TEST_POSTGRES=${BUILDBRIDGE_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}"
fi
if answers 4222; then
  echo "export BUILDBRIDGE_TEST_NATS=${BUILDBRIDGE_TEST_NATS:-nats://127.0.0.1:4222}"
fi
