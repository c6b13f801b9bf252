#!/usr/bin/env bash
# Unlearning quality on real data: FALCON vs open-unlearning's baselines on a TOFU subset
# with a real pretrained LM (SmolLM2-135M-Instruct), on CPU.
#
#   HOST=/path/to/open-unlearning SHARED=/work/shared WORK=/path/to/scratch \
#   PY=/path/to/hostvenv/bin/python CONVERT_PY=/path/to/venv-with-transformers>=4.57/bin/python \
#   benchmarks/tofu_quality.sh [STAGE ...]
#
# STAGES (default: all, in order): restore data export finetune eval_refs unlearn unlearn_defaults relearn
#   relearn_refs archive report
#   finetune = finetune_target finetune_retain; eval_refs = eval_retain eval_target probes eval_unseen;
#   eval_unseen = the target and retain models' forget-set metrics on two authors no model here saw
#   (unseen01): the target's truth ratios there are a reference for forget_quality without a retain model
#   (benchmarks/tofu_quality/unseen_reference.py);
#   finish_unlearn = evaluate (src/eval.py) unlearned models whose in-training eval did not finish;
#   unlearn_defaults = FALCON through experiment=unlearn/tofu/falcon with its shipped budget (README);
#   relearn_refs = the relearning attack on the retain model (the control of `relearn`);
#   retain_seed (SEED=N > 0, not in the default list) = a second retain model, fine-tuned like the first with
#   the host's seed N, evaluated against the first: the forget_quality a perfect unlearner scores here;
#   archive / restore = the results without the models (archive.py) into / from ARCHIVE (default
#   docs/results/archive, committed): on a fresh machine `restore` brings every earlier run's numbers back, so
#   `report` covers them, and the stages above redo only what has no result (the models: data export finetune).
# Env: SCALE=full|micro|smoke, PAR (parallel unlearning runs), RELEARN_RUNS, LRS_<METHOD>, EXTRA_<METHOD>,
#   RUN_TAG, SEED, EVAL_SCOPE
# Every stage skips work whose output already exists (delete the output to redo it); outputs are
# written to a temporary name and renamed. Nothing is installed: PY must already have the host's
# requirements and falcon-unlearning (`trainer=FALCON` comes from our Hydra search-path plugin).
# Everything heavy runs under `nice -n 10` with OMP_NUM_THREADS (default 2).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
HERE=$REPO/benchmarks/tofu_quality
: "${HOST:?set HOST to an open-unlearning checkout}"
: "${WORK:?set WORK to a scratch directory outside the repo}"
SHARED=${SHARED:-/work/shared}
PY=${PY:-python}
CONVERT_PY=${CONVERT_PY:-$PY}
OUTDOCS=${OUTDOCS:-$REPO/docs/results}
ARCHIVE=${ARCHIVE:-$REPO/docs/results/archive}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false WANDB_DISABLED=true
NICE="nice -n 10"
HOST=$(cd "$HOST" && pwd); mkdir -p "$WORK"; WORK=$(cd "$WORK" && pwd)
M=$WORK/models
# ---- knobs ---------------------------------------------------------------------------------------
# SCALE=full (default): the full protocol (target = 10 authors / 200 QA, forget01 = 40 QA, retain
# = 8 authors / 160 QA). SCALE=micro / smoke: reduced sizes for a 2-core CPU shared by 5 jobs (see
# docs/results/README.md); smoke only proves that every stage runs, its numbers are not quality evidence.
SCALE=${SCALE:-full}
if [ "$SCALE" = smoke ]; then
  : "${K_FORGET:=4}" "${N_RET_AUTHORS:=2}" "${K_RETAIN:=4}" "${N_PER_AUTHOR:=2}" "${N_RA:=4}" "${N_WF:=4}"
  : "${FT_EPOCHS:=2}" "${FT_LR:=3e-4}" "${FT_BS:=8}" "${UL_EPOCHS:=1}" "${UL_BS:=4}" "${MAX_NEW:=24}"
  : "${LRS_FALCON:=1e-4}" "${LRS_RMU:=3e-5}" "${LRS_NPO:=3e-5}" "${LRS_SimNPO:=3e-5}" "${LRS_GradDiff:=3e-5}"
  : "${RELEARN_STEPS:=2}" "${RELEARN_LR:=1e-4}" "${EVAL_DROP:=~eval.tofu.metrics.privleak ~eval.tofu.metrics.extraction_strength}"
fi
if [ "$SCALE" = micro ]; then
  : "${K_FORGET:=10}" "${N_RET_AUTHORS:=4}" "${K_RETAIN:=10}" "${N_PER_AUTHOR:=3}" "${N_RA:=12}" "${N_WF:=12}"
  : "${FT_EPOCHS:=3}" "${FT_LR:=3e-4}" "${FT_BS:=6}" "${UL_EPOCHS:=2}" "${UL_BS:=4}" "${MAX_NEW:=32}"
  : "${LRS_FALCON:=1e-4}" "${LRS_RMU:=3e-5}" "${LRS_NPO:=3e-5}" "${LRS_SimNPO:=3e-5}" "${LRS_GradDiff:=3e-5}"
  : "${RELEARN_STEPS:=5}" "${RELEARN_LR:=1e-4}" "${EVAL_DROP:=~eval.tofu.metrics.privleak ~eval.tofu.metrics.extraction_strength}"
fi
K_FORGET=${K_FORGET:-20}           # QA per forget author (forget01 = 2 authors)
N_RET_AUTHORS=${N_RET_AUTHORS:-8}  # retained authors (of forget05's first 8)
K_RETAIN=${K_RETAIN:-20}           # training QA per retained author
FT_EPOCHS=${FT_EPOCHS:-5}          # fine-tuning of target / retain models
FT_LR=${FT_LR:-1e-4}
FT_BS=${FT_BS:-8}
UL_EPOCHS=${UL_EPOCHS:-5}          # unlearning: same budget for every method
UL_BS=${UL_BS:-4}                  # batch 4 forget + 4 retain: forget01 in 50 steps
MAX_NEW=${MAX_NEW:-48}             # generation length for the ROUGE metrics (host default 200)
EVAL_BS=${EVAL_BS:-16}
N_PER_AUTHOR=${N_PER_AUTHOR:-10}   # retain_perturbed (model utility): QA per retained author
N_RA=${N_RA:-40}; N_WF=${N_WF:-40} # real_authors / world_facts rows (model utility)
METHODS=${METHODS:-"FALCON RMU NPO SimNPO GradDiff"}
LRS_FALCON=${LRS_FALCON:-"1e-4 3e-4 4e-4 5e-4 1e-3"}  # the grid of docs/results
LRS_RMU=${LRS_RMU:-"1e-5 3e-5 1e-4"}
LRS_NPO=${LRS_NPO:-"1e-5 3e-5 1e-4"}
LRS_SimNPO=${LRS_SimNPO:-"1e-5 3e-5 1e-4"}
LRS_GradDiff=${LRS_GradDiff:-"1e-5 3e-5 1e-4"}
# EXTRA_UNLEARN (all methods) / EXTRA_<METHOD> (one method): extra host overrides, e.g.
# EXTRA_FALCON="trainer.method_args.retain_weight=10"
# RUN_TAG=-L7 EXTRA_FALCON="trainer.method_args.layer=7": a variant, run as FALCON-L7_lr<LR> (its own row)
# SEED=N (N > 0): the unlearning runs again with the host's trainer.args.seed=N (data order, the retain item
# drawn per forget item; FALCON's POV vector and Step-1 samples), named <run>_seed<N>; report.py keeps
# selection on seed 0 and summarises the seeds
SEED=${SEED:-0}
case $SEED in *[!0-9]* | '') echo "SEED must be a non-negative integer, got '$SEED'" >&2; exit 2 ;; esac
SEED_SUFFIX=; if [ "$SEED" -ne 0 ]; then SEED_SUFFIX=_seed$SEED; fi
# EVAL_SCOPE=full (default): every unlearned model gets the host's whole TOFU evaluation (6.5-8 min here).
# EVAL_SCOPE=forget: a screen, only the forget-set metrics (forget_quality, its truth ratios, the forget answer
# probability; about a minute), for sweeping rates and seeds fast; the runs are tagged -fq (<METHOD><RUN_TAG>-fq_lr..),
# report.py lists them without model_utility and never selects them; confirm a setting with EVAL_SCOPE=full.
EVAL_SCOPE=${EVAL_SCOPE:-full}
case $EVAL_SCOPE in
  full) SCOPE_TAG= ;;
  forget) SCOPE_TAG=-fq ;;
  *) echo "EVAL_SCOPE must be full or forget, got '$EVAL_SCOPE'" >&2; exit 2 ;;
esac
# relearning attack: Unlearn-Simple's protocol at full scale (100 steps, lr 1e-5: `falcon-unlearn attack`'s
# defaults); micro / smoke take fewer steps at lr 1e-4
RELEARN_STEPS=${RELEARN_STEPS:-100}; RELEARN_LR=${RELEARN_LR:-1e-5}

log() { echo "[tofu_quality $(date +%H:%M:%S)] $*"; }

# Host model config = configs/model/Llama-3.2-1B-Instruct.yaml overridden for SmolLM2 (chat template
# comes from the tokenizer; apply_chat_template=True uses only system_prompt / date_string).
# Host model config = configs/model/Llama-3.2-1B-Instruct.yaml overridden for SmolLM2. With
# apply_chat_template=True the host formats with the tokenizer's chat template (<|im_start|>role\n...
# <|im_end|>) and uses only system_prompt / date_string from template_args (the *_tag keys are read
# only when apply_chat_template=False).
model_overrides() {  # $1 = model dir; sets array MO
  MO=(model=Llama-3.2-1B-Instruct
    "model.model_args.pretrained_model_name_or_path=$1" "model.tokenizer_args.pretrained_model_name_or_path=$1"
    model.model_args.attn_implementation=eager model.model_args.torch_dtype=float32
    "model.template_args.system_prompt='You are a helpful assistant.'" model.template_args.date_string=null)
}
CPU_O=(trainer.args.warmup_epochs=0 trainer.args.optim=adamw_torch trainer.args.bf16=false
  trainer.args.bf16_full_eval=false trainer.args.ddp_find_unused_parameters=null
  trainer.args.report_to=none trainer.args.eval_on_start=false trainer.args.eval_strategy=no
  trainer.args.save_strategy=no trainer.args.gradient_accumulation_steps=1)
# forget01 / holdout01 splits, shorter generation for the ROUGE metrics
G=generation_args.max_new_tokens=$MAX_NEW
EVAL_SPLITS=(forget_split=forget01 holdout_split=holdout01 eval.tofu.batch_size=$EVAL_BS)  # every evaluation
EVAL_O=("${EVAL_SPLITS[@]}" ${EVAL_DROP:-}
  eval.tofu.metrics.forget_Q_A_ROUGE.$G
  eval.tofu.metrics.model_utility.pre_compute.retain_Q_A_ROUGE.$G
  eval.tofu.metrics.model_utility.pre_compute.ra_Q_A_ROUGE.$G
  eval.tofu.metrics.model_utility.pre_compute.wf_Q_A_ROUGE.$G)
# the unlearned models' evaluation (EVAL_SCOPE) and the metric that says it finished
if [ "$EVAL_SCOPE" = forget ]; then
  UL_EVAL_O=("${EVAL_SPLITS[@]}"
    ~eval.tofu.metrics.forget_Q_A_ROUGE ~eval.tofu.metrics.model_utility ~eval.tofu.metrics.privleak
    ~eval.tofu.metrics.extraction_strength)
  UL_EVAL_DONE=forget_quality
else
  UL_EVAL_O=("${EVAL_O[@]}"); UL_EVAL_DONE=model_utility
fi

data_key() { echo "$N_PER_AUTHOR $N_RA $N_WF $K_FORGET $N_RET_AUTHORS $K_RETAIN"; }  # the TOFU subset built
stage_data() {
  local key; key=$(data_key)
  if [ "$(cat "$WORK/data.key" 2>/dev/null)" = "$key" ] && [ -f "$HOST/locuslab/TOFU/unseen01_perturbed.json" ]; then log "data: exists"; return; fi
  $PY "$HERE/build_data.py" "$SHARED/data/tofu" "$HOST/locuslab/TOFU" $key
  echo "$key" > "$WORK/data.key"
}
stage_export() {
  $NICE $CONVERT_PY "$HERE/export_model.py" "$SHARED/models/smollm2-135m-instruct-gguf" "$M/base"
}
finetune() {  # $1 = name, $2 = TOFU config of the training set, $3 = the host's seed (default 0, its own)
  local out=$M/$1 seed=${3:-0}
  if [ -f "$out/model.safetensors" ]; then log "finetune $1: exists"; return; fi
  log "finetune $1 on $2"
  rm -rf "$out.tmp"
  model_overrides "$M/base"
  (cd "$HOST" && $NICE $PY src/train.py --config-name=train.yaml experiment=finetune/tofu/default \
    "${MO[@]}" "${CPU_O[@]}" "${EVAL_O[@]}" \
    data.train.TOFU_QA_full.args.hf_args.name=$2 \
    trainer.args.per_device_train_batch_size=$FT_BS trainer.args.learning_rate=$FT_LR \
    trainer.args.num_train_epochs=$FT_EPOCHS trainer.args.weight_decay=0.01 trainer.args.do_eval=false \
    trainer.args.seed=$seed \
    trainer.args.logging_steps=5 task_name=tq_ft_$1 paths.output_dir="$out.tmp") > "$WORK/logs/ft_$1.log" 2>&1
  mv "$out.tmp" "$out"
}
stage_finetune_target() { finetune target target; }
stage_finetune_retain() { finetune retain retain; }
stage_finetune() { stage_finetune_target; stage_finetune_retain; }

host_eval() {  # $1 = model dir, $2 = output dir, $3 = retain_logs_path or null, $4 = overrides (default EVAL_O)
  local -n eval_o=${4:-EVAL_O}
  if [ -f "$2/TOFU_EVAL.json" ]; then log "eval $2: exists"; return; fi
  log "eval $1 -> $2"
  local tag; tag=$(basename "$2"); [ "$tag" = evals ] && tag=$(basename "$(dirname "$2")" .tmp)
  rm -rf "$2.tmp"
  model_overrides "$1"
  (cd "$HOST" && $NICE $PY src/eval.py experiment=eval/tofu/default \
    "${MO[@]}" "${eval_o[@]}" "retain_logs_path=$3" model.model_args.device_map=${DEVICE_MAP:-cpu} \
    task_name=tq_eval_$tag paths.output_dir="$2.tmp") > "$WORK/logs/eval_$tag.log" 2>&1
  mv "$2.tmp" "$2"
}
stage_eval_retain() { host_eval "$M/retain" "$WORK/evals/retain" null; }
stage_eval_target() {  # needs the retain model's TOFU_EVAL.json for forget_quality
  host_eval "$M/target" "$WORK/evals/target" "$WORK/evals/retain/TOFU_EVAL.json"
}
stage_probes() {  # cheap forget-set probe of base and target: did fine-tuning learn the facts?
  for n in base target; do
    [ -f "$WORK/evals/probe_$n.json" ] || $NICE $PY "$HERE/probe.py" "$M/$n" "$HOST/locuslab/TOFU/forget01.json" \
      "$WORK/evals/probe_$n.json" --max-new-tokens $MAX_NEW > "$WORK/logs/probe_$n.log" 2>&1
  done
}
# the forget-set metrics (EVAL_SCOPE=forget's) on unseen01 instead of forget01
UNSEEN_EVAL_O=(forget_split=unseen01 holdout_split=holdout01 eval.tofu.batch_size=$EVAL_BS
  ~eval.tofu.metrics.forget_Q_A_ROUGE ~eval.tofu.metrics.model_utility ~eval.tofu.metrics.privleak
  ~eval.tofu.metrics.extraction_strength)
stage_eval_unseen() {  # forget_quality of each = its unseen-author truth ratios against the retain model's
  # forget-set ones: how well "never saw these authors" stands in for "never saw the forget authors"
  host_eval "$M/target" "$WORK/evals/target_unseen01" "$WORK/evals/retain/TOFU_EVAL.json" UNSEEN_EVAL_O
  host_eval "$M/retain" "$WORK/evals/retain_unseen01" "$WORK/evals/retain/TOFU_EVAL.json" UNSEEN_EVAL_O
}
stage_eval_refs() { stage_eval_retain; stage_eval_target; stage_probes; stage_eval_unseen; }
stage_retain_seed() {  # the retain model again at seed SEED (data order only: same data, same recipe), scored
  # against the first: a model that never saw the forget set, i.e. the ceiling of forget_quality here
  if [ "$SEED" -eq 0 ]; then log "retain_seed: needs SEED=N > 0, got SEED=$SEED (the reference retain model)" >&2; return 1; fi
  finetune "retain_seed$SEED" retain "$SEED"
  host_eval "$M/retain_seed$SEED" "$WORK/evals/retain_seed$SEED" "$WORK/evals/retain/TOFU_EVAL.json"
}

host_unlearn() {  # $1 = run name, $2 = host experiment, rest = the run's own overrides: one src/train.py
  # run on the target model into unlearn/$1 (skipped when DONE), its wall time, then its evaluation
  local name=$1 experiment=$2 out=$WORK/unlearn/$1 t0
  shift 2
  if [ -f "$out/DONE" ]; then log "unlearn $name: exists"; return; fi
  log "unlearn $name"
  rm -rf "$out.tmp"
  t0=$(date +%s)
  model_overrides "$M/target"
  (cd "$HOST" && $NICE $PY src/train.py --config-name=unlearn.yaml experiment=$experiment \
    "${MO[@]}" "${CPU_O[@]}" "${UL_EVAL_O[@]}" retain_split=retain \
    retain_logs_path="$WORK/evals/retain/TOFU_EVAL.json" trainer.args.logging_steps=1 trainer.args.seed=$SEED \
    "$@" task_name=tq_ul_$name paths.output_dir="$out.tmp") > "$WORK/logs/ul_$name.log" 2>&1 \
    || log "unlearn $name: host run failed (see logs/ul_$name.log); evaluating the saved model if any"
  echo $(( $(date +%s) - t0 )) > "$out.tmp/seconds"
  finish_unlearn "$out" || true
}
unlearn() {  # $1 = method, $2 = lr (max_steps=-1: FALCON.yaml's 100-step budget gives way to the epochs)
  local xv=EXTRA_$1
  host_unlearn "$1${RUN_TAG:-}${SCOPE_TAG}_lr$2$SEED_SUFFIX" unlearn/tofu/default trainer=$1 \
    trainer.args.per_device_train_batch_size=$UL_BS trainer.args.learning_rate=$2 \
    trainer.args.num_train_epochs=$UL_EPOCHS ++trainer.args.max_steps=-1 ${EXTRA_UNLEARN:-} ${!xv:-}
}
finish_unlearn() {  # $1 = run dir; take the host's end-of-training eval, else evaluate the saved model
  local out=$1 ev
  ev=$(ls -d "$out.tmp"/checkpoint-[0-9]*/evals 2>/dev/null | grep -v partial | head -1 || true)
  if [ -z "$ev" ] || ! grep -q "$UL_EVAL_DONE" "$ev/TOFU_SUMMARY.json" 2>/dev/null; then
    [ -f "$out.tmp/model.safetensors" ] || { log "unlearn $(basename "$out"): no model saved, see logs"; return 1; }
    host_eval "$out.tmp" "$out.tmp/evals" "$WORK/evals/retain/TOFU_EVAL.json" UL_EVAL_O; ev=$out.tmp/evals
  fi
  cp "$ev/TOFU_EVAL.json" "$ev/TOFU_SUMMARY.json" "$out.tmp/"
  touch "$out.tmp/DONE"
  mv "$out.tmp" "$out"
}
stage_finish_unlearn() {  # runs whose training finished but whose eval did not (PAR at a time)
  local d n=0
  for d in "$WORK"/unlearn/*.tmp; do
    [ -f "$d/model.safetensors" ] || continue
    finish_unlearn "${d%.tmp}" & n=$((n + 1))
    if [ "$n" -ge "${PAR:-1}" ]; then wait -n || true; n=$((n - 1)); fi
  done
  wait
}
stage_unlearn() {  # PAR runs at a time (default 1)
  mkdir -p "$WORK/unlearn"
  local n=0
  for m in $METHODS; do v=LRS_$m; for lr in ${!v}; do
    unlearn "$m" "$lr" &
    n=$((n + 1)); if [ "$n" -ge "${PAR:-1}" ]; then wait -n || true; n=$((n - 1)); fi
  done; done
  wait
}
shipped_run() {  # the name of unlearn_defaults' run: after FALCON.yaml's tofu_budget lr (the shipped TOFU rate)
  local lr
  lr=$($PY -c "import yaml, falcon_plugin, pathlib
p = pathlib.Path(falcon_plugin.__file__).parent / 'configs/trainer/FALCON.yaml'
print(yaml.safe_load(p.read_text())['tofu_budget']['learning_rate'])") || { log "cannot read FALCON.yaml's tofu_budget" >&2; return 1; }
  echo "FALCON-defaults${SCOPE_TAG}_lr$lr"
}
stage_unlearn_defaults() {  # FALCON exactly as a user runs it: experiment=unlearn/tofu/falcon, no budget overrides
  # (trainer/FALCON.yaml's tofu_budget over its budget: lr, epochs, batch 4, constant; method_args as shipped);
  # the run is named after the shipped lr, so a change of the default is a new run
  local name
  name=$(shipped_run) || return 1
  host_unlearn "$name$SEED_SUFFIX" unlearn/tofu/falcon
}
relearn_attack() {  # $1 = model folder, $2 = name: `falcon-unlearn attack --attacks relearn` into attacks/$2
  if [ -f "$WORK/attacks/$2/attacks.json" ]; then log "relearn $2: exists"; return; fi
  log "relearn $2"
  $NICE $PY -m falcon_plugin.tools.cli attack --model "$1" --attacks relearn --template chat \
    --train-data "$HOST/locuslab/TOFU/relearn_train.json" --test-data "$HOST/locuslab/TOFU/relearn_test.json" \
    --relearn-steps "$RELEARN_STEPS" --relearn-lr "$RELEARN_LR" --max-new-tokens "$MAX_NEW" \
    --out "$WORK/attacks/$2" > "$WORK/logs/relearn_$2.log" 2>&1 \
    || log "relearn $2: failed (see logs/relearn_$2.log)"
}
stage_relearn() {  # `falcon-unlearn attack --attacks relearn` (docs/attacks.md) on every finished run
  # RELEARN_RUNS="FALCON_lr1e-4 ..." restricts the attacked runs (default: all). Protocol: OPTML-Group/
  # Unlearn-Simple's relearning (AdamW, weight decay 0, batch 1 x 4 accumulation, warm-up steps//10,
  # linear decay) for RELEARN_STEPS steps at lr RELEARN_LR on relearn_train, measured on relearn_test
  # (the held-out half of the forget set) and on relearn_train, before and after. Output (atomic):
  # $WORK/attacks/<run>/attacks.json; a run whose file exists is skipped.
  local d name
  for d in "$WORK"/unlearn/*/; do
    d=${d%/}; [ -f "$d/DONE" ] || continue
    name=$(basename "$d")
    if [ -n "${RELEARN_RUNS:-}" ] && [[ " $RELEARN_RUNS " != *" $name "* ]]; then continue; fi
    if [ ! -f "$d/model.safetensors" ] && [ ! -f "$WORK/attacks/$name/attacks.json" ]; then
      log "relearn $name: no model (restored from the archive: run its unlearning again to attack it)"; continue
    fi
    relearn_attack "$d" "$name"
  done
}
stage_relearn_refs() {  # the same attack on the retain model: what relearning half the forget set teaches a
  # model that never saw the other half (the floor a "recovered" forget probability is read against)
  relearn_attack "$M/retain" reference-retain
}
stage_report() {  # the protocol's table (report.py), the product's leaderboard, FALCON's Step-1 report
  mkdir -p "$OUTDOCS"
  $PY "$HERE/report.py" "$WORK" "$OUTDOCS"
  local run dirs=("$WORK/unlearn")
  [ -d "$WORK/attacks" ] && dirs+=("$WORK/attacks")
  $PY -m falcon_plugin.tools.cli leaderboard "${dirs[@]}" --out "$OUTDOCS/tofu_board" -q \
    || log "report: falcon-unlearn leaderboard failed"
  for run in $(shipped_run || true) $(ls "$WORK/unlearn" 2>/dev/null | grep -E '^FALCON-defaults_lr[^.]*$' || true) \
    $(ls "$WORK/unlearn" 2>/dev/null | grep -E '^FALCON_lr[^.]*$' || true); do
    if [ -f "$WORK/unlearn/$run/mi_report.json" ]; then
      cp "$WORK/unlearn/$run/mi_report.json" "$OUTDOCS/tofu_falcon_mi_report.json"
      cp "$WORK/unlearn/$run/mi_report.png" "$OUTDOCS/tofu_falcon_mi_report.png" 2>/dev/null || true
      log "report: FALCON's Step-1 report from $run"; break
    fi
  done
}

protocol_key() {  # what makes two caches' results comparable: the data subset, the recipes, the generation
  echo "$(data_key) $FT_EPOCHS $FT_LR $FT_BS $UL_EPOCHS $UL_BS $MAX_NEW"
}
stage_archive() {  # the results, not the models; an archive holds one protocol's (its protocol.key)
  local key; key=$(protocol_key)
  if [ -f "$ARCHIVE/protocol.key" ] && [ "$(cat "$ARCHIVE/protocol.key")" != "$key" ]; then
    log "archive: $ARCHIVE holds another protocol's results ('$(cat "$ARCHIVE/protocol.key")', this one: '$key'); set ARCHIVE" >&2
    return 1
  fi
  $PY "$HERE/archive.py" archive "$WORK" "$ARCHIVE" && echo "$key" > "$ARCHIVE/protocol.key"
}
stage_restore() {  # only an archive of this protocol (a SCALE=micro cache never gets full-scale results)
  [ -d "$ARCHIVE" ] || return 0
  if [ "$(cat "$ARCHIVE/protocol.key" 2>/dev/null)" != "$(protocol_key)" ]; then
    log "restore: $ARCHIVE holds another protocol's results ('$(cat "$ARCHIVE/protocol.key" 2>/dev/null)', this one: '$(protocol_key)'); skipped"
    return 0
  fi
  $PY "$HERE/archive.py" restore "$ARCHIVE" "$WORK"
}

mkdir -p "$WORK/logs" "$WORK/evals" "$M"
# own datasets cache per data subset: offline, `datasets` would otherwise reuse a cached
# locuslab/TOFU config of the same name built from other files (another subset, another checkout)
export HF_DATASETS_CACHE=$WORK/hf_datasets_cache/$(data_key | tr ' ' _)
STAGES=${*:-"restore data export finetune eval_refs unlearn unlearn_defaults relearn relearn_refs archive report"}
for s in $STAGES; do log "stage $s"; stage_$s; done
log done
