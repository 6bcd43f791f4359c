#!/usr/bin/env bash
# From your LLaMA checkpoint to a win rate: the paper's recipe (Xu et al. 2024, Table 1) on
# AlpacaFarm-format data, every stage with the shipped 7B configs (configs/llama7b_8xa100/).
#
#   CKPT=/ckpt/llama-7b SFT_DATA=alpaca_sft.json PAIRS=alpaca_human_preference.json \
#   PROMPTS=alpaca_unlabeled.json EVAL_SET=alpaca_farm_evaluation.json OUT=runs/recipe \
#   ANTHROPIC_API_KEY=... bash examples/alpacafarm_recipe.sh
#
# Inputs (environment variables; files are JSON lists or JSONL):
#   CKPT       your LLaMA checkpoint: a transformers directory (config.json, weights, tokenizer),
#              in whatever dtype it was saved (bf16 is usual)
#   SFT_DATA   SFT examples: instruction, input, output (AlpacaFarm's `sft` split); `skip` when
#              CKPT already is an SFT model (e.g. AlpacaFarm's sft10k): it is then used as is
#   PAIRS      preference pairs: instruction, input, output_1, output_2, preference (1|2)
#              (AlpacaFarm's `preference` split)
#   PROMPTS    PPO prompts: instruction, input (AlpacaFarm's `unlabeled` split)
#   EVAL_SET   evaluation instructions: instruction, input [, dataset] (AlpacaFarm / AlpacaEval)
# Settings:
#   OUT        output root (runs/recipe); every stage writes under it
#   NPROC      processes (GPUs) per trainer (8); TORCHRUN_ARGS replaces the torchrun flags
#              (default --standalone --nproc_per_node=$NPROC). The script drives ONE node: edit,
#              generate, eval and the dry runs would run again on every node it is started on. For
#              several nodes, run each trainer's torchrun line (printed before it starts) on every
#              node with --nnodes ... --rdzv_... (README, Multi-node) and the rest here.
#   GEN_NPROC  processes for `fgrlhf generate` (data-parallel; $NPROC; 1 = no torchrun)
#   DRY_RUN    1: before each trainer run, its dry run (CPU, fake tensors, DRY_RUN_WORLD_SIZE =
#              $NPROC fake ranks: minutes, no GPU memory) measures every phase's peak memory, which
#              the real run then checks against memory_limit_gb instead of the estimate (0)
#   CONFIGS    the trainer configs (configs/llama7b_8xa100 of this repository)
#   EDIT_MODEL Claude model of the minimal edits (claude-sonnet-4-6); needs ANTHROPIC_API_KEY
#              (ANTHROPIC_BASE_URL, if set, is where the SDK sends requests)
#   JUDGE      fgrlhf eval's judge: claude:<model> (claude:claude-sonnet-4-6, needs the key) or
#              rm:<reward model dir> (offline, e.g. rm:$OUT/rm_seq/final)
#   REFERENCE  AlpacaEval-format outputs to compare every policy with (e.g. text-davinci-003's);
#              empty: the SFT model's own answers to EVAL_SET (the paper's comparison)
#   *_EXTRA    key=value overrides appended to every call of a stage, after the config file:
#              COMMON_EXTRA (every trainer), SFT_EXTRA, RM_EXTRA, PPO_EXTRA, FIGA_EXTRA; flags
#              appended to the CLI stages: EDIT_EXTRA, GEN_EXTRA, EVAL_EXTRA (--swap by default:
#              each comparison judged in both orders). E.g. a CPU smoke run:
#              COMMON_EXTRA="device=cpu param_dtype=float32 activation_checkpointing=false"
#
# Resumable: rerun the same command. A stage whose final output exists is skipped (a trainer's
# final model, a policy's answers, a complete judgement by the same JUDGE): delete it, and what
# was made from it, to redo it. An interrupted trainer resumes from its newest checkpoint; `fgrlhf
# edit`, `generate` and `eval` resume what they had written (no request is paid twice). The key
# is needed only while edits are missing or for a claude: judge.
# Outputs: $OUT/{edits.jsonl, sft, rm_token, rm_seq, rm_seq_edited, ppo_token, ppo_fg, ppo_rlhf,
# figa}/ (each trainer's run: final model, metrics.jsonl, checkpoints), $OUT/outputs/<policy>.json
# (answers), $OUT/eval/<policy>/ (judgments, annotations.json, summary.json, winrate.json).
set -euo pipefail
if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "alpacafarm_recipe.sh needs bash >= 4.4 (empty arrays under set -u); this is $BASH_VERSION" >&2
  exit 2
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# --- inputs and settings --------------------------------------------------------------------
CKPT=${CKPT:?set CKPT to your LLaMA checkpoint directory}
SFT_DATA=${SFT_DATA:?set SFT_DATA to an SFT file (instruction, input, output), or to skip}
PAIRS=${PAIRS:?set PAIRS to the preference pairs (instruction, input, output_1, output_2, preference)}
PROMPTS=${PROMPTS:?set PROMPTS to the PPO prompts (instruction, input)}
EVAL_SET=${EVAL_SET:?set EVAL_SET to the evaluation instructions (instruction, input)}
OUT=${OUT:-runs/recipe}
NPROC=${NPROC:-8}
GEN_NPROC=${GEN_NPROC:-$NPROC}
TORCHRUN=${TORCHRUN:-torchrun}
PYTHON=${PYTHON:-python}
DRY_RUN=${DRY_RUN:-0}
DRY_RUN_WORLD_SIZE=${DRY_RUN_WORLD_SIZE:-$NPROC}
FGRLHF=${FGRLHF:-fgrlhf}
CONFIGS=${CONFIGS:-$REPO/configs/llama7b_8xa100}
EDIT_MODEL=${EDIT_MODEL:-claude-sonnet-4-6}
JUDGE=${JUDGE:-claude:claude-sonnet-4-6}
REFERENCE=${REFERENCE:-}
read -r -a TORCHRUN_FLAGS <<< "${TORCHRUN_ARGS:---standalone --nproc_per_node=$NPROC}"
read -r -a COMMON <<< "${COMMON_EXTRA:-}"
read -r -a SFT_X <<< "${SFT_EXTRA:-}"
read -r -a RM_X <<< "${RM_EXTRA:-}"
read -r -a PPO_X <<< "${PPO_EXTRA:-}"
read -r -a FIGA_X <<< "${FIGA_EXTRA:-}"
read -r -a EDIT_X <<< "${EDIT_EXTRA:-}"
read -r -a GEN_X <<< "${GEN_EXTRA:-}"
read -r -a EVAL_X <<< "${EVAL_EXTRA---swap}"

say() { printf '\n=== [%s, %d s in] %s\n' "$(date +%H:%M:%S)" "$SECONDS" "$*"; }
# done_model DIR: true (and says so) when DIR holds a finished model (trainers save atomically)
done_model() {
    if [[ -f "$1/config.json" ]]; then
        echo "    $1 exists: skipped (delete its run directory to redo it)"
        return 0
    fi
    return 1
}
# train SCRIPT CONFIG KEY=VALUE...: one trainer run on NPROC processes, overrides last. With
# DRY_RUN=1 the same command runs first as a dry run (one process, fake tensors, a fake world of
# DRY_RUN_WORLD_SIZE ranks) that measures the memory of every phase into
# output_dir/memory_plan.json; the real run then checks memory_limit_gb against those peaks.
train() {
    local script=$1 config=$2
    shift 2
    local out
    out=$(printf '%s\n' "$@" | sed -n 's/^output_dir=//p')
    if [[ "$DRY_RUN" == 1 && ! -f "$out/memory_plan.json" ]]; then
        "$PYTHON" "$REPO/trainer/$script" --config "$config" "$@" "${COMMON[@]}" \
            dry_run=true dry_run_world_size="$DRY_RUN_WORLD_SIZE"
    fi
    echo "+ $TORCHRUN ${TORCHRUN_FLAGS[*]} $REPO/trainer/$script --config $config $* ${COMMON[*]}"
    "$TORCHRUN" "${TORCHRUN_FLAGS[@]}" "$REPO/trainer/$script" --config "$config" "$@" "${COMMON[@]}"
}

for f in "$CKPT/config.json" "$PAIRS" "$PROMPTS" "$EVAL_SET" ${REFERENCE:+"$REFERENCE"}; do
    [[ -e "$f" ]] || { echo "error: $f does not exist" >&2; exit 2; }
done
[[ "$SFT_DATA" == skip || -e "$SFT_DATA" ]] || { echo "error: SFT_DATA $SFT_DATA does not exist" >&2; exit 2; }
# Claude is needed for the edits (until they are all written) and for a claude: judge: say so
# now, not after hours of training.
if [[ -z "${ANTHROPIC_API_KEY:-}" && ("$JUDGE" == claude:* || ! -f "$OUT/edits.jsonl") ]]; then
    echo "error: ANTHROPIC_API_KEY is not set (needed by fgrlhf edit and the claude judge)" >&2
    exit 2
fi
mkdir -p "$OUT"

# 1. Minimal edits. Reads PAIRS; writes $OUT/edits.jsonl (one EditRecord per pair: prompt,
#    original = the less-preferred output, edited = Claude's minimal edit of it, chosen, status).
#    First because it needs no GPU and is where an API problem shows. Rerunning sends only the
#    pairs not yet edited (exit 3 = some requests failed: rerun).
say "1. fgrlhf edit: $PAIRS -> $OUT/edits.jsonl"
"$FGRLHF" edit "$PAIRS" -o "$OUT/edits.jsonl" --format alpaca --model "$EDIT_MODEL" "${EDIT_X[@]}"
EDITS=$OUT/edits.jsonl

# 2. SFT. Reads CKPT and SFT_DATA; writes $OUT/sft/final (a transformers causal LM with its
#    prompt template in fgrlhf_policy.json), the start of every later model.
say "2. SFT: $CKPT on $SFT_DATA -> $OUT/sft/final"
if [[ "$SFT_DATA" == skip ]]; then
    SFT_MODEL=$CKPT
    echo "    SFT_DATA=skip: $CKPT is the SFT model"
else
    SFT_MODEL=$OUT/sft/final
    done_model "$SFT_MODEL" || train sft.py "$CONFIGS/sft.yaml" objective=sft \
        init_from="$CKPT" data="$SFT_DATA" output_dir="$OUT/sft" "${SFT_X[@]}"
fi

# 3. Reward models, from the SFT model, all on $OUT/edits.jsonl. Each writes $OUT/<rm>/final
#    (with fgrlhf_reward.json: its level and prompt template):
#    rm_token       token level on (edited ≻ original): the fine-grained RM (eq. 4);
#    rm_seq         sequence level on the original pairs (chosen ≻ original): PPO-RLHF's RM;
#    rm_seq_edited  sequence level on (edited ≻ original): the "fine-grained PPO" arm's RM.
say "3. reward models: $SFT_MODEL on $EDITS -> $OUT/rm_{token,seq,seq_edited}/final"
for rm in "rm_token rm_level=token" "rm_seq rm_level=sequence seq_pairs=original" \
    "rm_seq_edited rm_level=sequence seq_pairs=edited"; do
    read -r -a args <<< "$rm"
    done_model "$OUT/${args[0]}/final" || train reward.py "$CONFIGS/reward.yaml" "${args[@]:1}" \
        init_from="$SFT_MODEL" data="$EDITS" output_dir="$OUT/${args[0]}" "${RM_X[@]}"
done

# 4. PPO arms, each from the SFT model (actor and frozen reference) with one reward model, on
#    PROMPTS; the critic as the config says (critic_from=auto: the actor's backbone at the token
#    level, the RM at the sequence level). Each writes $OUT/<arm>/final/actor:
#    ppo_token  token-level rewards of rm_token (fine-grained token-level PPO, the paper's method);
#    ppo_fg     sequence rewards of rm_seq_edited ("fine-grained PPO");
#    ppo_rlhf   sequence rewards of rm_seq (PPO-RLHF, the baseline).
say "4. PPO: $SFT_MODEL + the reward models on $PROMPTS -> $OUT/ppo_{token,fg,rlhf}/final/actor"
for arm in "ppo_token rm_token token" "ppo_fg rm_seq_edited sequence" "ppo_rlhf rm_seq sequence"; do
    read -r name rm level <<< "$arm"
    done_model "$OUT/$name/final/actor" || train ppo.py "$CONFIGS/ppo.yaml" \
        init_from="$SFT_MODEL" reward_model="$OUT/$rm/final" reward_level="$level" \
        prompts="$PROMPTS" output_dir="$OUT/$name" "${PPO_X[@]}"
done

# 5. FIGA (no RL): the SFT model trained on the edited pairs with FIGA's token weights.
#    Reads $OUT/sft/final and $OUT/edits.jsonl; writes $OUT/figa/final.
say "5. FIGA: $SFT_MODEL on $EDITS -> $OUT/figa/final"
done_model "$OUT/figa/final" || train sft.py "$CONFIGS/sft.yaml" objective=figa \
    init_from="$SFT_MODEL" data="$EDITS" output_dir="$OUT/figa" "${FIGA_X[@]}"

# 6. Answers. Every policy answers EVAL_SET with the prompt template it was trained on;
#    writes $OUT/outputs/<policy>.json (AlpacaEval format). Resumable (a rerun only completes).
say "6. fgrlhf generate: every policy on $EVAL_SET -> $OUT/outputs/"
declare -A POLICY=(
    [sft]=$SFT_MODEL [ppo_token]=$OUT/ppo_token/final/actor [ppo_fg]=$OUT/ppo_fg/final/actor
    [ppo_rlhf]=$OUT/ppo_rlhf/final/actor [figa]=$OUT/figa/final
)
NAMES=(sft ppo_token ppo_fg ppo_rlhf figa)
mkdir -p "$OUT/outputs"
for name in "${NAMES[@]}"; do
    out=$OUT/outputs/$name.json
    if [[ -f "$out" ]]; then
        echo "    $out exists: skipped"
        continue
    fi
    # a checkpoint used as the SFT model as is carries no fgrlhf_policy.json: the configs' template
    template=()
    [[ -f "${POLICY[$name]}/fgrlhf_policy.json" ]] || template=(--prompt-template alpaca)
    if ((GEN_NPROC > 1)); then
        gen=("$TORCHRUN" --standalone --nproc_per_node="$GEN_NPROC" -m trainer.cli generate)
    else
        gen=("$FGRLHF" generate)
    fi
    "${gen[@]}" "${POLICY[$name]}" "$EVAL_SET" -o "$out" --generator "$name" "${template[@]}" "${GEN_X[@]}"
done

# 7. Judging. Each policy's answers against the reference's (REFERENCE, or the SFT model's):
#    writes $OUT/eval/<policy>/ (judgments.jsonl, annotations.json, summary.json). Skipped when
#    summary.json says every comparison was judged, by this JUDGE against this reference;
#    otherwise a rerun judges only what is missing (failed requests, exit 3: rerun).
say "7. fgrlhf eval --judge $JUDGE -> $OUT/eval/"
REF=${REFERENCE:-$OUT/outputs/sft.json}
judged() {
    local s=$1/summary.json
    grep -qs '"complete": true' "$s" && grep -qF "\"judge\": \"$JUDGE\"" "$s" &&
        grep -qF "\"reference_outputs\": \"$REF\"" "$s"
}
JUDGED=()
for name in "${NAMES[@]}"; do
    [[ -z "$REFERENCE" && "$name" == sft ]] && continue # the SFT model is the reference
    JUDGED+=("$name")
    dir=$OUT/eval/$name
    if judged "$dir"; then
        echo "    $dir is complete (judge $JUDGE, reference $REF): skipped"
        continue
    fi
    "$FGRLHF" eval "$OUT/outputs/$name.json" "$REF" --judge "$JUDGE" -o "$dir" "${EVAL_X[@]}"
done

# 8. Win rates (AlpacaEval's arithmetic) from each annotations file: $OUT/eval/<policy>/winrate.json.
#    Always recomputed and printed: the run's result, the paper's Table 1.
say "8. fgrlhf winrate: the paper's Table 1 against $(basename "$REF")"
for name in "${JUDGED[@]}"; do
    echo "--- $name"
    "$FGRLHF" winrate "$OUT/eval/$name/annotations.json" --json "$OUT/eval/$name/winrate.json"
done
say "done: win rates in $OUT/eval/<policy>/winrate.json"
