"""Batch generation over every process accelerate starts: the same as `unclip batch`, sharded.

    accelerate launch scripts/generate_batch.py prompts.txt --model demo --out gallery/ --num-images 3
    accelerate launch --multi_gpu --num_processes 2 scripts/generate_batch.py prompts.txt --out gallery/  # 2 GPUs,
        # or 2 CPU processes on a machine without one (accelerate's --cpu starts only one)

Each process takes every N-th unfinished image; they share the output folder and never write the same file.
Rerun the same command to resume. `unclip batch --help` lists the options.
"""

import sys

from unclip.cli import main

if __name__ == "__main__":
    sys.exit(main(["batch", *sys.argv[1:]]))
