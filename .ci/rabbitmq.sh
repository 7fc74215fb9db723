#!/usr/bin/env bash
# Makes sure a RabbitMQ answers on 127.0.0.1:5672: if none does, installs
# Debian's rabbitmq-server when missing and starts it as a detached node.
# Idempotent and quick when a broker already answers. Needs root to install.
set -euo pipefail
log() { printf '== rabbitmq: %s\n' "$*"; }

answers() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if answers; then
  log "already answering on 127.0.0.1:5672"
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null && [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
  log "installing rabbitmq-server"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq rabbitmq-server
  # The package may have started it through the init system.
  for _ in $(seq 1 10); do answers && { log "started by the package"; exit 0; }; sleep 1; done
fi

# Listen on loopback only unless the machine has its own configuration, and
# name the node rabbit@localhost so that it starts even where the host name
# does not resolve (containers).
mkdir -p /etc/rabbitmq
if [ ! -s /etc/rabbitmq/rabbitmq.conf ]; then
  echo 'listeners.tcp.local = 127.0.0.1:5672' >/etc/rabbitmq/rabbitmq.conf
fi
if ! grep -qs '^NODENAME=' /etc/rabbitmq/rabbitmq-env.conf; then
  echo 'NODENAME=rabbit@localhost' >>/etc/rabbitmq/rabbitmq-env.conf
fi

# Debian's wrappers in /usr/sbin run the server and rabbitmqctl as the
# rabbitmq user, so every later rabbitmqctl (the test suite's restart hook)
# shares its Erlang cookie. Without them (or without that user) run the
# server from /usr/lib/rabbitmq/bin as whoever we are.
if [ -x /usr/sbin/rabbitmq-server ] && id rabbitmq >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  # A server once started as root leaves root-owned files the rabbitmq user
  # cannot write.
  chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq 2>/dev/null || true
  log "starting rabbitmq-server -detached (as user rabbitmq)"
  /usr/sbin/rabbitmq-server -detached
  ctl=/usr/sbin/rabbitmqctl
else
  log "starting rabbitmq-server -detached (as $(id -un))"
  /usr/lib/rabbitmq/bin/rabbitmq-server -detached
  ctl=/usr/lib/rabbitmq/bin/rabbitmqctl
fi
"$ctl" await_startup --timeout 120 >/dev/null 2>&1 || true
for _ in $(seq 1 120); do
  if answers; then
    log "answering on 127.0.0.1:5672 ($("$ctl" version 2>/dev/null || echo '?'))"
    exit 0
  fi
  sleep 1
done
log "RabbitMQ did not answer on 127.0.0.1:5672 within 2 minutes"
exit 1
