"""Helpers the tools share (and only the tools: the core never imports them).

* :mod:`.errors` -- :class:`~.errors.InputError`, the one exception the CLI turns into
  ``falcon-unlearn: error: ...`` and exit code 2;
* :mod:`.tables` -- the one Markdown / CSV table writer;
* :mod:`.pareto` -- the one Pareto-front function;
* :mod:`.benchmarks` -- the benchmark registry (TOFU, MUSE, WMDP, ...) serving sweep and leaderboard;
* :mod:`.qa_files` -- reading user question/answer files; :mod:`.hf` -- loading a local HF causal LM.

Import-light: nothing heavy is imported here.
"""
