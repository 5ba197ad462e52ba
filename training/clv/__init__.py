"""Customer lifetime value: purchase models (BG/NBD, MBG/NBD, Pareto/NBD) and the Gamma-Gamma spend
model, fitted with ``lifetimes`` behind one adapter (:mod:`training.clv.adapter`), and the
scikit-learn style :class:`training.clv.model.ClvModel` that scores every customer."""
