"""Train or fine-tune one stage of the cascade (prior, decoder, sr256 or sr1024) with accelerate.

    accelerate launch scripts/train.py --config configs/train/tiny-decoder.yaml data.path=DATA output_dir=runs/d
    accelerate launch --num_processes 2 --cpu scripts/train.py --config configs/train/tiny-prior.yaml data.path=DATA
    accelerate launch scripts/train.py --config configs/train/karlo-decoder.yaml data.path=DATA resume=latest

Any key of the config can be overridden as key=value (dotted for nested keys); `--keys` lists them. The
result is OUTPUT_DIR/model.yaml: `unclip generate "..." --model OUTPUT_DIR/model.yaml`.
"""

import sys

from unclip.train.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
