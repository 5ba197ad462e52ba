"""Churn: will a customer stop buying in the next H days (default 90), and why.

The labels and features at a cutoff come from :mod:`features.churn` (the same functions serving
calls); :mod:`training.churn.dataset` stacks several monthly cutoffs into the training, validation
and test sets, with the BG/NBD probability alive and expected purchases as extra features.
"""
