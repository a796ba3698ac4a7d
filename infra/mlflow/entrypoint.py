"""Start the MLflow tracking server with database credentials read from Secrets Manager.

The password lives only in Secrets Manager, where RDS generates and rotates it. It reaches
MLflow through this process's environment, never argv, a file or a Kubernetes Secret. After a
rotation new connections fail, the liveness probe (which queries the database) fails, and the
restarted pod reads the new password.
"""

import json
import os

import boto3
from sqlalchemy.engine import URL


def backend_store_uri() -> str:
    """Build the SQLAlchemy URI of the RDS database, TLS verified against the RDS CA bundle."""
    response = boto3.client("secretsmanager").get_secret_value(SecretId=os.environ["DB_SECRET_ARN"])
    login = json.loads(response["SecretString"])
    return URL.create(
        "postgresql+psycopg2",
        username=login["username"],
        password=login["password"],
        host=os.environ["DB_HOST"],
        port=int(os.environ["DB_PORT"]),
        database=os.environ["DB_NAME"],
        query={"sslmode": "verify-full", "sslrootcert": os.environ["DB_CA_BUNDLE"]},
    ).render_as_string(hide_password=False)


def main() -> None:
    """Replace this process with `mlflow server` (artifacts proxied to S3, port 5000)."""
    os.environ["MLFLOW_BACKEND_STORE_URI"] = backend_store_uri()
    os.execvp("mlflow", ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--serve-artifacts"])


if __name__ == "__main__":
    main()
