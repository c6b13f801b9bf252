"""Hydra configs shipped with falcon-unlearning (``pkg://falcon_plugin/configs`` on the search path)."""
