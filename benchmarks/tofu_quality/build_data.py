"""Build the TOFU subset used by benchmarks/tofu_quality.sh as a local `locuslab/TOFU` dataset folder.

The host (open-unlearning) loads `load_dataset("locuslab/TOFU", name=CONFIG)`; `datasets` resolves a
local folder of that relative name (in the host's working directory) whose README.md front-matter lists
`configs:` with `config_name` + `data_files`. We write our subset files there under the config names
the host's TOFU configs ask for.

Subset (real TOFU records, JSON Lines, TOFU field names):
  target                  forget05 (10 fictitious authors x 20 QA)   -> fine-tune the "target" model
  retain                  forget05[:160] (its first 8 authors)       -> "retain" model + unlearning retain set
  forget01                forget05[160:] (= TOFU forget01, last 2 authors, 40 QA) -> forget set
  forget01_perturbed      TOFU forget01_perturbed as is
  holdout01               TOFU holdout01 as is (privleak / MIA holdout)
  retain_perturbed        forget05_perturbed rows of the 8 retained authors (same fields as TOFU's
                          retain_perturbed: question, answer, paraphrased_answer, perturbed_answer[5],
                          paraphrased_question); optionally the first N_PER_AUTHOR QA of each author
  real_authors_perturbed  first N_RA rows of TOFU real_authors_perturbed
  world_facts_perturbed   first N_WF rows of TOFU world_facts_perturbed
  relearn_train/relearn_test  even / odd rows of forget01 (relearning attack: train on one half,
                          measure on the other)
  unseen01(_perturbed)    TOFU forget10_perturbed rows of its first 2 authors, which are not in forget05:
                          fictitious authors no model here was trained on, as many QA as forget01 (a
                          reference for forget_quality without the retain model: the target model's truth
                          ratios on them, the `eval_unseen` stage)
Usage: build_data.py SRC_DIR OUT_DIR [N_PER_AUTHOR N_RA N_WF [K_FORGET N_RET_AUTHORS K_RETAIN]]
  K_FORGET (default 20): QA per forget author kept (forget01 and forget01_perturbed, holdout01 cut
  to the same size); N_RET_AUTHORS (8) / K_RETAIN (20): retained authors and their training QA.
  The defaults give the full subset above; smaller values are the CPU "micro" scale of tofu_quality.sh.
"""

import json
import os
import sys

src, out = sys.argv[1], sys.argv[2]
n_per_author = int(sys.argv[3]) if len(sys.argv) > 3 else 20
n_ra = int(sys.argv[4]) if len(sys.argv) > 4 else 100
n_wf = int(sys.argv[5]) if len(sys.argv) > 5 else 117
k_forget = int(sys.argv[6]) if len(sys.argv) > 6 else 20
n_ret_authors = int(sys.argv[7]) if len(sys.argv) > 7 else 8
k_retain = int(sys.argv[8]) if len(sys.argv) > 8 else 20


def read(name):
    with open(os.path.join(src, name + ".json")) as f:
        return [json.loads(line) for line in f if line.strip()]


f05, f05p, f01, f01p = (
    read("forget05"),
    read("forget05_perturbed"),
    read("forget01"),
    read("forget01_perturbed"),
)
assert len(f05) == 200 and len(f01) == 40
assert [(r["question"], r["answer"]) for r in f05[160:]] == [(r["question"], r["answer"]) for r in f01], (
    "forget01 must be the last 2 authors of forget05"
)
assert [(r["question"], r["answer"]) for r in f05p] == [(r["question"], r["answer"]) for r in f05]
need = {"question", "answer", "paraphrased_answer", "perturbed_answer", "paraphrased_question"}
assert all(need <= set(r) for r in f05p + f01p), "perturbed files lack TOFU fields"
ret_p = [r for a in range(n_ret_authors) for r in f05p[a * 20 : a * 20 + n_per_author]]
ret_train = [r for a in range(n_ret_authors) for r in f05[a * 20 : a * 20 + k_retain]]
fg = [i for a in range(2) for i in range(a * 20, a * 20 + k_forget)]
f01, f01p = [f01[i] for i in fg], [f01p[i] for i in fg]
f10p = read("forget10_perturbed")
assert len(f10p) == 400 and [(r["question"], r["answer"]) for r in f10p[200:]] == [
    (r["question"], r["answer"]) for r in f05
], "forget10 must end with forget05"
unseen = [f10p[i] for i in fg]  # forget10's first 2 authors: in no training set here
ra = read("real_authors_perturbed")[:n_ra]
wf = read("world_facts_perturbed")[:n_wf]
assert all({"question", "answer", "perturbed_answer"} <= set(r) for r in ra + wf)

splits = {
    "target": [{"question": r["question"], "answer": r["answer"]} for r in ret_train + f01],
    "retain": [{"question": r["question"], "answer": r["answer"]} for r in ret_train],
    "forget01": f01,
    "forget01_perturbed": f01p,
    "holdout01": read("holdout01")[: len(f01)],
    "retain_perturbed": ret_p,
    "real_authors_perturbed": ra,
    "world_facts_perturbed": wf,
    "relearn_train": f01[0::2],
    "relearn_test": f01[1::2],
    "unseen01": [{"question": r["question"], "answer": r["answer"]} for r in unseen],
    "unseen01_perturbed": unseen,
}
tmp = out + ".tmp"
os.makedirs(tmp, exist_ok=True)
for name, rows in splits.items():
    with open(os.path.join(tmp, name + ".json"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
with open(os.path.join(tmp, "README.md"), "w") as f:
    f.write("---\nconfigs:\n")
    for name in splits:
        f.write(f"- config_name: {name}\n  data_files:\n  - split: train\n    path: {name}.json\n")
    f.write("---\n# TOFU subset for falcon-unlearning benchmarks/tofu_quality.sh (real TOFU records, MIT)\n")
if os.path.exists(out):
    import shutil

    shutil.rmtree(out)
os.rename(tmp, out)
print({k: len(v) for k, v in splits.items()})
