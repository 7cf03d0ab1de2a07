#!/bin/sh
# Writes the secrets docker-compose.yml needs into an env file (default .env, which
# `docker compose` reads and git ignores): random passwords for Redis (the selector's
# user and the admin, Redis's default user) and for Grafana's admin. Keeps an existing file, so the Redis volume's password never changes
# under it. Usage: sh deploy/compose-env.sh [FILE]   (or `make compose-env`)
set -eu
file=${1:-.env}
if [ -e "$file" ]; then
  echo "$file exists; keeping it"
  exit 0
fi
rand() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
umask 077
{
  echo "# Written by deploy/compose-env.sh; keep it out of version control."
  echo "BOTS_REDIS_PASSWORD=$(rand)"
  echo "BOTS_REDIS_ADMIN_PASSWORD=$(rand)"
  echo "GRAFANA_ADMIN_PASSWORD=$(rand)"
} > "$file"
echo "wrote $file (BOTS_REDIS_PASSWORD, BOTS_REDIS_ADMIN_PASSWORD, GRAFANA_ADMIN_PASSWORD)"
