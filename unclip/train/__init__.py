"""Training and fine-tuning the cascade's stages: configs, data, CLIP embedding caches and the trainer.

accelerate launch scripts/train.py --config configs/train/tiny-decoder.yaml data.path=my/images
"""
