"""Recommendations: which products to show a customer, evaluated on the purchases of a held-out period.

:mod:`training.recommend.metrics` holds the ranking metrics (precision, recall, NDCG, MAP and hit
rate at k, and catalogue coverage), each with one documented definition. They take plain mappings
from customer id to a ranked list of item ids, so any model (an ``implicit`` factorisation, a repeat
purchase baseline, a popularity list) is measured the same way, over all test purchases and over the
items that are new to each customer.
"""
