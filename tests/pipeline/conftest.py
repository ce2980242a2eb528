"""The pipeline front-end tests share the runner tests' fixtures (test pipelines, a runs folder with MLflow)."""

from tests.runner.conftest import mlflow_db, runs  # noqa: F401
