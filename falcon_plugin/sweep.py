"""``falcon-unlearn sweep``: run open-unlearning's own scripts for several methods, then the leaderboard.

For every method (and learning rate, with ``--lrs``) the sweep runs, in the host checkout and with
the same experiment config so every method gets the same budget:

1. ``python src/train.py --config-name=unlearn.yaml experiment=unlearn/<bench>/default.yaml trainer=<M>
   task_name=<task> ...``, which writes ``saves/unlearn/<task>``;
2. ``python src/eval.py experiment=eval/<bench>/default.yaml ... paths.output_dir=saves/unlearn/<task>/evals``,
   as the host's ``scripts/*_unlearn.sh`` do.

A run is complete when ``saves/unlearn/<task>/.falcon_sweep_complete.json`` exists and records the
same commands; it is written atomically only after both steps succeed, so an interrupted sweep
resumes where it stopped. A failing method is logged with its log file and the sweep goes on.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .demo.errors import InputError
from .io import atomic_write_json

logger = logging.getLogger(__name__)
MARKER = ".falcon_sweep_complete.json"
PLUGIN_TRAINERS = ("FALCON",)


@dataclass(frozen=True)
class BenchmarkRecipe:
    """How the host's scripts run one benchmark."""

    name: str
    model: str
    split_key: str
    split: str
    unlearn_experiment: str
    eval_experiment: str
    summary_file: str
    extra_splits: dict[str, str] = field(default_factory=dict)
    """Further split keys for src/train.py (the unlearn experiment defines them)."""
    eval_splits: tuple[str, ...] = ()
    """Which of ``extra_splits`` src/eval.py also takes (its eval experiment defines them)."""
    model_path: str | None = None
    retain_logs: str | None = None


RECIPES: dict[str, BenchmarkRecipe] = {
    "tofu": BenchmarkRecipe(
        "tofu", "Llama-3.2-1B-Instruct", "forget_split", "forget10", "unlearn/tofu/default.yaml",
        "eval/tofu/default.yaml", "TOFU_SUMMARY.json", {"retain_split": "retain90", "holdout_split": "holdout10"},
        eval_splits=("holdout_split",), model_path="open-unlearning/tofu_{model}_full", retain_logs="saves/eval/tofu_{model}_{retain_split}/TOFU_EVAL.json",
    ),
    "muse": BenchmarkRecipe(
        "muse", "Llama-2-7b-hf", "data_split", "News", "unlearn/muse/default.yaml", "eval/muse/default.yaml",
        "MUSE_SUMMARY.json", retain_logs="saves/eval/muse_{model}_{split}_retrain/MUSE_EVAL.json",
    ),
    "wmdp": BenchmarkRecipe(
        "wmdp", "zephyr-7b-beta", "data_split", "cyber", "unlearn/wmdp/default.yaml", "eval/wmdp/default.yaml",
        "LMEval_SUMMARY.json",
    ),
}


@dataclass
class RunPlan:
    """One method/learning-rate run: its task name and the commands that make it."""

    method: str
    learning_rate: float | None
    task: str
    commands: list[list[str]]


@dataclass
class RunOutcome:
    """What happened to one planned run."""

    task: str
    method: str
    learning_rate: float | None
    status: str  # "done", "skipped", "failed"
    seconds: float = 0.0
    log: str | None = None
    message: str = ""


def parse_methods(text: str) -> list[str]:
    """``"FALCON,RMU"`` -> ``["FALCON", "RMU"]`` (no empty or repeated names)."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise InputError(f"--methods is empty: {text!r}")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise InputError(f"--methods repeats {repeated[0]!r}")
    return methods


def parse_lrs(text: str | None) -> list[float | None]:
    """``"1e-5,2e-5"`` -> floats; None -> ``[None]`` (the experiment's own learning rate)."""
    if text is None:
        return [None]
    values: list[float | None] = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise InputError(f"--lrs: not a number: {part.strip()!r}") from None
        if not value > 0:
            raise InputError(f"--lrs: learning rates must be > 0, got {part.strip()!r}")
        values.append(value)
    return values


def check_host(host: Path) -> None:
    """The host checkout must have the scripts and configs the sweep runs."""
    if not host.exists():
        raise InputError(f"--host not found: {host}")
    for rel in ("src/train.py", "src/eval.py", "configs/trainer"):
        if not (host / rel).exists():
            raise InputError(f"--host {host} is not an open-unlearning checkout: missing {rel}")


def host_trainers(host: Path) -> list[str]:
    """Trainer configs the host (plus this plugin) provides."""
    names = {p.stem for p in (host / "configs" / "trainer").glob("*.yaml")}
    return sorted(names | set(PLUGIN_TRAINERS))


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", value)


def plan_runs(host: Path, benchmark: str, methods: Sequence[str], lrs: Sequence[float | None],
              model: str | None = None, split: str | None = None, extra: Sequence[str] = (),
              python: str = sys.executable, run_eval: bool = True) -> list[RunPlan]:
    """The commands of every run, checked against the host (unknown benchmark/method -> InputError)."""
    if benchmark not in RECIPES:
        raise InputError(f"unknown --benchmark {benchmark!r}; expected one of {', '.join(RECIPES)}")
    recipe = RECIPES[benchmark]
    known = host_trainers(host)
    for method in methods:
        if method not in known:
            raise InputError(f"unknown method {method!r}; the host provides: {', '.join(known)}")
    model = model or recipe.model
    split = split or recipe.split
    splits = {recipe.split_key: split, **recipe.extra_splits}
    fmt = {"model": model, "split": split, **splits}
    common = [f"model={model}", *(f"{k}={v}" for k, v in splits.items())]
    if recipe.model_path:
        common.append(f"model.model_args.pretrained_model_name_or_path={recipe.model_path.format(**fmt)}")
    retain_logs = recipe.retain_logs.format(**fmt) if recipe.retain_logs else None
    if retain_logs and not (host / retain_logs).is_file():
        logger.warning("sweep: %s not found in the host; forget_quality/privleak need the retain model's logs", retain_logs)
        retain_logs = None
    eval_keys = (recipe.split_key, *recipe.eval_splits)
    eval_common = [f"model={model}", *(f"{k}={v}" for k, v in splits.items() if k in eval_keys)]
    if retain_logs:
        common.append(f"retain_logs_path={retain_logs}")
        eval_common.append(f"retain_logs_path={retain_logs}")
    plans = []
    for method in methods:
        for lr in lrs:
            task = _slug(f"{benchmark}_{model}_{split}_{method}" + (f"_lr{lr:g}" if lr is not None else ""))
            train = [python, "src/train.py", "--config-name=unlearn.yaml", f"experiment={recipe.unlearn_experiment}",
                     f"trainer={method}", f"task_name={task}", *common]
            if lr is not None:
                train.append(f"trainer.args.learning_rate={lr:g}")
            train += list(extra)
            commands = [train]
            if run_eval:
                commands.append([
                    python, "src/eval.py", f"experiment={recipe.eval_experiment}", f"task_name={task}", *eval_common,
                    f"model.model_args.pretrained_model_name_or_path=saves/unlearn/{task}",
                    f"paths.output_dir=saves/unlearn/{task}/evals",
                ])
            plans.append(RunPlan(method, lr, task, commands))
    return plans


def _marker(host: Path, task: str) -> Path:
    return host / "saves" / "unlearn" / task / MARKER


def is_complete(host: Path, plan: RunPlan) -> bool:
    """A marker exists for this task and records the same commands."""
    path = _marker(host, plan.task)
    if not path.is_file():
        return False
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("commands")
    except (OSError, json.JSONDecodeError):
        return False
    if recorded != [c[1:] for c in plan.commands]:
        logger.info("sweep: %s was completed with other settings; running it again", plan.task)
        return False
    return True


def execute(host: Path, plan: RunPlan, log_dir: Path) -> RunOutcome:
    """Run one plan's commands in order (output to a log file); write the marker only if all succeed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{plan.task}.log"
    start = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        for command in plan.commands:
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            try:
                code = subprocess.run(command, cwd=host, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
            except OSError as err:
                code, note = -1, str(err)
                log.write(note + "\n")
            if code != 0:
                step = Path(command[1]).name if len(command) > 1 else command[0]
                return RunOutcome(plan.task, plan.method, plan.learning_rate, "failed", time.perf_counter() - start,
                                  str(log_path), f"{step} exited with code {code}")
    seconds = time.perf_counter() - start
    atomic_write_json(_marker(host, plan.task), {
        "task": plan.task, "method": plan.method, "learning_rate": plan.learning_rate,
        "commands": [c[1:] for c in plan.commands], "seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    return RunOutcome(plan.task, plan.method, plan.learning_rate, "done", seconds, str(log_path))


def run_sweep(host: Path, plans: Sequence[RunPlan], out_dir: Path, force: bool = False,
              progress: bool = True) -> list[RunOutcome]:
    """Execute every plan (skipping complete ones unless ``force``); failures do not stop the sweep."""
    from tqdm.auto import tqdm

    outcomes = []
    for plan in tqdm(plans, desc="sweep", unit="run", disable=not progress):
        if not force and is_complete(host, plan):
            logger.info("sweep: %s already complete, skipped", plan.task)
            outcomes.append(RunOutcome(plan.task, plan.method, plan.learning_rate, "skipped"))
            continue
        logger.info("sweep: running %s", plan.task)
        outcome = execute(host, plan, out_dir / "logs")
        if outcome.status == "failed":
            logger.error("sweep: %s failed (%s); see %s", plan.task, outcome.message, outcome.log)
        outcomes.append(outcome)
    atomic_write_json(out_dir / "sweep.json", [asdict(o) for o in outcomes])
    return outcomes
