"""Hydra plugin package of falcon-unlearning (``hydra_plugins`` itself is a namespace package)."""
