#!/bin/sh
# Starts redis-server with deploy/redis.conf and ACL users, so that nothing
# reaches Redis without a password:
#   bots     the selector: password $REDIS_PASSWORD, keys bots:* only, no admin
#            or dangerous commands (compose: BOTS_REDIS_PASSWORD from .env;
#            Kubernetes: the Secret bots-redis-auth, key password);
#   default  operators: every command, password $REDIS_ADMIN_PASSWORD; without
#            it nobody can log in as default (docs/operations.md, "Back up Redis").
# The default user keeps every permission on purpose: Redis 7.0 replays the AOF's
# MULTI/EXEC blocks as the default user, and a restricted default user makes that
# replay fail on restart, dropping the data (seen with Debian's redis 7.0.15).
# Only SHA-256 digests of the passwords are written, into a file that only the
# Redis user can read; no password appears on a command line.
set -eu
: "${REDIS_PASSWORD:?REDIS_PASSWORD is not set}"
umask 077
acl=${REDIS_ACL_FILE:-/tmp/bots-users.acl}
digest() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
admin=""
if [ -n "${REDIS_ADMIN_PASSWORD:-}" ]; then
  admin=" #$(digest "$REDIS_ADMIN_PASSWORD")"
fi
{
  # resetpass without nopass: no password-less logins at all.
  echo "user default on resetpass${admin} ~* &* +@all"
  # The selector only touches keys under bots: (bots_server/_redis_keys.py).
  echo "user bots on #$(digest "$REDIS_PASSWORD") ~bots:* &* +@all -@admin -@dangerous"
} >"$acl"
unset REDIS_PASSWORD REDIS_ADMIN_PASSWORD
exec redis-server "${REDIS_CONF:-/usr/local/etc/redis/redis.conf}" --aclfile "$acl"
