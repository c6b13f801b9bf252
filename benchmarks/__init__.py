"""Benchmarks for falcon-unlearning (issue 5); run ``python benchmarks/step.py --help``."""
