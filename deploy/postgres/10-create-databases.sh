#!/usr/bin/env bash
# Runs once, when the postgres container initialises an empty data volume
# (/docker-entrypoint-initdb.d). One server, two databases, two users that cannot read each other:
#   salespred  the reporting database (fact_opportunity, dim_seller, ...), user salespred
#   dagster    Dagster's run, event-log and schedule storage, user dagster
# Passwords come from the environment (POSTGRES_SALESPRED_PASSWORD, DAGSTER_PG_PASSWORD) and reach psql
# as variables, quoted by psql itself; they never appear in a file or on a command line.
# A running server is not touched: to rotate a password see "Rotating credentials" in README.md.
set -euo pipefail

: "${POSTGRES_SALESPRED_PASSWORD:?POSTGRES_SALESPRED_PASSWORD must be set (see .env.example)}"
: "${DAGSTER_PG_PASSWORD:?DAGSTER_PG_PASSWORD must be set (see .env.example)}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v salespred_password="$POSTGRES_SALESPRED_PASSWORD" \
  -v dagster_password="$DAGSTER_PG_PASSWORD" <<'SQL'
CREATE ROLE salespred LOGIN PASSWORD :'salespred_password';
CREATE ROLE dagster LOGIN PASSWORD :'dagster_password';
CREATE DATABASE salespred OWNER salespred;
CREATE DATABASE dagster OWNER dagster;
REVOKE ALL ON DATABASE salespred FROM PUBLIC;
REVOKE ALL ON DATABASE dagster FROM PUBLIC;
SQL

# PostgreSQL 15+ no longer lets every user create objects in `public`; each owner gets its schema.
for db in salespred dagster; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$db" \
    -c "ALTER SCHEMA public OWNER TO $db;"
done
