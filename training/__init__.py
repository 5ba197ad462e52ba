"""Training: CLV, churn and recommender models, their evaluation and the pipeline that promotes them.

Imports ``features``, never ``serving``. The model issues fill this package."""
