#!/bin/bash
# Runs once, when the postgres container initialises an empty data volume
# (/docker-entrypoint-initdb.d): one role and one database each for the Dagster instance and the
# MLflow tracking server. The passwords come from the container's environment
# (DAGSTER_POSTGRES_PASSWORD, MLFLOW_POSTGRES_PASSWORD; see docker/.env.example) and reach SQL
# as psql variables, so no quoting in them can break out of the string.
#
# A volume that already holds a cluster skips this script: to change a password later, use
# `ALTER ROLE ... PASSWORD` (docs/deployment.md, "Secrets").
set -euo pipefail

: "${DAGSTER_POSTGRES_PASSWORD:?DAGSTER_POSTGRES_PASSWORD is not set}"
: "${MLFLOW_POSTGRES_PASSWORD:?MLFLOW_POSTGRES_PASSWORD is not set}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v dagster_password="$DAGSTER_POSTGRES_PASSWORD" \
    -v mlflow_password="$MLFLOW_POSTGRES_PASSWORD" <<'SQL'
CREATE ROLE dagster LOGIN PASSWORD :'dagster_password';
CREATE DATABASE dagster OWNER dagster;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
REVOKE ALL ON DATABASE dagster FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
SQL
