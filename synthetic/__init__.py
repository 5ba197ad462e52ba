"""Synthetic omnichannel histories drawn from known parameters, with the truth beside them.

The demo's data and the tests' planted truth (``rapport data generate``). Not part of the product's
layers: features, training and serving never import it, and the service's bento does not ship it.
"""
