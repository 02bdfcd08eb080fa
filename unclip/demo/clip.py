"""A tiny CLIP for the demo's captioned shapes, trained contrastively with open_clip.

    from unclip.demo.clip import ClipTrainConfig, create_clip, load_images, train_clip

    model = create_clip(seed=0)                    # open_clip's CLIP on MODEL_CONFIG, random weights
    data = load_images("data/shapes")              # every image at 64 px, uint8 (N, 3, 64, 64), in memory
    result = train_clip(model, data.images, data.texts, ClipTrainConfig(), captions=data.captions,
                        checkpoint="runs/clip.pt")   # every 500 steps; a rerun resumes from it
    result.losses                                  # one per step

The model is open_clip's own (``open_clip.create_model`` on ``MODEL_CONFIG``, registered under ``MODEL_NAME``)
with its CLIP BPE tokenizer, QuickGELU and the 77-token context the cascade tokenizes to, so that it maps
exactly onto transformers' CLIPTextModelWithProjection and CLIPVisionModelWithProjection
(``unclip.demo.clip_export``). The embedding width equals the text width: Karlo's prior and text projection
take the text encoder's hidden states and its embedding at one width.

Training: AdamW (no weight decay on gains, biases and the logit scale, as open_clip's trainer), a linear
warm-up then a cosine LR, open_clip's ``ClipLoss`` written out (it has no mask for the pairs below), the logit
scale clamped to 100; batches from a seeded ``unclip.demo.clip_batches.BatchSampler`` (distinct captions;
three quarters minimal pairs, steered to what the model still confuses, when the images' attributes are
known). An image with several captions (every form of the grammar true of it) is seen each step with one
drawn at random; another image of the batch that the drawn caption is also true of (one of its captions) is
no negative for it: that pair is masked out of both directions of the loss. The image tower is narrower than
the text tower (64 vs 128): it is most of a step's cost.
Images go in as the cascade's CLIP encoders feed them: [0, 1], normalised with the model's mean and std; with
``colour_jitter`` (``jitter_colours``), each image's channels are first scaled and shifted at random, so that the
image tower reads the shape apart from the exact colours it was seen in (the held-out green circle, 2026-12-05).
The text tower runs on the tokens up to the longest caption of the batch: with the causal mask and
end-of-text pooling that is exactly open_clip's ``encode_text`` (the padding after the end-of-text token
never reaches it), at a fraction of the cost.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from unclip.errors import UnclipError

logger = logging.getLogger(__name__)

MODEL_NAME = "unclip-demo-clip"
IMAGE_SIZE = 64
CONTEXT_LENGTH = 77
MODEL_CONFIG: dict = {
    "embed_dim": 128,
    "quick_gelu": True,
    "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": 8, "width": 64, "head_width": 16, "layers": 4},
    "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class ClipTrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    seed: int = 0
    hard_fraction: float = 0.75  # of each batch in minimal-pair groups, when attributes are given (clip_batches)
    group_size: int = 8
    colour_jitter: float = 0.0  # per image and channel, a gain 1 ± x and an offset ± x on [0, 1] pixels (0: none)
    log_every: int = 50  # steps between loss lines in the log
    checkpoint_every: int = 500  # steps between saves of the training state (with a checkpoint file)


@dataclass
class ClipTrainResult:
    losses: list[float] = field(default_factory=list)  # one per step
    seconds: float = 0.0


def register() -> None:
    """Make ``MODEL_NAME`` one of open_clip's model configs (idempotent)."""
    import open_clip

    open_clip.factory._MODEL_CONFIGS[MODEL_NAME] = MODEL_CONFIG  # what add_model_config would read from a file


def create_clip(seed: int = 0):
    """open_clip's CLIP on ``MODEL_CONFIG``, initialised from ``seed`` (the global RNG is left alone)."""
    import open_clip

    from unclip.clip_models import _root_logging_off

    register()
    with torch.random.fork_rng(devices=[]), _root_logging_off():  # it logs "randomly initialised" to root
        torch.manual_seed(seed)
        return open_clip.create_model(MODEL_NAME)


def tokenize(texts: list[str]) -> torch.Tensor:
    """open_clip's tokens, (N, 77) int64: start, BPE, end-of-text (49407), zero padding."""
    import open_clip

    register()
    return open_clip.get_tokenizer(MODEL_NAME)(list(texts))


def normalize_images(model, images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) → the model's input: [0, 1], minus its mean, over its std."""
    return _standardise(model, images.float() / 255)


def _standardise(model, pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels minus the model's mean, over its std (per channel)."""
    cfg = model.visual.preprocess_cfg
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    return (pixels - mean) / std


def jitter_colours(model, images: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """``normalize_images`` of uint8 ``images`` after a random colour change per image and channel: the [0, 1]
    pixels times a gain drawn from [1 - amount, 1 + amount], plus an offset from [-amount, amount], clamped to
    [0, 1]. A training augmentation: the image tower must read the shape apart from its exact colours."""
    n = images.shape[0]
    gain = 1 + amount * (2 * torch.rand(n, 3, 1, 1, generator=generator) - 1)
    shift = amount * (2 * torch.rand(n, 3, 1, 1, generator=generator) - 1)
    return _standardise(model, (images.float() / 255 * gain + shift).clamp(0, 1))


def encode_text_prefix(model, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)`` (unnormalised), computed on the tokens up to the last end-of-text only."""
    length = int(tokens.argmax(dim=-1).max()) + 1  # the end-of-text token has the highest id
    ids = tokens[:, :length]
    x = model.token_embedding(ids) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), ids.argmax(dim=-1)]
    return x @ model.text_projection


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 (N, 3, R, R)
    texts: list[str]
    keys: list[str]  # the dataset's keys: file names of an imagefolder
    captions: list[tuple[str, ...]]  # every caption of each image (``texts``: the first of each)


def load_images(path: str | Path, resolution: int = IMAGE_SIZE, workers: int = 0, progress: bool = True) -> ImageSet:
    """Every readable image of the imagefolder or shards at ``path`` (``unclip.train.data``: shorter side to
    ``resolution``, bicubic, center crop), with its caption and key."""
    from torch.utils.data import DataLoader

    from unclip.train.data import CaptionedImages, collate

    data = CaptionedImages(path, resolution)
    loader = DataLoader(data, batch_size=64, num_workers=workers, collate_fn=collate)
    images, texts, keys, captions, skipped = [], [], [], [], 0
    with tqdm(total=len(data), desc="load images", unit="img", disable=not progress) as bar:
        for batch in loader:
            if batch["text"]:
                images.append(((batch["pixel_values"] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
                texts += batch["text"]
                keys += batch["key"]
                captions += batch["captions"]
            skipped += batch["skipped"]
            bar.update(len(batch["text"]) + batch["skipped"])
    if not texts:
        raise UnclipError(f"no readable image in {path}: check the files")
    if skipped:
        logger.warning(f"{skipped} unreadable images of {path} skipped")
    return ImageSet(torch.cat(images), texts, keys, captions)


def _param_groups(model, weight_decay: float) -> list[dict]:
    def exclude(name: str, p: torch.Tensor) -> bool:  # open_clip_train's rule
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay},
    ]


def _adamw(groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """AdamW, fused where torch has it for the CPU (2.4+): the 6.3 M token embeddings dominate a step otherwise."""
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
    except RuntimeError:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


class CaptionDraws:
    """Each step's caption of each image, drawn from its captions, and which pairs of the batch are no negatives.

    The distinct captions are tokenized once; ``draw(index)`` → (tokens (B, 77), no_negative (B, B) bool: entry
    [i, j] (i ≠ j) when the caption drawn for image j is also one of image i's).
    """

    def __init__(self, captions: list[tuple[str, ...]], seed: int):
        distinct = sorted({c for options in captions for c in options})
        number = {c: k for k, c in enumerate(distinct)}
        self.options = [[number[c] for c in options] for options in captions]
        self.sets = [set(options) for options in self.options]
        self.tokens = tokenize(distinct)
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = index.tolist()
        draws = torch.rand(len(rows), generator=self.generator).tolist()
        drawn = [self.options[i][min(int(u * len(self.options[i])), len(self.options[i]) - 1)] for i, u in
                 zip(rows, draws, strict=True)]  # fmt: skip
        no_negative = torch.tensor([[i != j and drawn[j] in self.sets[rows[i]] for j in range(len(rows))]
                                    for i in range(len(rows))])  # fmt: skip
        return self.tokens[drawn], no_negative


def contrastive_loss(image_features, text_features, scale, no_negative: torch.Tensor | None) -> torch.Tensor:
    """CLIP's symmetric cross-entropy (open_clip's ``ClipLoss`` on one process), the pairs in ``no_negative``
    (image i, caption j) left out of both softmaxes."""
    logits = scale * image_features @ text_features.T
    if no_negative is not None:
        logits = logits.masked_fill(no_negative, float("-inf"))
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def train_clip(
    model,
    images: torch.Tensor,
    texts: list[str],
    config: ClipTrainConfig,
    attributes: list[dict[str, str]] | None = None,
    progress: bool = True,
    captions: list[tuple[str, ...]] | None = None,
    checkpoint: str | Path | None = None,
) -> ClipTrainResult:
    """Contrastive training of ``model`` in place on uint8 ``images`` and their ``texts``; ``attributes`` (one
    dict per image, the same keys for all) make minimal-pair batches (``unclip.demo.clip_batches``); ``captions``
    (every caption of each image) are drawn from each step. ``checkpoint``: a file the training state is saved to
    every ``config.checkpoint_every`` steps and, when it exists, resumed from (the same run, step for step)."""
    from unclip.demo.clip_batches import BatchSampler

    if len(images) != len(texts) or any(x is not None and len(x) != len(texts) for x in (attributes, captions)):
        raise UnclipError(f"{len(images)} images but {len(texts)} captions: give one caption per image")
    if len(images) < 2:
        raise UnclipError("contrastive training needs at least 2 images")
    if config.steps < 1:
        raise UnclipError(f"steps must be at least 1, got {config.steps}")
    if not 0 <= config.colour_jitter < 1:
        raise UnclipError(f"colour_jitter must be at least 0 and below 1, got {config.colour_jitter}")
    draws = CaptionDraws(captions if captions is not None else [(t,) for t in texts], config.seed)
    sampler = BatchSampler(texts, config.batch_size, config.seed, attributes, config.hard_fraction, config.group_size)
    optimizer = _adamw(_param_groups(model, config.weight_decay), config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config.warmup_steps, config.steps)
    )
    jitter = torch.Generator().manual_seed(config.seed + 1)
    result = ClipTrainResult()
    state = _TrainState(model, optimizer, schedule, sampler, draws, result, jitter)
    first = state.load(checkpoint) if checkpoint is not None and Path(checkpoint).is_file() else 0
    start = time.perf_counter()
    model.train()
    with tqdm(range(first, config.steps), desc="train clip", unit="step", disable=not progress) as bar:
        for step in bar:
            index = sampler.next()
            tokens, no_negative = draws.draw(index)
            pixels = images[index]
            if config.colour_jitter:
                pixels = jitter_colours(model, pixels, config.colour_jitter, jitter)
            else:
                pixels = normalize_images(model, pixels)
            image_features = F.normalize(model.encode_image(pixels), dim=-1)
            text_features = F.normalize(encode_text_prefix(model, tokens), dim=-1)
            masked = no_negative if bool(no_negative.any()) else None
            loss = contrastive_loss(image_features, text_features, model.logit_scale.exp(), masked)
            similarity = image_features.detach() @ text_features.detach().T
            sampler.update(similarity if masked is None else similarity.masked_fill(masked, float("-inf")))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            result.losses.append(loss.item())
            bar.set_postfix(loss=f"{result.losses[-1]:.3f}")
            if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
                recent = result.losses[-config.log_every :]
                line = f"step {step + 1}/{config.steps}: loss {sum(recent) / len(recent):.4f}"
                logger.info(line + sampler.describe())
            if checkpoint is not None and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
                state.save(checkpoint, step + 1, result.seconds + time.perf_counter() - start)
    model.eval()
    result.seconds += time.perf_counter() - start
    return result


@dataclass
class _TrainState:
    """What a resumed ``train_clip`` needs to go on exactly where it stopped."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    sampler: object  # BatchSampler
    draws: CaptionDraws
    result: ClipTrainResult
    jitter: torch.Generator  # the colour jitter's draws

    def save(self, path: str | Path, step: int, seconds: float) -> None:
        state = {
            "step": step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "sampler_rng": self.sampler.generator.get_state(),
            "sampler_errors": self.sampler.errors, "draws_rng": self.draws.generator.get_state(),
            "losses": self.result.losses, "seconds": seconds, "jitter_rng": self.jitter.get_state(),
        }  # fmt: skip
        temporary = Path(f"{path}.partial")
        torch.save(state, temporary)
        temporary.replace(path)  # a run killed while saving leaves the previous checkpoint whole
        logger.info(f"checkpoint: step {step} → {path}")

    def load(self, path: str | Path) -> int:
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.sampler.generator.set_state(state["sampler_rng"])
        self.sampler.errors = state["sampler_errors"]
        self.draws.generator.set_state(state["draws_rng"])
        self.result.losses = list(state["losses"])
        self.result.seconds = float(state["seconds"])
        if "jitter_rng" in state:  # checkpoints from before the jitter have none (and no jitter to go on with)
            self.jitter.set_state(state["jitter_rng"])
        logger.info(f"resuming from {path} at step {state['step']}")
        return int(state["step"])


@torch.no_grad()
def encode_texts(model, texts: list[str], batch_size: int = 512) -> torch.Tensor:
    """Unit-norm text embeddings (N, embed_dim)."""
    tokens = tokenize(texts)
    out = [encode_text_prefix(model, tokens[i : i + batch_size]) for i in range(0, len(tokens), batch_size)]
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def encode_images(model, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Unit-norm image embeddings (N, embed_dim) of uint8 images."""
    chunks = images.split(batch_size)
    out = [model.encode_image(normalize_images(model, chunk)) for chunk in chunks]
    return F.normalize(torch.cat(out), dim=-1)
