#!/bin/sh
# Starts redis-server with deploy/redis.conf and ACL users instead of the
# password-less default user (switched off):
#   bots  the selector: password $REDIS_PASSWORD, keys bots:* only, no admin or
#         dangerous commands (compose: BOTS_REDIS_PASSWORD from .env; Kubernetes:
#         the Secret bots-redis-auth, key password);
#   ops   operators, only if $REDIS_ADMIN_PASSWORD is set: every command, for
#         backups and CONFIG (docs/operations.md, "Back up Redis").
# Only SHA-256 digests of the passwords are written, into a file that only the
# Redis user can read; no password appears on a command line.
set -eu
: "${REDIS_PASSWORD:?REDIS_PASSWORD is not set}"
umask 077
acl=${REDIS_ACL_FILE:-/tmp/bots-users.acl}
digest() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
{
  echo "user default off"
  # The selector only touches keys under bots: (bots_server/_redis_keys.py).
  echo "user bots on #$(digest "$REDIS_PASSWORD") ~bots:* &* +@all -@admin -@dangerous"
  if [ -n "${REDIS_ADMIN_PASSWORD:-}" ]; then
    echo "user ops on #$(digest "$REDIS_ADMIN_PASSWORD") ~* &* +@all"
  fi
} >"$acl"
unset REDIS_PASSWORD REDIS_ADMIN_PASSWORD
exec redis-server "${REDIS_CONF:-/usr/local/etc/redis/redis.conf}" --aclfile "$acl"
