"""Train or fine-tune one stage of the cascade.

    accelerate launch -m unclip.train --config configs/train/tiny-decoder.yaml data.path=DATA output_dir=runs/d
    accelerate launch -m unclip.train --config tiny-decoder data.path=DATA resume=latest
    python -m unclip.train --config karlo-decoder data.path=DATA optim.lr=5e-6   # one process

``--config`` is a YAML file or the name of a preset in configs/train/; every key can be overridden as
key=value (dotted for nested keys). ``--keys`` lists the keys.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unclip.errors import quiet_libraries, run_entry_point


def _config_path(name: str | None) -> str | None:
    if name is None or name.endswith((".yaml", ".yml")) or Path(name).is_file():
        return name
    from unclip.train.config import train_presets_dir

    return str(train_presets_dir() / f"{name}.yaml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="unclip.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="training YAML, or a preset name from configs/train/")
    parser.add_argument("--keys", action="store_true", help="list every config key and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. max_steps=100")
    args = parser.parse_args(argv)

    def run() -> int:
        from unclip.train.config import load_train_config, valid_keys

        quiet_libraries()
        if args.keys:
            print("\n".join(valid_keys()))
            return 0
        config = load_train_config(_config_path(args.config), args.overrides)
        from unclip.train.trainer import train

        train(config)
        return 0

    return run_entry_point(run, "interrupted; resume with resume=latest")


if __name__ == "__main__":
    sys.exit(main())
