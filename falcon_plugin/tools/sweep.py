"""``falcon-unlearn sweep``: run open-unlearning's own scripts for several methods, then the leaderboard.

For every method (and learning rate, with ``--lrs``; and, for FALCON, POV seed, with ``--pov-seeds``) the
sweep runs, in the host checkout and with
the same experiment config so every method gets the same budget:

1. ``python src/train.py --config-name=unlearn.yaml experiment=unlearn/<bench>/default.yaml trainer=<M>
   task_name=<task> ...``, which writes ``saves/unlearn/<task>``;
2. ``python src/eval.py experiment=eval/<bench>/default.yaml ...
   paths.output_dir=saves/unlearn/<task>/evals``,
   as the host's ``scripts/*_unlearn.sh`` do, with their split pairing (TOFU forget01/05/10 with
   retain99/95/90 and holdout01/05/10), and ``++trainer.args.max_steps=-1`` so that FALCON's own
   100-step budget gives way to the experiment's epochs. Extra overrides after ``--`` go to
   src/train.py; those of the model's loading and of the evaluation (``model.*`` but the model
   path, ``eval.*``) to src/eval.py too.

With ``--eval-retain`` the retain model is evaluated first (src/eval.py into
``saves/eval/<bench>_<model>_<retain split>``, as the host's ``scripts/tofu_finetune.sh``), so its
logs give ``forget_quality``; without them the sweep says what is missing.

A run is complete when ``<run folder>/.falcon_sweep_complete.json`` exists and records the
same commands; it is written atomically only after both steps succeed, so an interrupted sweep
resumes where it stopped. A failing method is logged with its log file and the sweep goes on.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from falcon_plugin.atomic import atomic_write_json
from falcon_plugin.tools.common.benchmarks import HOST_BENCHMARKS
from falcon_plugin.tools.common.errors import InputError

logger = logging.getLogger(__name__)
MARKER = ".falcon_sweep_complete.json"


@dataclass
class RunPlan:
    """One method/learning-rate run: its task name and the commands that make it."""

    method: str
    learning_rate: float | None
    task: str
    commands: list[list[str]]
    output: str = ""
    """The run's folder relative to the host (``saves/unlearn/<task>``); its completion marker goes there."""
    kind: str = "unlearn"
    """``unlearn`` (src/train.py then src/eval.py) or ``reference`` (the retain model's src/eval.py)."""

    def __post_init__(self) -> None:
        if not self.output:
            self.output = f"saves/unlearn/{self.task}"


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


def parse_pov_seeds(text: str | None) -> list[int | None]:
    """``"0,1,2"`` -> ints (FALCON's ``pov_seed``, one run each); None -> ``[None]`` (``args.seed``'s POV)."""
    if text is None:
        return [None]
    values: list[int | None] = []
    for part in text.split(","):
        if not part.strip().isdigit():
            raise InputError(f"--pov-seeds: not a non-negative integer: {part.strip()!r}")
        value = int(part)
        if value in values:
            raise InputError(f"--pov-seeds repeats {value}")
        values.append(value)
    return values


POV_SEED_KEY = "trainer.method_args.pov_seed"
"""FALCON's POV seed (``--pov-seeds`` sets it per run)."""


def check_host(host: Path) -> None:
    """The host checkout must have the scripts and configs the sweep runs."""
    if not host.exists():
        raise InputError(f"--host not found: {host}")
    for rel in ("src/train.py", "src/eval.py", "configs/trainer"):
        if not (host / rel).exists():
            raise InputError(f"--host {host} is not an open-unlearning checkout: missing {rel}")


def host_trainers(host: Path) -> list[str]:
    """Trainer configs the host provides, plus the trainers installed packages register into it (FALCON)."""
    from falcon_plugin.host import trainer_factories

    names = {p.stem for p in (host / "configs" / "trainer").glob("*.yaml")}
    return sorted(names | set(trainer_factories()))


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", value)


def override_key(arg: str) -> str:
    """The config key a Hydra override sets: ``++model.model_args.x=1`` -> ``model.model_args.x``."""
    return arg.lstrip("~+").split("=", 1)[0].strip()


SET_BY_SWEEP = ("model", "experiment", "task_name", "trainer", "paths.output_dir")
"""Keys the sweep sets itself (``--model``, ``--methods``, task names, output folders)."""
UNCAPPED = "++trainer.args.max_steps=-1"
"""Every method trains for the experiment's epochs (an extra ``trainer.args.max_steps=N`` caps all)."""
EVAL_PREFIXES = ("model.", "eval.")
"""Extra overrides with these keys reach src/eval.py too: the model's loading (local weights and
tokenizer, ``attn_implementation``, ``torch_dtype``, ``device_map``, templates) and the evaluation's
own settings; ``model.model_args.pretrained_model_name_or_path`` names the model to unlearn and so
reaches src/train.py only (src/eval.py evaluates the unlearned model)."""
_MODEL_PATH_KEY = "model.model_args.pretrained_model_name_or_path"


def _shipped_falcon() -> dict[str, Any]:
    """``trainer/FALCON.yaml`` as shipped (unresolved)."""
    import yaml

    return yaml.safe_load((Path(__file__).parents[1] / "configs" / "trainer" / "FALCON.yaml").read_text())


def falcon_learning_rate(benchmark: str) -> float:
    """FALCON's own learning rate on a benchmark: ``trainer/FALCON.yaml``'s ``<benchmark>_budget`` (TOFU),
    else its ``budget`` (what ``experiment=unlearn/<benchmark>/falcon`` gives FALCON)."""
    shipped = _shipped_falcon()
    budget = {**shipped["budget"], **(shipped.get(f"{benchmark}_budget") or {})}
    return float(budget["learning_rate"])


def falcon_benchmark_overrides(benchmark: str) -> list[str]:
    """The override that gives a FALCON run of the host's experiment FALCON's own method_args on a benchmark:
    ``trainer/FALCON.yaml``'s ``<benchmark>_method_args`` (TOFU: the MLP down-projections) through
    ``benchmark_method_args``, as ``experiment=unlearn/<benchmark>/falcon`` does; none where it has none."""
    key = f"{benchmark}_method_args"
    return [f"++trainer.benchmark_method_args=${{trainer.{key}}}"] if _shipped_falcon().get(key) else []


def eval_overrides(extra: Sequence[str]) -> list[str]:
    """The extra overrides src/eval.py also receives (see :data:`EVAL_PREFIXES`), in their order."""
    out = []
    for arg in extra:
        key = override_key(arg)
        if key == "retain_logs_path" or (key.startswith(EVAL_PREFIXES) and key != _MODEL_PATH_KEY):
            out.append(arg)
    return out


def _check_extra(extra: Sequence[str], split_keys: Sequence[str]) -> None:
    for arg in extra:
        key = override_key(arg)
        if key in SET_BY_SWEEP or key in split_keys:
            flag = {"model": "--model", "trainer": "--methods"}.get(
                key, "--split" if key in split_keys else None
            )
            hint = f"; use {flag}" if flag else ""
            raise InputError(f"override {arg!r} after '--' sets {key!r}, which sweep sets itself{hint}")


@dataclass
class SweepPlan:
    """Every run of a sweep and what it knows about the retain model's logs."""

    plans: list[RunPlan]
    """The runs in order: the retain model's evaluation first (``--eval-retain``), then the methods."""
    retain_logs: str | None
    """``retain_logs_path`` the runs get (relative to the host), or None."""
    note: str | None = None
    """What is missing (the retain model's logs, hence ``forget_quality``) and how to make it."""


def plan_sweep(
    host: Path,
    benchmark: str,
    methods: Sequence[str],
    lrs: Sequence[float | None],
    model: str | None = None,
    split: str | None = None,
    extra: Sequence[str] = (),
    python: str = sys.executable,
    run_eval: bool = True,
    eval_retain: bool = False,
    retain_model: str | None = None,
    pov_seeds: Sequence[int | None] = (None,),
) -> SweepPlan:
    """The commands of every run, checked against the host and the registry before anything runs.

    ``pov_seeds``: each FALCON run once per POV seed (``trainer.method_args.pov_seed``, task suffix
    ``_pov<N>``); the other methods have no POV and run once. On TOFU the POV's random direction decides
    how far FALCON moves the forget set's truth ratios (docs/results/README.md, round 8), so it is swept
    like the learning rate.

    Raises InputError for an unknown benchmark, method or split (TOFU: the host's forget01/05/10),
    for an override after ``--`` that the sweep sets itself, for ``eval_retain`` on a benchmark
    without a retain reference, and for POV seeds without a FALCON method or with a ``pov_seed``
    override after ``--``.
    """
    if benchmark not in HOST_BENCHMARKS:
        raise InputError(f"unknown --benchmark {benchmark!r}; expected one of {', '.join(HOST_BENCHMARKS)}")
    bench = HOST_BENCHMARKS[benchmark]
    recipe = bench.host
    assert recipe is not None and bench.split_key is not None  # HOST_BENCHMARKS holds only those
    split = split or recipe.split
    if recipe.split_pairs and split not in recipe.split_pairs:
        pairs = ", ".join(
            f"{s} ({', '.join(f'{k}={v}' for k, v in keys.items())})"
            for s, keys in recipe.split_pairs.items()
        )
        raise InputError(f"unknown --split {split!r} for {benchmark}; expected one of: {pairs}")
    splits = {bench.split_key: split, **recipe.further_splits(split)}
    _check_extra(extra, list(splits))
    if (eval_retain or retain_model) and not recipe.retain_logs:
        raise InputError(f"--eval-retain: {benchmark} has no retain reference model in the host's recipe")
    if retain_model and not eval_retain:
        raise InputError("--retain-model needs --eval-retain")
    if list(pov_seeds) != [None]:
        if not any(m.startswith("FALCON") for m in methods):
            raise InputError(
                f"--pov-seeds: only FALCON has a POV, and --methods has none: {', '.join(methods)}"
            )
        if any(override_key(a) == POV_SEED_KEY for a in extra):
            raise InputError(f"--pov-seeds and an override of {POV_SEED_KEY} after '--': give one of them")
    known = host_trainers(host)
    for method in methods:
        if method not in known:
            raise InputError(f"unknown method {method!r}; the host provides: {', '.join(known)}")
    model = model or recipe.model
    fmt = {"model": model, "split": split, **splits}
    common = [f"model={model}", *(f"{k}={v}" for k, v in splits.items())]
    if recipe.model_path:
        common.append(f"{_MODEL_PATH_KEY}={recipe.model_path.format(**fmt)}")
    eval_keys = (bench.split_key, *recipe.eval_splits)
    eval_common = [f"model={model}", *(f"{k}={v}" for k, v in splits.items() if k in eval_keys)]
    to_eval = eval_overrides(extra)

    capped = any(override_key(a) == "trainer.args.max_steps" for a in extra)
    if list(lrs) == [None] and any(m.startswith("FALCON") for m in methods):
        logger.warning(
            "sweep: FALCON runs at the experiment's learning rate (TOFU/MUSE: 1e-5), which barely moves "
            "its few trainable tensors; its own default on %s is %g (trainer/FALCON.yaml, with its "
            "method_args there for that benchmark): pass --lrs",
            benchmark,
            falcon_learning_rate(benchmark),
        )
    plans: list[RunPlan] = []
    note = None
    given = any(override_key(a) == "retain_logs_path" for a in extra)
    retain_logs = recipe.retain_logs.format(**fmt) if recipe.retain_logs and not given else None
    if retain_logs and eval_retain:
        reference_task = Path(retain_logs).parent.name
        reference_model = retain_model or (recipe.retain_model or "").format(**fmt)
        command = [
            python,
            "src/eval.py",
            f"experiment={recipe.eval_experiment}",
            f"task_name={reference_task}",
            *eval_common,
            *[a for a in to_eval if override_key(a) != "retain_logs_path"],
            f"{_MODEL_PATH_KEY}={reference_model}",
        ]
        output = str(Path(retain_logs).parent)
        plans.append(RunPlan("retain (reference)", None, reference_task, [command], output, "reference"))
    elif retain_logs and not (host / retain_logs).is_file():
        note = (
            f"{retain_logs} not found in the host, so the runs are evaluated without the retain model's "
            f"logs: no forget_quality{' or privleak' if benchmark == 'tofu' else ''}, no Pareto plot. "
            "Add --eval-retain to evaluate the retain model "
            f"({(recipe.retain_model or '').format(**fmt)}; --retain-model for another) with the host's "
            "src/eval.py first, or fetch the host's logs with `python setup_data.py --eval_logs`"
        )
        logger.warning("sweep: %s", note)
        retain_logs = None
    if retain_logs:
        common.append(f"retain_logs_path={retain_logs}")
        eval_common.append(f"retain_logs_path={retain_logs}")
    falcon_overrides = falcon_benchmark_overrides(benchmark)
    for method in methods:
        falcon = method.startswith("FALCON")
        seeds = pov_seeds if falcon else [None]  # the baselines have no POV
        for lr, pov_seed in itertools.product(lrs, seeds):
            task = _slug(
                f"{benchmark}_{model}_{split}_{method}"
                + (f"_lr{lr:g}" if lr is not None else "")
                + (f"_pov{pov_seed}" if pov_seed is not None else "")
            )
            train = [
                python,
                "src/train.py",
                "--config-name=unlearn.yaml",
                f"experiment={recipe.unlearn_experiment}",
                f"trainer={method}",
                f"task_name={task}",
                *common,
            ]
            if lr is not None:
                train.append(f"trainer.args.learning_rate={lr:g}")
            if not capped:  # trainer/FALCON*.yaml's max_steps would give FALCON another budget
                train.append(UNCAPPED)
            if falcon:
                train += falcon_overrides
            if pov_seed is not None:
                train.append(f"{POV_SEED_KEY}={pov_seed}")
            train += list(extra)
            commands = [train]
            if run_eval:
                commands.append(
                    [
                        python,
                        "src/eval.py",
                        f"experiment={recipe.eval_experiment}",
                        f"task_name={task}",
                        *eval_common,
                        *to_eval,
                        f"{_MODEL_PATH_KEY}=saves/unlearn/{task}",
                        f"paths.output_dir=saves/unlearn/{task}/evals",
                    ]
                )
            plans.append(RunPlan(method, lr, task, commands, f"saves/unlearn/{task}"))
    return SweepPlan(plans, retain_logs, note)


def plan_runs(
    host: Path, benchmark: str, methods: Sequence[str], lrs: Sequence[float | None], **kwargs
) -> list[RunPlan]:
    """:func:`plan_sweep`'s runs (keyword arguments as there)."""
    return plan_sweep(host, benchmark, methods, lrs, **kwargs).plans


def _marker(host: Path, plan: RunPlan) -> Path:
    return host / plan.output / MARKER


def _recorded(host: Path, plan: RunPlan) -> list[list[str]] | None:
    path = _marker(host, plan)
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("commands")
    except (OSError, json.JSONDecodeError):
        return None
    return recorded if isinstance(recorded, list) else None


def is_complete(host: Path, plan: RunPlan) -> bool:
    """A marker exists for this run and records the same commands."""
    recorded = _recorded(host, plan)
    if recorded is None:
        return False
    if recorded != [c[1:] for c in plan.commands]:
        logger.info("sweep: %s was completed with other settings; running it again", plan.task)
        return False
    return True


def _without_retain_logs(command: Sequence[str]) -> list[str]:
    return [a for a in command if not a.startswith("retain_logs_path=")]


def _trained_already(host: Path, plan: RunPlan) -> bool:
    """The recorded training is this plan's but for ``retain_logs_path``: only the evaluation must run."""
    recorded = _recorded(host, plan)
    if recorded is None or len(plan.commands) < 2 or not recorded:
        return False
    return _without_retain_logs(recorded[0]) == _without_retain_logs(plan.commands[0][1:])


def execute(host: Path, plan: RunPlan, log_dir: Path, start_at: int = 0) -> RunOutcome:
    """Run a plan's commands from ``start_at`` (output to a log file).

    Writes the marker only if all succeed.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{plan.task}.log"
    start = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        for command in plan.commands[start_at:]:
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            try:
                code = subprocess.run(
                    command, cwd=host, stdout=log, stderr=subprocess.STDOUT, check=False
                ).returncode
            except OSError as err:
                code, note = -1, str(err)
                log.write(note + "\n")
            if code != 0:
                step = Path(command[1]).name if len(command) > 1 else command[0]
                return RunOutcome(
                    plan.task,
                    plan.method,
                    plan.learning_rate,
                    "failed",
                    time.perf_counter() - start,
                    str(log_path),
                    f"{step} exited with code {code}",
                )
    seconds = time.perf_counter() - start
    atomic_write_json(
        _marker(host, plan),
        {
            "task": plan.task,
            "method": plan.method,
            "learning_rate": plan.learning_rate,
            "commands": [c[1:] for c in plan.commands],
            "seconds": seconds,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    message = "evaluation only (the training is unchanged)" if start_at else ""
    return RunOutcome(plan.task, plan.method, plan.learning_rate, "done", seconds, str(log_path), message)


def run_sweep(
    host: Path,
    plans: Sequence[RunPlan],
    out_dir: Path,
    force: bool = False,
    progress: bool = True,
    retain_logs: str | None = None,
) -> list[RunOutcome]:
    """Execute every plan (skipping complete ones unless ``force``); failures do not stop the sweep.

    A reference plan (the retain model's evaluation) whose logs already exist is skipped unless
    ``force``; when it fails, the later runs go without ``retain_logs_path`` (else the host's
    evaluator would fail on the missing file). A run whose training is recorded as done with the
    same command (but for ``retain_logs_path``) only runs its evaluation again.
    """
    from tqdm.auto import tqdm

    outcomes = []
    plans = list(plans)
    for i in tqdm(range(len(plans)), desc="sweep", unit="run", disable=not progress):
        plan = plans[i]  # a failed reference rewrites the later plans
        if not force and is_complete(host, plan):
            logger.info("sweep: %s already complete, skipped", plan.task)
            outcomes.append(RunOutcome(plan.task, plan.method, plan.learning_rate, "skipped"))
            continue
        if plan.kind == "reference" and not force and retain_logs and (host / retain_logs).is_file():
            logger.info("sweep: %s exists, the retain model is not evaluated again", retain_logs)
            outcomes.append(
                RunOutcome(plan.task, plan.method, None, "skipped", message=f"{retain_logs} exists")
            )
            continue
        start_at = 1 if not force and _trained_already(host, plan) else 0
        logger.info("sweep: running %s%s", plan.task, " (evaluation only)" if start_at else "")
        outcome = execute(host, plan, out_dir / "logs", start_at)
        if outcome.status == "failed":
            logger.error("sweep: %s failed (%s); see %s", plan.task, outcome.message, outcome.log)
            if plan.kind == "reference":
                outcome.message += "; the runs are evaluated without retain_logs_path (no forget_quality)"
                plans[i + 1 :] = [
                    replace(p, commands=[_without_retain_logs(c) for c in p.commands]) for p in plans[i + 1 :]
                ]
        outcomes.append(outcome)
    atomic_write_json(out_dir / "sweep.json", [asdict(o) for o in outcomes])
    return outcomes
