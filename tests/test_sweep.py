"""``falcon-unlearn sweep`` against a fake open-unlearning checkout (tiny scripts, no models)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from falcon_plugin.tools.cli import main
from falcon_plugin.tools.sweep import (
    MARKER,
    falcon_benchmark_overrides,
    falcon_learning_rate,
    parse_lrs,
    plan_runs,
)

FAKE_TRAIN = textwrap.dedent('''
    """Fake src/train.py: records the call, fails for trainer=NPO, else writes a run folder."""
    import json, sys
    from pathlib import Path
    args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a and not a.startswith("--"))
    with open("calls.log", "a") as log:
        log.write("train " + args["task_name"] + "\\n")
    if args["trainer"] == "NPO":
        print("CUDA out of memory (simulated)", file=sys.stderr)
        sys.exit(3)
    run = Path("saves/unlearn") / args["task_name"]
    (run / ".hydra").mkdir(parents=True, exist_ok=True)
    path = args.get("model.model_args.pretrained_model_name_or_path")
    lr = args.get("trainer.args.learning_rate", "1e-05")
    (run / ".hydra" / "config.yaml").write_text(
        f"model:\\n  model_args:\\n    pretrained_model_name_or_path: {path}\\n"
        f"trainer:\\n  handler: {args['trainer']}\\n  args:\\n    learning_rate: {lr}\\n"
        f"forget_split: {args.get('forget_split')}\\ntask_name: {args['task_name']}\\nmode: unlearn\\n")
    (run / "model.safetensors").write_text("weights")
''')

FAKE_EVAL = textwrap.dedent('''
    """Fake src/eval.py: writes TOFU_EVAL/SUMMARY.json whose numbers depend on the method; like the
    host's evaluator, forget_quality only with an existing retain_logs_path, and into saves/eval/<task>
    by default."""
    import json, sys
    from pathlib import Path
    args = dict(a.lstrip("+").split("=", 1) for a in sys.argv[1:] if "=" in a)
    with open("calls.log", "a") as log:
        log.write("eval " + args["task_name"] + "\\n")
    if "SimNPO" in args["task_name"] or "broken" in args["model.model_args.pretrained_model_name_or_path"]:
        sys.exit(5)
    out = Path(args.get("paths.output_dir", "saves/eval/" + args["task_name"]))
    (out / ".hydra").mkdir(parents=True, exist_ok=True)
    (out / ".hydra" / "config.yaml").write_text(
        f"task_name: {args['task_name']}\\nmode: eval\\nforget_split: {args.get('forget_split')}\\n")
    quality = {"FALCON": 0.3, "GradDiff": 1e-30, "RMU": 1e-8, "retain": 1.0}
    method = next(m for m in quality if m in args["task_name"])
    utility = 0.5 + len(method) / 100
    summary = {"model_utility": utility, "forget_Q_A_Prob": 0.1}
    logs = args.get("retain_logs_path", "null")
    if logs != "null" and Path(logs).is_file():
        summary["forget_quality"] = quality[method]
    (out / "TOFU_SUMMARY.json").write_text(json.dumps(summary, indent=4))
    (out / "TOFU_EVAL.json").write_text(json.dumps({k: {"agg_value": v} for k, v in summary.items()}))
''')


@pytest.fixture
def host(tmp_path: Path) -> Path:
    root = tmp_path / "open-unlearning"
    (root / "src").mkdir(parents=True)
    (root / "src" / "train.py").write_text(FAKE_TRAIN)
    (root / "src" / "eval.py").write_text(FAKE_EVAL)
    (root / "configs" / "trainer").mkdir(parents=True)
    for name in ("GradAscent", "GradDiff", "NPO", "SimNPO", "RMU"):
        (root / "configs" / "trainer" / f"{name}.yaml").write_text(f"handler: {name}\n")
    return root


def _calls(host: Path) -> list[str]:
    path = host / "calls.log"
    return path.read_text().splitlines() if path.exists() else []


def test_sweep_runs_skips_and_survives_failures(
    host: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep_out"
    argv = [
        "sweep",
        "--host",
        str(host),
        "--benchmark",
        "tofu",
        "--methods",
        "FALCON,GradDiff,NPO,SimNPO",
        "--out",
        str(out),
        "-q",
    ]
    code = main(argv)
    stdout = capsys.readouterr().out
    assert code == 1  # some runs failed, but the sweep went on and built the leaderboard
    unlearn = host / "saves" / "unlearn"
    task = "tofu_Llama-3.2-1B-Instruct_forget10_{}"
    assert (unlearn / task.format("FALCON") / MARKER).is_file()
    assert (unlearn / task.format("GradDiff") / MARKER).is_file()
    assert not (unlearn / task.format("NPO") / MARKER).exists()  # train failed
    assert not (unlearn / task.format("SimNPO") / MARKER).exists()  # eval failed: no marker either
    outcomes = {o["method"]: o for o in json.loads((out / "sweep.json").read_text())}
    assert (
        outcomes["NPO"]["status"] == "failed" and "train.py exited with code 3" in outcomes["NPO"]["message"]
    )
    assert "out of memory" in Path(outcomes["NPO"]["log"]).read_text()
    assert outcomes["SimNPO"]["status"] == "failed" and "eval.py" in outcomes["SimNPO"]["message"]
    assert outcomes["FALCON"]["status"] == "done"
    marker = json.loads((unlearn / task.format("FALCON") / MARKER).read_text())
    assert marker["commands"][0][0] == "src/train.py" and "trainer=FALCON" in marker["commands"][0]
    board = (out / "leaderboard" / "leaderboard.md").read_text()
    assert "FALCON" in board and "GradDiff" in board and "NPO" not in board
    assert "| failed |" in stdout and "## TOFU" in stdout

    before = _calls(host)
    assert main(argv) == 1
    rerun = _calls(host)[len(before) :]
    assert rerun == [
        "train " + task.format("NPO"),
        "train " + task.format("SimNPO"),
        "eval " + task.format("SimNPO"),
    ]
    statuses = {o["method"]: o["status"] for o in json.loads((out / "sweep.json").read_text())}
    assert statuses == {"FALCON": "skipped", "GradDiff": "skipped", "NPO": "failed", "SimNPO": "failed"}


def test_sweep_all_ok_exit_zero_and_lr_grid(host: Path, tmp_path: Path) -> None:
    code = main(
        [
            "sweep",
            "--host",
            str(host),
            "--benchmark",
            "tofu",
            "--methods",
            "FALCON,RMU",
            "--lrs",
            "1e-5,2e-5",
            "--out",
            str(tmp_path / "o"),
            "-q",
            "--",
            "trainer.args.num_train_epochs=2",
        ]
    )
    assert code == 0
    runs = sorted(p.name for p in (host / "saves" / "unlearn").iterdir())
    assert runs == [
        f"tofu_Llama-3.2-1B-Instruct_forget10_{m}_lr{lr}"
        for m in ("FALCON", "RMU")
        for lr in ("1e-05", "2e-05")
    ]
    marker = json.loads((host / "saves" / "unlearn" / runs[0] / MARKER).read_text())
    assert "trainer.args.learning_rate=1e-05" in marker["commands"][0]
    assert marker["commands"][0][-1] == "trainer.args.num_train_epochs=2"


def test_changed_overrides_rerun(host: Path, tmp_path: Path) -> None:
    base = [
        "sweep",
        "--host",
        str(host),
        "--benchmark",
        "tofu",
        "--methods",
        "GradDiff",
        "--out",
        str(tmp_path / "o"),
        "-q",
    ]
    assert main(base) == 0
    n = len(_calls(host))
    assert main(base) == 0 and len(_calls(host)) == n  # complete: skipped
    assert main([*base, "--", "trainer.args.num_train_epochs=3"]) == 0 and len(_calls(host)) == n + 2


def test_dry_run_prints_host_commands(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "sweep",
                "--host",
                str(host),
                "--benchmark",
                "muse",
                "--methods",
                "NPO",
                "--dry-run",
                "--python",
                "python3",
                "--",
                "trainer.args.per_device_train_batch_size=4",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "python3 src/train.py --config-name=unlearn.yaml experiment=unlearn/muse/default.yaml trainer=NPO"
    )
    assert lines[0].endswith("trainer.args.per_device_train_batch_size=4")
    assert "paths.output_dir=saves/unlearn/muse_Llama-2-7b-hf_News_NPO/evals" in lines[1]
    assert not (host / "calls.log").exists()


def test_split_overrides_match_host_experiments(host: Path) -> None:
    """experiment=eval/tofu/default.yaml defines forget_split and holdout_split, not retain_split
    (Hydra refuses overrides of keys a config lacks); the unlearn experiment defines all three."""
    train, evaluate = plan_runs(host, "tofu", ["RMU"], [None], python="python")[0].commands
    assert {"forget_split=forget10", "retain_split=retain90", "holdout_split=holdout10"} <= set(train)
    assert {"forget_split=forget10", "holdout_split=holdout10"} <= set(evaluate)
    assert not any(arg.startswith("retain_split=") for arg in evaluate)
    muse_eval = plan_runs(host, "muse", ["NPO"], [None], python="python")[0].commands[1]
    assert "data_split=News" in muse_eval and not any("forget_split" in a for a in muse_eval)


def test_retain_logs_used_when_present(host: Path) -> None:
    logs = host / "saves" / "eval" / "tofu_Llama-3.2-1B-Instruct_retain90" / "TOFU_EVAL.json"
    logs.parent.mkdir(parents=True)
    logs.write_text("{}")
    plan = plan_runs(host, "tofu", ["RMU"], [None], python=sys.executable)[0]
    expected = "retain_logs_path=saves/eval/tofu_Llama-3.2-1B-Instruct_retain90/TOFU_EVAL.json"
    assert expected in plan.commands[0] and expected in plan.commands[1]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--benchmark", "tofuu"], "unknown --benchmark 'tofuu'"),
        (["--benchmark", "tofu", "--methods", "FALCON,Magic"], "unknown method 'Magic'"),
        (["--benchmark", "tofu", "--lrs", "1e-5,fast"], "--lrs: not a number: 'fast'"),
        (["--benchmark", "tofu", "--methods", ","], "--methods is empty"),
        (["--benchmark", "tofu", "--pov-seeds", "0,-1"], "--pov-seeds: not a non-negative integer: '-1'"),
        (["--benchmark", "tofu", "--pov-seeds", "1,1"], "--pov-seeds repeats 1"),
        (["--benchmark", "tofu", "--methods", "RMU", "--pov-seeds", "0"], "only FALCON has a POV"),
        (
            ["--benchmark", "tofu", "--pov-seeds", "0", "--", "trainer.method_args.pov_seed=3"],
            "--pov-seeds and an override of trainer.method_args.pov_seed",
        ),
    ],
)
def test_sweep_bad_input(
    host: Path, argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sweep", "--host", str(host), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_sweep_missing_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "--host", str(tmp_path / "nope"), "--benchmark", "tofu"]) == 2
    assert "--host not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["sweep", "--host", str(tmp_path / "empty"), "--benchmark", "tofu"]) == 2
    assert "not an open-unlearning checkout: missing src/train.py" in capsys.readouterr().err


def test_pov_seeds_multiply_falcon_runs_only(host: Path) -> None:
    """--pov-seeds: one FALCON run per POV seed and learning rate (task suffix _pov<N>, the seed as
    method_args.pov_seed); a baseline, which has no POV, runs once per learning rate."""
    plans = plan_runs(host, "tofu", ["FALCON", "RMU"], [1e-4, 2e-4], pov_seeds=[0, 3])
    tasks = [plan.task for plan in plans]
    prefix = "tofu_Llama-3.2-1B-Instruct_forget10_"
    assert tasks == [
        *(f"{prefix}FALCON_lr{lr}_pov{seed}" for lr in ("0.0001", "0.0002") for seed in (0, 3)),
        f"{prefix}RMU_lr0.0001",
        f"{prefix}RMU_lr0.0002",
    ]
    seeds = [[a for a in plan.commands[0] if a.startswith("trainer.method_args.pov_seed=")] for plan in plans]
    assert seeds == [["trainer.method_args.pov_seed=0"], ["trainer.method_args.pov_seed=3"]] * 2 + [[], []]
    assert [p.task for p in plan_runs(host, "tofu", ["FALCON"], [None])] == [f"{prefix}FALCON"]


def test_parse_lrs_default() -> None:
    assert parse_lrs(None) == [None]
    assert parse_lrs("1e-5, 3e-5") == [1e-5, 3e-5]


# ------------------------------------------------------------------ issue 13: splits, overrides, retain logs
TASK = "tofu_Llama-3.2-1B-Instruct_{}_{}"
RETAIN_LOGS = "saves/eval/tofu_Llama-3.2-1B-Instruct_{}/TOFU_EVAL.json"


@pytest.mark.parametrize(
    ("forget", "retain", "holdout"),
    [
        ("forget01", "retain99", "holdout01"),
        ("forget05", "retain95", "holdout05"),
        ("forget10", "retain90", "holdout10"),
    ],
)
def test_tofu_splits_paired_as_the_host_scripts(host: Path, forget: str, retain: str, holdout: str) -> None:
    """scripts/tofu_unlearn.sh: forget01/05/10 <-> retain99/95/90 and holdout01/05/10."""
    logs = host / RETAIN_LOGS.format(retain)
    logs.parent.mkdir(parents=True)
    logs.write_text("{}")
    train, evaluate = plan_runs(host, "tofu", ["RMU"], [None], split=forget, python="python")[0].commands
    assert {f"forget_split={forget}", f"retain_split={retain}", f"holdout_split={holdout}"} <= set(train)
    assert {f"forget_split={forget}", f"holdout_split={holdout}"} <= set(evaluate)
    assert f"retain_logs_path={RETAIN_LOGS.format(retain)}" in train
    assert f"retain_logs_path={RETAIN_LOGS.format(retain)}" in evaluate


def test_unknown_tofu_split_rejected_before_running(
    host: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "sweep",
        "--host",
        str(host),
        "--benchmark",
        "tofu",
        "--split",
        "forget99",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown --split 'forget99' for tofu" in err
    assert "forget01" in err and "forget05" in err and "retain99" in err
    assert _calls(host) == []


LOCAL_MODEL = [
    "model.model_args.pretrained_model_name_or_path=/models/full",
    "model.tokenizer_args.pretrained_model_name_or_path=/models/full",
    "model.model_args.attn_implementation=eager",
    "model.model_args.torch_dtype=float32",
    "++model.model_args.device_map=cpu",
    "trainer.args.optim=adamw_torch",
    "~eval.tofu.metrics.privleak",
]


def test_model_overrides_reach_eval_too(host: Path) -> None:
    train, evaluate = plan_runs(host, "tofu", ["RMU"], [None], extra=LOCAL_MODEL, python="python")[0].commands
    assert train[-len(LOCAL_MODEL) :] == LOCAL_MODEL
    for arg in LOCAL_MODEL[1:5] + LOCAL_MODEL[6:]:  # tokenizer, attention, dtype, device, eval settings
        assert arg in evaluate, arg
    assert "trainer.args.optim=adamw_torch" not in evaluate  # training-only
    # the evaluation reads the unlearned model, not the one the training started from
    paths = [a for a in evaluate if a.startswith("model.model_args.pretrained_model_name_or_path=")]
    assert paths == [
        f"model.model_args.pretrained_model_name_or_path=saves/unlearn/{TASK.format('forget10', 'RMU')}"
    ]


@pytest.mark.parametrize(
    "arg", ["forget_split=forget05", "model=Llama-2-7b-hf", "task_name=x", "trainer=NPO"]
)
def test_overrides_the_sweep_sets_are_rejected(
    host: Path, arg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sweep", "--host", str(host), "--benchmark", "tofu", "--dry-run", "--", arg]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"override {arg!r}" in err


def test_missing_retain_logs_are_said(host: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "sweep",
        "--host",
        str(host),
        "--benchmark",
        "tofu",
        "--methods",
        "FALCON,RMU",
        "--out",
        str(tmp_path),
        "-q",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "note: saves/eval/tofu_Llama-3.2-1B-Instruct_retain90/TOFU_EVAL.json not found" in out
    assert "no forget_quality" in out and "--eval-retain" in out
    # the leaderboard says why there is no Pareto plot instead of leaving it out silently
    assert "no TOFU plot" in out and "forget_quality needs the retain model's evaluation logs" in out
    assert not (tmp_path / "leaderboard" / "tofu_pareto.png").exists()


def test_eval_retain_evaluates_the_reference_first(
    host: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [
        "sweep",
        "--host",
        str(host),
        "--benchmark",
        "tofu",
        "--methods",
        "FALCON,RMU",
        "--out",
        str(tmp_path),
        "-q",
    ]
    assert main(base) == 0  # first without the retain model's logs
    capsys.readouterr()
    n = len(_calls(host))
    assert main([*base, "--eval-retain", "--", "++model.model_args.device_map=cpu"]) == 0
    calls = _calls(host)[n:]
    # the reference first (then both runs again: the new override changed their training command)
    assert calls[0] == "eval tofu_Llama-3.2-1B-Instruct_retain90"
    logs = host / RETAIN_LOGS.format("retain90")
    assert logs.is_file() and (logs.parent / MARKER).is_file()
    reference = json.loads((logs.parent / MARKER).read_text())["commands"][0]
    assert (
        "model.model_args.pretrained_model_name_or_path=open-unlearning/tofu_Llama-3.2-1B-Instruct_retain90"
        in reference
    )
    assert "++model.model_args.device_map=cpu" in reference and "forget_split=forget10" in reference
    marker = json.loads((host / "saves" / "unlearn" / TASK.format("forget10", "FALCON") / MARKER).read_text())
    assert f"retain_logs_path={RETAIN_LOGS.format('retain90')}" in marker["commands"][1]
    out = capsys.readouterr().out
    assert "note:" not in out and (tmp_path / "leaderboard" / "tofu_pareto.png").is_file()
    board = json.loads((tmp_path / "leaderboard" / "leaderboard.json").read_text())["TOFU"]
    assert {r["task"]: r["metrics"].get("forget_quality") for r in board if r["role"] == "unlearn"} == {
        TASK.format("forget10", "FALCON"): 0.3,
        TASK.format("forget10", "RMU"): 1e-8,
    }
    n = len(_calls(host))
    assert main([*base, "--eval-retain", "--", "++model.model_args.device_map=cpu"]) == 0
    assert _calls(host)[n:] == []  # everything complete, the reference included


def test_retain_logs_added_later_only_reevaluate(host: Path, tmp_path: Path) -> None:
    base = [
        "sweep",
        "--host",
        str(host),
        "--benchmark",
        "tofu",
        "--methods",
        "FALCON,RMU",
        "--out",
        str(tmp_path),
        "-q",
    ]
    assert main(base) == 0
    n = len(_calls(host))
    assert main([*base, "--eval-retain"]) == 0
    assert _calls(host)[n:] == [
        "eval tofu_Llama-3.2-1B-Instruct_retain90",
        "eval " + TASK.format("forget10", "FALCON"),
        "eval " + TASK.format("forget10", "RMU"),
    ]
    statuses = {
        o["method"]: (o["status"], o["message"]) for o in json.loads((tmp_path / "sweep.json").read_text())
    }
    assert statuses["FALCON"] == ("done", "evaluation only (the training is unchanged)")


def test_failed_reference_runs_go_without_retain_logs(host: Path, tmp_path: Path) -> None:
    argv = [
        "sweep",
        "--host",
        str(host),
        "--benchmark",
        "tofu",
        "--methods",
        "RMU",
        "--out",
        str(tmp_path),
        "-q",
    ]
    assert main([*argv, "--eval-retain", "--retain-model", "/models/broken"]) == 1
    outcomes = json.loads((tmp_path / "sweep.json").read_text())
    assert outcomes[0]["status"] == "failed" and "without retain_logs_path" in outcomes[0]["message"]
    assert outcomes[1]["status"] == "done"
    marker = json.loads((host / "saves" / "unlearn" / TASK.format("forget10", "RMU") / MARKER).read_text())
    assert not any(a.startswith("retain_logs_path=") for c in marker["commands"] for a in c)


def test_eval_retain_needs_a_reference(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "--host", str(host), "--benchmark", "wmdp", "--eval-retain", "--dry-run"]) == 2
    assert "wmdp has no retain reference model" in capsys.readouterr().err


def test_sweep_out_is_a_file(host: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    assert main(["sweep", "--host", str(host), "--benchmark", "tofu", "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"falcon-unlearn: error: --out {tmp_path / 'file'} is not a folder"
    assert _calls(host) == []


def test_every_method_trains_for_the_experiments_epochs(host: Path, caplog: pytest.LogCaptureFixture) -> None:
    """FALCON.yaml's 100-step budget would give FALCON another budget than the host's trainers."""
    with caplog.at_level("WARNING"):
        plans = plan_runs(host, "tofu", ["FALCON", "RMU"], [None], python="python")
    assert all("++trainer.args.max_steps=-1" in p.commands[0] for p in plans)
    assert "pass --lrs" in caplog.text and "its own default on tofu is 0.0009" in caplog.text
    assert (falcon_learning_rate("tofu"), falcon_learning_rate("muse")) == (9e-4, 1e-3)  # tofu_budget, budget
    falcon, rmu = (p.commands[0] for p in plans)  # FALCON gets its TOFU method_args, as its experiment does
    assert "++trainer.benchmark_method_args=${trainer.tofu_method_args}" in falcon
    assert not any("benchmark_method_args" in a for a in rmu)
    assert falcon_benchmark_overrides("muse") == []  # FALCON.yaml has no muse_method_args
    caplog.clear()
    capped = plan_runs(host, "tofu", ["FALCON"], [1e-3], python="python", extra=["trainer.args.max_steps=4"])
    train = capped[0].commands[0]
    assert "++trainer.args.max_steps=-1" not in train and train[-1] == "trainer.args.max_steps=4"
    assert "pass --lrs" not in caplog.text
