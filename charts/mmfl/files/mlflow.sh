#!/bin/sh
# The MLflow server of the chart, in two steps: `mlflow.sh migrate` (init container: schema
# upgrades of the tracking store and, with auth, of the basic-auth user store; a no-op when the
# schema is current) and `mlflow.sh serve` (the server). Settings come from the environment:
#   DB_URI                 backend store (postgresql://user@host:5432/db; libpq reads PGPASSWORD)
#   ARTIFACTS_DESTINATION  s3://bucket[/prefix] (or a file URI) behind --serve-artifacts
#   MLFLOW_AUTH            "true": --app-name basic-auth, users in DB_URI, admin from
#                          MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY set
#   AUTH_DEFAULT_PERMISSION, MLFLOW_HOST, MLFLOW_PORT, MLFLOW_WORKERS, ALLOWED_HOSTS (comma-separated)
set -eu
: "${DB_URI:?}" "${MLFLOW_AUTH:=false}"
case "${1:-}" in
  migrate)
    # = `mlflow db upgrade $DB_URI` and, with auth, `python -m mlflow.server.auth db upgrade --url $DB_URI`,
    # run as MLflow's own CLI commands in one process (one import of mlflow instead of two)
    python3 -c '
import sys
from mlflow.cli import cli
cli.main(["db", "upgrade", sys.argv[1]], standalone_mode=False)
if sys.argv[2] == "true":
    from mlflow.server.auth.cli import commands
    commands.main(["db", "upgrade", "--url", sys.argv[1]], standalone_mode=False)
' "$DB_URI" "$MLFLOW_AUTH"
    ;;
  serve)
    : "${ARTIFACTS_DESTINATION:?}"
    set -- --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-2}" \
      --backend-store-uri "$DB_URI" --serve-artifacts --artifacts-destination "$ARTIFACTS_DESTINATION"
    if [ -n "${ALLOWED_HOSTS:-}" ]; then
      set -- "$@" --allowed-hosts "$ALLOWED_HOSTS"
    fi
    if [ "$MLFLOW_AUTH" = true ]; then
      config="${TMPDIR:-/tmp}/mlflow-basic-auth.ini"
      printf '[mlflow]\ndefault_permission = %s\ndatabase_uri = %s\nauthorization_function = %s\n' \
        "${AUTH_DEFAULT_PERMISSION:-READ}" "$DB_URI" "mlflow.server.auth:authenticate_request_basic_auth" > "$config"
      export MLFLOW_AUTH_CONFIG_PATH="$config"
      set -- "$@" --app-name basic-auth
    fi
    exec mlflow server "$@"
    ;;
  *)
    echo "usage: mlflow.sh migrate|serve" >&2
    exit 2
    ;;
esac
