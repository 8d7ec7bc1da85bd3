#!/bin/bash
# pytorch/examples word_language_model main.py, unmodified (commit 77f55b9), 1 epoch, seed 1111, one thread on core 1
cd /work/ptex/wlm
source /work/venv/bin/activate
export OMP_NUM_THREADS=1
echo "start $(date -Is)"
/usr/bin/time -v taskset -c 1 python main.py --data /work/shared/data/wikitext-2 --epochs 1 --save /work/lanes/ptex/model.pt
echo "end $(date -Is) rc=$?"
