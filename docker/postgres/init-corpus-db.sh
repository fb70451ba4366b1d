#!/usr/bin/env bash
# Run once by the postgres image's entrypoint, when its data volume is first initialised: the role and
# database that hold the sample corpus (`documents`) the DAGs read through connection hubbeam_corpus_db.
# Names and password come from the postgres service's CORPUS_DB_* variables (docker-compose.yaml).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v corpus_user="$CORPUS_DB_USER" -v corpus_password="$CORPUS_DB_PASSWORD" -v corpus_db="$CORPUS_DB_NAME" <<'SQL'
CREATE ROLE :"corpus_user" LOGIN PASSWORD :'corpus_password';
CREATE DATABASE :"corpus_db" OWNER :"corpus_user";
SQL
