"""Train or fine-tune one stage of the cascade (prior, decoder, sr256 or sr1024) with accelerate.

    accelerate launch scripts/train.py --config configs/train/tiny-decoder.yaml data.path=DATA output_dir=runs/d
    accelerate launch --multi_gpu --num_processes 2 scripts/train.py --config tiny-prior data.path=DATA   # 2 processes
    accelerate launch scripts/train.py --config configs/train/karlo-decoder.yaml data.path=DATA resume=latest

Any key of the config can be overridden as key=value (dotted for nested keys); `--keys` lists them. Without
a GPU, --multi_gpu runs the processes on CPU. The result is OUTPUT_DIR/model.yaml:
`unclip generate "..." --model OUTPUT_DIR/model.yaml`.
"""

import sys

from unclip.train.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
