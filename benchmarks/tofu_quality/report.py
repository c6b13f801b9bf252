"""Leaderboard for benchmarks/tofu_quality.sh: reads $WORK/evals/{target,retain,retain_seed<N>}/
TOFU_SUMMARY.json, $WORK/unlearn/<METHOD>_lr<LR>[_seed<N>]/{TOFU_SUMMARY.json,seconds}, the relearning
attack's $WORK/attacks/<run>/attacks.json (``falcon-unlearn attack``, docs/attacks.md) and writes,
atomically, into OUT: tofu_leaderboard.md / .csv / .json and tofu_pareto.png.

Selection (per method, over its lr sweep): TOFU's protocol compares methods by forget_quality (KS-test
p-value of the forget truth ratios against the retain model) at a model_utility close to the target's.
We keep the runs with model_utility >= 0.95 x target's and take the highest forget_quality; when no run
of a method keeps that utility, its highest-forget_quality run is shown and flagged. Selection and the
Pareto front use the grid's runs (the host's seed 0); runs repeated with other seeds (``_seed<N>``, the
script's SEED) are listed and summarised per (method, lr) in a seeds section: how far one run's
forget_quality can be trusted. Retain models fine-tuned again with another seed (``retain_seed<N>``, the
script's retain_seed stage) never saw the forget set: their forget_quality against the reference retain
model is what a perfect unlearner scores in this protocol.
Usage: report.py WORK OUT
"""

import csv
import glob
import io
import json
import math
import os
import re
import statistics
import sys

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import ks_2samp
from tofu_eval import truth_ratios_by_index

from falcon_plugin.tools.attacks import leaderboard_columns, read_result
from falcon_plugin.tools.common.pareto import pareto_front
from falcon_plugin.tools.common.tables import markdown_table

work, out = sys.argv[1], sys.argv[2]
RUN_NAME = re.compile(r"(?P<method>.+)_lr(?P<lr>[^_]+)(?:_seed(?P<seed>\d+))?")
KEYS = ["forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE"]


def load(p):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def atomic(path, data, mode="w"):
    tmp = path + ".tmp"
    with open(tmp, mode) as f:
        f.write(data)
    os.replace(tmp, path)


def forget_truth_ratios(eval_json):
    """Per-question forget truth ratios (perturbed / paraphrased answer probability) of a TOFU_EVAL.json,
    in question order; None when it has none."""
    ratios = truth_ratios_by_index(load(eval_json))
    return np.array([ratios[k] for k in sorted(ratios, key=int)], dtype=float) if ratios else None


def truth_ratio_shape(ratios, reference):
    """Where a run's forget truth ratios lie against the retain model's: the quantiles, the share of
    questions whose true answer became less likely than the wrong ones (ratio > 1), and the KS statistic
    D behind the host's forget_quality (its p-value; ``ks_2samp`` as the host computes it)."""
    if ratios is None or reference is None or not len(ratios) or not len(reference):
        return {}
    q10, q50, q90 = np.quantile(ratios, [0.1, 0.5, 0.9])
    return {
        "tr_q10": float(q10),
        "tr_median": float(q50),
        "tr_q90": float(q90),
        "tr_above_1": float(np.mean(ratios > 1)),
        "ks_D": float(ks_2samp(ratios, reference).statistic),
    }


TRAIN_LOG = re.compile(r"'falcon/(forget_loss|retain_loss|grad_cosine|projection_rate)': ([-+0-9.eE]+)")


def falcon_diagnostics(log_path):
    """FALCON's per-step training logs (the trainer's ``falcon/*`` entries, in the host run's log
    ``$WORK/logs/ul_<run>.log``): mean cos(g_F, g_R) and share of projected tensors (the projection of
    Eq. 3 acts when the cosine is negative), forget (InfoNCE) and retain (1 - cos) loss at the first and
    last step. Empty for other methods or a missing log."""
    try:
        with open(log_path, errors="replace") as f:
            text = f.read()
    except OSError:
        return {}
    series = {}
    for key, value in TRAIN_LOG.findall(text):
        series.setdefault(key, []).append(float(value))
    if not series.get("grad_cosine") or not series.get("forget_loss") or not series.get("retain_loss"):
        return {}
    return {
        "steps": len(series["forget_loss"]),
        "grad_cosine_mean": statistics.fmean(series["grad_cosine"]),
        "projection_rate_mean": statistics.fmean(series.get("projection_rate") or [0.0]),
        "forget_loss_first": series["forget_loss"][0],
        "forget_loss_last": series["forget_loss"][-1],
        "retain_loss_last": series["retain_loss"][-1],
    }


def load_attack(run):
    """The relearning attack's result of one run (``falcon-unlearn attack``), or None."""
    path = os.path.join(work, "attacks", run, "attacks.json")
    if not os.path.exists(path):
        return None
    try:
        return read_result(path)
    except ValueError as err:
        print(f"skipping {err}", file=sys.stderr)
        return None


protocol = None
RETAIN_SEED = re.compile(r"retain_seed(\d+)")
evals_dir = os.path.join(work, "evals")
retain_seeds = sorted(
    (n for n in (os.listdir(evals_dir) if os.path.isdir(evals_dir) else []) if RETAIN_SEED.fullmatch(n)),
    key=lambda n: int(RETAIN_SEED.fullmatch(n)[1]),
)
refs = {k: load(os.path.join(evals_dir, k, "TOFU_SUMMARY.json")) for k in ("target", "retain", *retain_seeds)}
ref_ratios = {k: forget_truth_ratios(os.path.join(evals_dir, k, "TOFU_EVAL.json")) for k in refs}
probes = {k: load(os.path.join(evals_dir, f"probe_{k}.json")) for k in ("base", "target")}
runs = []
udir = os.path.join(work, "unlearn")

for d in sorted(glob.glob(os.path.join(udir, "*"))):
    name = os.path.basename(d)
    done = os.path.exists(os.path.join(d, "DONE"))
    s = load(os.path.join(d, "TOFU_SUMMARY.json")) if done else None
    partial = False
    if s is None:  # unfinished run: the metrics its in-training eval got to (marked partial)
        cands = glob.glob(os.path.join(d, "checkpoint-*", "evals", "TOFU_SUMMARY.json")) + glob.glob(
            os.path.join(d, "evals.tmp", "TOFU_SUMMARY.json")
        )
        s = max((load(c) or {} for c in cands), key=len, default=None)  # the furthest-along eval
        partial = True
    if not s:
        continue
    name = name[:-4] if name.endswith(".tmp") else name
    parsed = RUN_NAME.fullmatch(name)
    if parsed is None:
        print(f"skipping {d}: not named <METHOD>_lr<LR>[_seed<N>]", file=sys.stderr)
        continue
    r = {
        "method": parsed["method"] + (" (partial)" if partial else ""),
        "lr": float(parsed["lr"]),
        "seed": int(parsed["seed"] or 0),
        "run": name,
        "partial": partial,
        **{k: s.get(k) for k in KEYS},
    }
    r["seconds"] = load(os.path.join(d, "seconds"))
    r.update(truth_ratio_shape(forget_truth_ratios(os.path.join(d, "TOFU_EVAL.json")), ref_ratios["retain"]))
    r.update(falcon_diagnostics(os.path.join(work, "logs", f"ul_{name}.log")))
    attack = load_attack(name)
    if attack:
        c = leaderboard_columns(attack)
        r.update(
            relearn_prob_before=c.get("relearn/forget_prob_before"),
            relearn_prob_after=c.get("relearn/forget_prob_after"),
            relearn_rouge_before=c.get("relearn/forget_rougeL_recall_before"),
            relearn_rouge_after=c.get("relearn/forget_rougeL_recall_after"),
        )
        protocol = protocol or attack.get("protocol", {}).get("relearn")
    runs.append(r)

mu_t = (refs["target"] or {}).get("model_utility")
for r in runs:
    r["mu_ratio"] = r["model_utility"] / mu_t if mu_t and r["model_utility"] is not None else None
    r["keeps_utility"] = r["mu_ratio"] is not None and r["mu_ratio"] >= 0.95
grid = [r for r in runs if r["seed"] == 0]  # selection and the front: the lr grid at the host's seed
best = {}
for r in grid:  # a screen (EVAL_SCOPE=forget, no model_utility) is never selected
    cand = [x for x in grid if x["method"] == r["method"] and x["model_utility"] is not None]
    ok = [x for x in cand if x["keeps_utility"]] or cand
    if ok:
        best[r["method"]] = max(ok, key=lambda x: (x["forget_quality"] or 0, x["model_utility"] or 0))
full = [r for r in grid if r["forget_quality"] is not None and r["model_utility"] is not None]
on_front = pareto_front([(r["forget_quality"], r["model_utility"]) for r in full])
front_ids = {id(r) for r, on in zip(full, on_front, strict=True) if on}
for r in runs:
    r["selected"] = best.get(r["method"]) is r
    r["pareto"] = id(r) in front_ids


def table(columns, rows):
    """Markdown lines of a table of pre-formatted cells (the package's one table writer)."""
    return markdown_table(columns, rows, align_numbers=False).rstrip("\n")


def cells(r):
    return [f(r.get(c)) if c != "pareto" else ("yes" if r[c] else "no") for c in cols]


def f(x, nd=3):
    if x is None:
        return "—"
    if isinstance(x, float) and (abs(x) < 1e-3 and x != 0):
        return f"{x:.2e}"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


cols = [
    "method",
    "lr",
    "seed",
    "forget_quality",
    "model_utility",
    "mu_ratio",
    "forget_truth_ratio",
    "forget_Q_A_Prob",
    "forget_Q_A_ROUGE",
    "relearn_prob_before",
    "relearn_prob_after",
    "relearn_rouge_before",
    "relearn_rouge_after",
    "pareto",
    "seconds",
]
md = [
    "# TOFU (subset) leaderboard: FALCON vs open-unlearning baselines",
    "",
    "Measured by `benchmarks/tofu_quality.sh` (setup, scale and caveats: [README.md](README.md)).",
    "",
]
md += [
    "## Reference models",
    "",
    table(["model", *KEYS], [[k, *(f(s.get(x)) for x in KEYS)] for k, s in refs.items() if s]),
]
ceiling = [
    (k, refs[k]["forget_quality"]) for k in retain_seeds if (refs[k] or {}).get("forget_quality") is not None
]
if ceiling:
    md.append(
        "\nRetain models fine-tuned again with another seed (the same data and recipe; they never saw the "
        "forget set) score forget_quality "
        + ", ".join(f"{f(fq)} ({k})" for k, fq in ceiling)
        + " against the reference retain model: what a perfect unlearner scores in this protocol."
    )
control = load_attack("reference-retain")
control_cols = leaderboard_columns(control) if control else {}
if control:
    md.append(
        "\nRelearning control (the same attack on the retain model, which never saw the forget set): "
        f"relearn_test answer prob {f(control_cols.get('relearn/forget_prob_before'))} -> "
        f"{f(control_cols.get('relearn/forget_prob_after'))}, ROUGE-L recall "
        f"{f(control_cols.get('relearn/forget_rougeL_recall_before'))} -> "
        f"{f(control_cols.get('relearn/forget_rougeL_recall_after'))}: what relearning one half of the "
        "forget set teaches about the other half without any knowledge to recover"
    )
for k, p in probes.items():
    if p:
        md.append(
            f"\nProbe `{k}` (forget set, probe.py): answer prob {f(p['forget01']['prob'])}, "
            f"ROUGE-L recall {f(p['forget01']['rougeL_recall'])}"
        )
md += [
    "",
    "## Best run per method",
    "",
    "Selection: highest forget_quality among the lr sweep's runs with model_utility >= 0.95 x target's "
    "(flag `!` = no run kept that utility; its highest-forget_quality run is shown).",
    "",
]
best_rows = []
for _method, r in sorted(best.items(), key=lambda kv: -(kv[1]["forget_quality"] or 0)):
    row = cells(r)
    if not r["keeps_utility"]:
        row[0] += " !"
    best_rows.append(row)
md += [
    table(cols, best_rows),
    "",
    "## All runs",
    "",
    table(cols, [cells(r) for r in sorted(runs, key=lambda r: (r["method"], r["lr"], r["seed"]))]),
]


def seed_groups(runs):
    """Per (method, lr) run with more than one seed: its forget_quality per seed, their median and range,
    and the utility kept (mu_ratio) per seed; ordered like the board."""
    groups = {}
    for r in runs:
        if r["forget_quality"] is not None:  # screens (no model_utility) too: their utility cells stay empty
            groups.setdefault((r["method"], r["lr"]), []).append(r)
    rows = []
    for (method, lr), rs in sorted(groups.items()):
        if len(rs) < 2:
            continue
        rs = sorted(rs, key=lambda r: r["seed"])
        fq = [r["forget_quality"] for r in rs]
        after = [(r["seed"], r["relearn_prob_after"]) for r in rs if r.get("relearn_prob_after") is not None]
        rows.append(
            {
                "method": method,
                "lr": lr,
                "seeds": " ".join(str(r["seed"]) for r in rs),
                "forget_quality per seed": " / ".join(f(x) for x in fq),
                "fq_median": statistics.median(fq),
                "fq_min": min(fq),
                "fq_max": max(fq),
                "mu_ratio per seed": " / ".join(f(r["mu_ratio"]) for r in rs),
                "keeps_utility": f"{sum(r['keeps_utility'] for r in rs)}/{len(rs)}",
                "relearn_prob_after (seed: value)": " / ".join(f"{seed}: {f(x)}" for seed, x in after)
                or None,
            }
        )
    return rows


seeded = seed_groups(runs)
if seeded:
    md += [
        "",
        "## Seeds",
        "",
        "The same run with other seeds (the host's `trainer.args.seed`: data order, the retain item drawn "
        "for each forget item and FALCON's POV vector and Step-1 samples); the board above uses seed 0. "
        "forget_quality is one KS p-value over 40 questions, so one seed ranks runs only roughly (the "
        "reference rows' retain_seed<N> show what a model that never saw the forget set scores).",
        "",
        table(list(seeded[0]), [[f(v) for v in row.values()] for row in seeded]),
    ]
DIAG_COLS = [
    "steps",
    "grad_cosine_mean",
    "projection_rate_mean",
    "forget_loss_first",
    "forget_loss_last",
    "retain_loss_last",
]
diagnosed = [r for r in runs if "grad_cosine_mean" in r]
if diagnosed:
    md += [
        "",
        "## FALCON's training diagnostics",
        "",
        "From each FALCON run's per-step logs (`falcon/*` in `logs/ul_<run>.log`): the mean cosine between "
        "the forget and retain gradients, the mean share of trainable tensors whose forget gradient was "
        "projected (cosine < 0), the forget (InfoNCE) loss at the first and last step and the retain "
        "(1 - cos) loss at the last.",
        "",
        table(
            ["run", *DIAG_COLS, "forget_quality", "mu_ratio"],
            [
                [r["run"], *(f(r[c]) for c in DIAG_COLS), f(r["forget_quality"]), f(r["mu_ratio"])]
                for r in sorted(diagnosed, key=lambda r: (r["method"], r["lr"], r["seed"]))
            ],
        ),
    ]
TR_COLS = ["tr_q10", "tr_median", "tr_q90", "tr_above_1", "ks_D"]
shaped = [r for r in runs if "ks_D" in r]
if shaped:
    ref_rows = [
        [k, *map(f, truth_ratio_shape(x, ref_ratios["retain"]).values()), f(refs[k].get("forget_quality"))]
        for k, x in ref_ratios.items()
        if x is not None and refs.get(k)
    ]
    run_rows = [
        [r["run"], *(f(r[c]) for c in TR_COLS), f(r["forget_quality"])]
        for r in sorted(shaped, key=lambda r: (r["method"], r["lr"], r["seed"]))
    ]
    md += [
        "",
        "## Forget truth ratios against the retain model",
        "",
        "Per forget question the host's truth ratio is P(perturbed answers) / P(paraphrased answer) "
        "(`TOFU_EVAL.json`, `forget_truth_ratio.value_by_index`); forget_quality is the KS-test p-value of "
        "a run's 40 ratios against the retain model's, so it is high only when the whole distribution "
        "matches: too little forgetting leaves the ratios low (the target's), too much pushes them above "
        "the retain model's. tr_above_1 = share of questions whose true answer became less likely than the "
        "wrong ones; ks_D = the KS statistic.",
        "",
        table(["run", *TR_COLS, "forget_quality"], ref_rows + run_rows),
    ]
md += [
    "",
    "Columns: forget_quality / model_utility / forget_truth_ratio / forget_Q_A_Prob / forget_Q_A_ROUGE = "
    "the host's TOFU evaluator (`TOFU_SUMMARY.json`); mu_ratio = model_utility / target's; relearn_* = "
    "relearning attack (`falcon-unlearn attack --attacks relearn`, docs/attacks.md: fine-tune on half of the "
    "forget set, measure answer probability and ROUGE-L recall on the other half, before -> after; "
    + (
        "protocol: OPTML-Group/Unlearn-Simple's, here {steps} steps, lr {learning_rate:g}, effective batch "
        "{effective_batch}, warm-up {warmup_steps} steps".format(**protocol)
        if protocol
        else "not run"
    )
    + "); pareto = not dominated on (forget_quality, "
    "model_utility) by another run; seconds = wall time of the host run (unlearning + its final eval) on the "
    "shared CPU.",
]
os.makedirs(out, exist_ok=True)
atomic(os.path.join(out, "tofu_leaderboard.md"), "\n".join(md) + "\n")
buf = io.StringIO()
w = csv.DictWriter(buf, fieldnames=cols + ["selected", "keeps_utility", "run"], extrasaction="ignore")
w.writeheader()
for r in runs:
    w.writerow(r)
atomic(os.path.join(out, "tofu_leaderboard.csv"), buf.getvalue())
atomic(
    os.path.join(out, "tofu_leaderboard.json"),
    json.dumps(
        {
            "references": refs,
            "probes": {
                k: (p and {"prob": p["forget01"]["prob"], "rougeL_recall": p["forget01"]["rougeL_recall"]})
                for k, p in probes.items()
            },
            "relearn_control": control_cols or None,
            "runs": runs,
            "seeds": seeded,
        },
        indent=1,
    ),
)

matplotlib.use("Agg")

fig, ax = plt.subplots(figsize=(6.5, 4.5))
colors = {}
for r in full:
    c = colors.setdefault(r["method"], f"C{len(colors)}")
    y = math.log10(max(r["forget_quality"], 1e-30))
    ax.scatter(
        r["model_utility"],
        y,
        color=c,
        s=80 if r["selected"] else 25,
        marker="o" if r["selected"] else "x",
        label=r["method"] if r["selected"] else None,
        zorder=3,
    )
    ax.annotate(
        f"{r['lr']:.0e}", (r["model_utility"], y), fontsize=6, xytext=(3, 3), textcoords="offset points"
    )
for r in runs:
    if r["seed"] and r["forget_quality"] is not None and r["model_utility"] is not None:
        y = math.log10(max(r["forget_quality"], 1e-30))
        ax.scatter(r["model_utility"], y, color=colors.get(r["method"], "grey"), s=10, marker=".", zorder=2)
front = sorted([r for r in runs if r["pareto"]], key=lambda r: r["model_utility"])
if front:
    ax.plot(
        [r["model_utility"] for r in front],
        [math.log10(max(r["forget_quality"], 1e-30)) for r in front],
        "k--",
        lw=0.8,
        label="Pareto front",
    )
for k, mk in (("target", "s"), ("retain", "*")):
    s = refs[k]
    if s and s.get("forget_quality") is not None:
        ax.scatter(
            s["model_utility"],
            math.log10(max(s["forget_quality"], 1e-30)),
            marker=mk,
            color="k",
            s=90,
            label=k,
        )
    elif s and k == "retain":
        ax.axvline(s["model_utility"], color="grey", lw=0.6, ls=":", label="retain model utility")
for i, (k, fq) in enumerate(ceiling):
    mu = refs[k].get("model_utility")
    if mu is not None:
        y = math.log10(max(fq, 1e-30))
        ax.scatter(mu, y, marker="*", color="grey", s=60, label="retain, other seeds" if i == 0 else None)
if not full:
    ax.text(
        0.5,
        0.5,
        "no unlearning run finished its host evaluation\n(see README.md)",
        ha="center",
        va="center",
        transform=ax.transAxes,
        fontsize=9,
    )
if mu_t:
    ax.axvline(0.95 * mu_t, color="red", lw=0.6, ls=":", label="0.95 x target utility")
    ax.axvline(mu_t, color="k", lw=0.6, ls="-.", label="target utility")
ax.set_xlabel("model_utility (host TOFU eval)")
ax.set_ylabel("log10 forget_quality")
ax.set_title("TOFU subset, SmolLM2-135M-Instruct: unlearning runs")
ax.legend(fontsize=7)
fig.tight_layout()
buf = io.BytesIO()
fig.savefig(buf, format="png", dpi=130)
atomic(os.path.join(out, "tofu_pareto.png"), buf.getvalue(), "wb")
print(f"wrote {out}: {len(runs)} runs")
