"""``falcon-unlearn demo`` and the pieces it is built from.

* :mod:`.facts` -- procedural TOFU-like facts about fictitious people, split by person;
* :mod:`.tokenizer` / :mod:`.model` -- a local word-level tokenizer and a tiny Llama from a config;
* :mod:`.finetune` -- knowledge injection until the model knows every fact;
* :mod:`.methods` / :mod:`.presets` -- FALCON, GradDiff and RMU runs at one step budget, tuned settings;
* :mod:`.baselines` -- the GradDiff and RMU-style trainers the demo compares FALCON with;
* :mod:`.metrics` -- answer probability and ROUGE-L recall (greedy decoding);
* :mod:`.runner` -- the whole pipeline and its outputs; :mod:`.plots` -- the forget-vs-retain scatter.

User data files, local models and tables come from :mod:`falcon_plugin.tools.common`.
Import-light: nothing heavy is imported here.
"""
