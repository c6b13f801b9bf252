"""The tools layer: everything around the method that a user runs, built on the core.

* :mod:`.cli` -- the ``falcon-unlearn`` command, one module per subcommand;
* :mod:`.demo` -- the offline demo (fictitious facts, tiny Llama, FALCON vs baselines), with its
  baselines (:mod:`.demo.baselines`);
* :mod:`.leaderboard` -- open-unlearning and demo results side by side, Pareto plot;
* :mod:`.sweep` -- the host's own train/eval scripts for several methods;
* :mod:`.common` -- what they share: the input-error convention, the one Markdown/CSV table writer,
  the one Pareto-front function, the benchmark registry, QA data files, local model loading.

The core (``falcon_plugin/*.py``) never imports this package (``tests/test_layers.py`` checks it);
tools import the core freely. Import-light: nothing heavy is imported here.
"""
