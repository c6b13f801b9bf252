"""Benchmarks for falcon-unlearning (step time, memory, MI estimators).

Start with ``python benchmarks/step.py --help``.
"""
