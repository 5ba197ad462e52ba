"""Training: CLV, churn and recommender models, their evaluation and the pipeline that promotes them.

Imports ``features``, never ``serving``.
"""

import os

# The product never reports usage anywhere. MLflow decides about its telemetry when it is imported,
# so the default is set here, before any training module imports mlflow
# (export MLFLOW_DISABLE_TELEMETRY=false to opt in).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
