#!/bin/bash
# Multi-node, multi-GPU training with recipes/lm.py under SLURM.
#
#   sbatch scripts/slurm_lm.sh                                   # defaults below
#   sbatch --nodes 4 scripts/slurm_lm.sh --config recipes/configs/lm1b.yaml --head adaptive
#
# One task per GPU: srun starts nodes x gpus-per-node copies of the script, and Lightning's
# SLURMEnvironment reads SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS / the node list to set up the
# process group itself (no launcher, no MASTER_ADDR to export). --devices and --num-nodes passed to
# the recipe must equal --gpus-per-node / --ntasks-per-node and --nodes here, which the last line
# takes care of. Extra arguments are handed to recipes/lm.py (they override the config).
#
# Data: build the token cache once before the job (e.g. run the recipe with --max-steps 1 on a
# login node, or `python -c "from lm_heads.data import LMDataModule; LMDataModule('lm1b',
# cache_dir='$LM_HEADS_CACHE').prepare_data()"`) so that the ranks only read it.
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
#SBATCH --output=slurm-%j.out
# (--signal: Lightning's SLURM plugin catches SIGUSR1 two minutes before the time limit, saves
#  <output-dir>/hpc_ckpt_N.ckpt and requeues the job; the requeued job restores it by itself when
#  no --resume is given. A job resubmitted by hand continues from last.ckpt instead.)

set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"

CONFIG=${CONFIG:-recipes/configs/wikitext103.yaml}
OUTPUT_DIR=${OUTPUT_DIR:-runs/slurm-${SLURM_JOB_NAME:-lm}}
export LM_HEADS_CACHE=${LM_HEADS_CACHE:-$HOME/.cache/lm_heads}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-8}
export NCCL_ASYNC_ERROR_HANDLING=1   # a failing rank aborts the job instead of hanging it

RESUME=()
if ! compgen -G "$OUTPUT_DIR/hpc_ckpt_*.ckpt" > /dev/null \
        && [[ -f "$OUTPUT_DIR/checkpoints/last.ckpt" ]]; then
    RESUME=(--resume last)             # resubmitted by hand: continue exactly
fi

srun python recipes/lm.py \
    --config "$CONFIG" \
    --output-dir "$OUTPUT_DIR" \
    --accelerator gpu \
    --devices "${SLURM_NTASKS_PER_NODE:-8}" \
    --num-nodes "${SLURM_JOB_NUM_NODES:-1}" \
    --strategy ddp \
    "${RESUME[@]}" \
    "$@"
