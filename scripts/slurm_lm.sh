#!/bin/bash
# Multi-node, multi-GPU training with recipes/lm.py under SLURM.
#
#   cd lm_heads && sbatch scripts/slurm_lm.sh                    # defaults below
#   sbatch --nodes 4 scripts/slurm_lm.sh --config recipes/configs/lm1b.yaml --head adaptive
#
# Submit from the repository root (sbatch runs a copy of this script, so the job finds the
# repository through the directory it was submitted from), or set LM_HEADS_REPO.
#
# One task per GPU: srun starts nodes x gpus-per-node copies of the recipe, and Lightning's
# SLURMEnvironment reads SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS / the node list to set up the
# process group itself (no launcher, no MASTER_ADDR to export). --devices and --num-nodes passed to
# the recipe must equal --ntasks-per-node (= --gpus-per-node) and --nodes here, which the last
# line takes care of. Extra arguments are handed to recipes/lm.py (they override the config).
#
# Data: build the token cache once before the job (e.g. run the recipe with --max-steps 1 on a
# login node, or `python -c "from lm_heads.data import LMDataModule; LMDataModule('lm1b',
# cache_dir='$LM_HEADS_CACHE').prepare_data()"`) so that the ranks only read it. A rank whose checks
# fail (a missing data folder on one node, say) exits with status 2 before the process group
# starts; srun --kill-on-bad-exit then ends the other tasks, and a rank left waiting for a peer
# gives up after --dist-timeout (600 s by default) with a paragraph naming the likely cause.
#
# Without SLURM, torchrun works the same way (Lightning's TorchElasticEnvironment):
#   torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
#       recipes/lm.py --config recipes/configs/lm1b.yaml --devices 8 --num-nodes 2
# and on a single machine `python recipes/lm.py --devices 8` launches its own 8 processes.
#
#SBATCH --job-name=lm-heads
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --signal=SIGUSR1@120
#SBATCH --requeue
#SBATCH --output=slurm-%j.out
# (--signal: two minutes before the time limit the recipe saves <output-dir>/hpc_ckpt_N.ckpt at the
#  end of the step every rank agrees on, and requeues the job, which --requeue allows where the
#  cluster's default does not; SLURM's SIGTERM then saves checkpoints/last.ckpt and exits 143.
#  Every start of this script, requeued or resubmitted by hand, passes --resume last, and the
#  recipe continues from whichever of last.ckpt and hpc_ckpt_N.ckpt holds the later step.)

set -euo pipefail

REPO=${LM_HEADS_REPO:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}}
if [[ ! -f "$REPO/recipes/lm.py" ]]; then
    echo "slurm_lm.sh: error: no recipes/lm.py in $REPO: submit the job from the lm_heads" \
        "repository root, or set LM_HEADS_REPO to it" >&2
    exit 2
fi
cd "$REPO"

CONFIG=${CONFIG:-recipes/configs/wikitext103.yaml}
OUTPUT_DIR=${OUTPUT_DIR:-runs/slurm-${SLURM_JOB_NAME:-lm}}
export LM_HEADS_CACHE=${LM_HEADS_CACHE:-$HOME/.cache/lm_heads}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-8}
# A rank whose NCCL collective fails or times out (--dist-timeout) tears its process down instead
# of hanging (the current name of the old NCCL_ASYNC_ERROR_HANDLING).
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}

RESUME=()
if [[ " $* " != *" --resume "* && " $* " != *" --resume="* && " $* " != *" --overwrite "* ]]; then
    if compgen -G "$OUTPUT_DIR/hpc_ckpt_*.ckpt" >/dev/null \
        || [[ -f "$OUTPUT_DIR/checkpoints/last.ckpt" ]]; then
        echo "slurm_lm.sh: continuing the run in $OUTPUT_DIR (--resume last)" >&2
        RESUME=(--resume last)
    fi
fi

# --kill-on-bad-exit: one task failing ends the others at once (none waits for it).
# --cpus-per-task: some Slurm versions (22.05) no longer pass sbatch's value on to srun.
srun --kill-on-bad-exit=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-8}" \
    python recipes/lm.py \
    --config "$CONFIG" \
    --output-dir "$OUTPUT_DIR" \
    --accelerator gpu \
    --devices "${SLURM_NTASKS_PER_NODE:-8}" \
    --num-nodes "${SLURM_JOB_NUM_NODES:-1}" \
    --strategy ddp \
    ${RESUME[@]+"${RESUME[@]}"} \
    "$@"
