"""Serving: the BentoML service that loads promoted models and calls ``features`` for every feature.

Never imports training code that fits models. The serving issue fills this package."""
