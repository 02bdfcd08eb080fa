"""The one trainer for all four stages, on accelerate.

    accelerate launch scripts/train.py --config configs/train/tiny-decoder.yaml data.path=DATA output_dir=runs/d
    accelerate launch -m unclip.train --config ... resume=latest

A stage only contributes its modules, conditioning and loss (``unclip.train.objectives``). Everything else is
here: mixed precision, gradient accumulation and clipping, DDP over processes and nodes, EMA, checkpoints
with a total limit, exact resumption, Min-SNR weighting, TensorBoard, validation images through the real
cascade, and the export to a folder that ``unclip generate --model OUTPUT_DIR/model.yaml`` loads.

Determinism: micro-batch m of process p draws all its randomness (timesteps, noise, dropout, crops) from
``torch.Generator().manual_seed(hash(seed, m, p))`` and epoch e visits the data in a permutation seeded by
(seed, e), so a resumed run repeats the uninterrupted one step for step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from diffusers import UnCLIPScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from unclip.errors import UnclipError
from unclip.plan import KEYWORDS
from unclip.speedups import Speedups
from unclip.stages import first_of
from unclip.train.adapters import Adapted, add_training_adapter, export_adapter
from unclip.train.architectures import ARCHITECTURES
from unclip.train.config import TrainConfig, to_dict
from unclip.train.memory import build_optimizer, enable_gradient_checkpointing
from unclip.train.objectives import Frozen, data_resolution, objective_for

logger = logging.getLogger("unclip.train")

EMA_FILE = "ema.safetensors"
STATE_FILE = "trainer_state.json"  # written last into a checkpoint: its presence marks it complete


class EpochPermutation(torch.utils.data.Sampler):
    """A fresh permutation of the dataset each epoch, seeded by (seed, epoch)."""

    def __init__(self, length: int, seed: int):
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())


def micro_generator(seed: int, micro: int, process: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + micro) * 1_009 + process)


def _warn_single_cpu_process() -> None:
    """`accelerate launch --cpu --num_processes N` starts one process (it needs mpirun for more): say so."""
    asked_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true"
    if asked_cpu and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ:
        logger.warning(
            "accelerate launch --cpu starts a single process without mpirun: for N processes on CPU run "
            "`accelerate launch --multi_gpu --num_processes N` (torchrun and gloo; no GPU needed)"
        )


# ------------------------------------------------------------------------------------------ the model
def load_cascade(config: TrainConfig, accelerator: Accelerator):
    """The cascade to train: ``init_from`` (fine-tuning), or a fresh ``architecture`` in output_dir/init; in the
    memory format ``config.channels_last`` says, from its first step, whatever the device (else the CPU's NHWC default
    would come with the first validation call, on the main process only, and change the arithmetic from there: a
    resumed run must repeat the uninterrupted one)."""
    cascade = _load_cascade(config, accelerator)
    cascade.enable_speedups(Speedups(channels_last=config.channels_last))
    return cascade


def _load_cascade(config: TrainConfig, accelerator: Accelerator):
    from unclip.pipeline import UnCLIPCascade

    if config.init_from:
        cascade = UnCLIPCascade.from_pretrained(config.init_from)
        if cascade.lora_metadata() and config.lora.rank == 0:
            raise UnclipError(f"init_from {config.init_from} carries LoRA adapters: full fine-tuning cannot save "
                              "them into its weights; fine-tune its base model, or train another adapter "
                              "(lora.rank=16)")  # fmt: skip
        return cascade
    if config.architecture not in ARCHITECTURES:
        raise UnclipError(f"unknown architecture '{config.architecture}'; known: {', '.join(ARCHITECTURES)}")
    folder = Path(config.output_dir) / "init"
    if accelerator.is_main_process and not (folder / "model.yaml").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        ARCHITECTURES[config.architecture](folder, config.seed, text_encoder=config.text_encoder)
    accelerator.wait_for_everyone()
    cascade = UnCLIPCascade.from_pretrained(folder / "model.yaml")
    if first_of(config.stage).trains_on_clip and not cascade.model_config.image_encoder:
        # the CLIP image tower whose z_i it learns from is the model's: its model.yaml names it (variations, the
        # validation CLIP score)
        cascade.model_config = dataclasses.replace(cascade.model_config, image_encoder=config.data.clip)
    return cascade


def set_prediction_type(cascade, config: TrainConfig) -> None:
    """The trained stage's scheduler with ``config.prediction_type``: the training target follows it
    (``unclip.train.losses.Process``), and so do the exported scheduler config and sampling."""
    if config.prediction_type is None:
        return
    stage = cascade.stages[config.stage]
    reference = stage.reference_scheduler(cascade)
    if isinstance(reference, UnCLIPScheduler) and config.prediction_type == "v_prediction":
        raise UnclipError(f"prediction_type v_prediction: the {config.stage} stage's UnCLIPScheduler samples only "
                          "epsilon or sample models; choose one of those")  # fmt: skip
    scheduler = type(reference).from_config(reference.config, prediction_type=config.prediction_type)
    cascade.register_modules(**{stage.scheduler: scheduler})


def build_frozen(config: TrainConfig, cascade, dataset, device: torch.device) -> Frozen:
    frozen = Frozen(cascade)
    if not first_of(config.stage).trains_on_clip:
        return frozen
    from unclip.train.embeddings import load_cached_embeddings

    cache = load_cached_embeddings(config.data.path, config.data.clip, dataset) if config.data.use_cache else None
    if cache is not None:
        frozen.cache = cache
    elif dataset.paired:  # the on-the-fly encoder sees the training pixels, not the paired images
        raise UnclipError(
            f"{config.data.path} pairs images with others for their CLIP embeddings (clip_file_name): embed them "
            f"first with `unclip embed {config.data.path} --clip {config.data.clip}` (and keep data.use_cache true)"
        )
    else:
        from unclip.clip_models import load_clip_image_encoder

        frozen.clip = load_clip_image_encoder(config.data.clip, device=device)
    dim = cascade.text_proj.config.clip_embeddings_dim
    got = frozen.cache.image_embeds.shape[1] if frozen.cache is not None else frozen.clip.dim
    if got != dim:
        raise UnclipError(
            f"data.clip {config.data.clip} makes {got}-d embeddings but the model takes {dim}-d: "
            "use the CLIP the model was trained with"
        )
    return frozen


def _init_clip_statistics(objective, frozen: Frozen, config: TrainConfig) -> None:
    """From scratch, the prior normalises z_i by the data's own mean and std (Karlo's clip_mean/clip_std)."""
    if config.stage == "prior" and not config.init_from and frozen.cache is not None:
        valid = frozen.cache.image_embeds[frozen.cache.valid]
        with torch.no_grad():
            objective.prior.clip_mean.copy_(valid.mean(0, keepdim=True))
            objective.prior.clip_std.copy_(valid.std(0, keepdim=True).clamp(min=1e-4) if len(valid) > 1 else 1.0)


# ------------------------------------------------------------------------------------- checkpoints
def checkpoints_dir(config: TrainConfig) -> Path:
    return Path(config.output_dir) / "checkpoints"


def complete_checkpoints(config: TrainConfig) -> list[Path]:
    found = [p for p in checkpoints_dir(config).glob("step-*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(re.sub(r"\D", "", p.name) or 0))


def load_ema(ema, folder: Path) -> None:
    if ema is None:
        return
    if not (folder / EMA_FILE).is_file():
        raise UnclipError(
            f"{folder} has no {EMA_FILE}: it was saved with ema.enabled=false; resume with ema.enabled=false"
        )
    with safe_open(folder / EMA_FILE, "pt") as f:
        for i, p in enumerate(ema.shadow_params):
            p.data.copy_(f.get_tensor(f"shadow.{i}"))
        ema.optimization_step = int(f.metadata()["optimization_step"])


def resolve_resume(config: TrainConfig) -> Path | None:
    if not config.resume:
        return None
    if config.resume == "latest":
        found = complete_checkpoints(config)
        if not found:
            logger.warning("resume=latest: no checkpoint in %s yet; starting from step 0", checkpoints_dir(config))
        return found[-1] if found else None
    path = Path(config.resume)
    if not (path / STATE_FILE).is_file():
        raise UnclipError(
            f"resume={config.resume}: not a complete checkpoint folder (no {STATE_FILE}); try resume=latest"
        )
    return path


def save_checkpoint(accelerator: Accelerator, config: TrainConfig, state: dict[str, Any], ema) -> None:
    """accelerate's save_state (weights as safetensors, optimizer, LR schedule, RNG), the EMA as safetensors,
    then the trainer state, which marks the checkpoint complete."""
    folder = checkpoints_dir(config) / f"step-{state['step']}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        if ema is not None:
            tensors = {f"shadow.{i}": p.detach().cpu().contiguous() for i, p in enumerate(ema.shadow_params)}
            save_file(tensors, folder / EMA_FILE, metadata={"optimization_step": str(ema.optimization_step)})
        (folder / STATE_FILE).write_text(json.dumps(state))
        for old in complete_checkpoints(config)[: -config.checkpoints_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


# -------------------------------------------------------------------------------------------- train
def train(config: TrainConfig) -> Path:
    """Train ``config.stage``; returns the path of the exported model.yaml."""
    from unclip.train.data import CaptionedImages, collate

    output = Path(config.output_dir)
    _warn_single_cpu_process()
    accelerator = Accelerator(
        # Without a GPU, several processes (torchrun, `accelerate launch --multi_gpu`) run on CPU over gloo:
        # accelerate makes them one distributed run only when told cpu=True.
        cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with="tensorboard" if config.tensorboard else None,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
    )
    if config.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise UnclipError("mixed_precision=fp16 needs a GPU; use bf16 or no on CPU")
    device = accelerator.device
    accelerator.print(f"training {config.stage}: {accelerator.num_processes} process(es) on {device.type}")
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        (output / "train_config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

    resolution = config.data.resolution or data_resolution(config.stage)
    dataset = CaptionedImages(config.data.path, resolution, low_res=config.data.low_res or None)
    cascade = load_cascade(config, accelerator)
    set_prediction_type(cascade, config)
    if config.stage == "sr256" and config.sr.train == "both":  # one model for every sr256 step
        cascade.register_modules(super_res_last=cascade.super_res_first)
    objective = objective_for(cascade, config)
    cascade.to(device)
    cascade.text_encoder.requires_grad_(False)

    frozen = build_frozen(config, cascade, dataset, device)
    if frozen.cache is not None and not config.data.resolution:
        dataset.resolution = 64  # z_i comes from the cache: the images only feed the 64 px decoder (or nothing)
    _init_clip_statistics(objective, frozen, config)
    adapted = add_training_adapter(objective, cascade, config)  # lora.rank > 0: only the adapter trains

    if config.gradient_checkpointing:
        enable_gradient_checkpointing(objective)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, config.optim, device)
    lr_scheduler = get_scheduler(
        "constant_with_warmup", optimizer, num_warmup_steps=config.optim.warmup_steps * accelerator.num_processes
    )
    sampler = EpochPermutation(len(dataset), config.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, sampler=sampler, collate_fn=collate, num_workers=config.data.num_workers
    )
    ema = None
    if config.ema.enabled:
        ema = EMAModel(params, decay=config.ema.decay, use_ema_warmup=config.ema.warmup)
        ema.to(device)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(objective, optimizer, loader, lr_scheduler)

    state = {"step": 0, "micro": 0, "skipped": 0, "seconds": 0.0}  # seconds: of training, across resumes
    resume_from = resolve_resume(config)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        load_ema(ema, resume_from)
        state = {"seconds": 0.0, **json.loads((resume_from / STATE_FILE).read_text())}
        accelerator.print(f"resumed from {resume_from} at step {state['step']}")
    if accelerator.is_main_process and config.tensorboard:
        accelerator.init_trackers("unclip", config={k: str(v) for k, v in _flat(to_dict(config)).items()})

    per_epoch = len(loader)
    log_path = output / "train_log.jsonl"
    bar = tqdm(
        total=config.max_steps,
        initial=state["step"],
        desc=f"train {config.stage}",
        disable=not accelerator.is_local_main_process,
    )
    unwrapped = accelerator.unwrap_model(model)
    losses: list[torch.Tensor] = []
    started = time.monotonic() - state["seconds"]  # the clock goes on from the checkpoint's
    while state["step"] < config.max_steps:
        epoch, offset = divmod(state["micro"], per_epoch)
        loader.set_epoch(epoch)
        sampler.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, offset) if offset else loader
        for batch in batches:
            generator = micro_generator(config.seed, state["micro"], accelerator.process_index)
            state["micro"] += 1
            skipped = torch.tensor([batch["skipped"]], device=device)
            state["skipped"] += int(accelerator.reduce(skipped, "sum").item())
            if len(batch["text"]) == 0:
                raise UnclipError("a whole batch of images was unreadable; see the skipped count, or raise batch_size")
            inputs = unwrapped.prepare(batch, frozen, generator, device)
            with accelerator.accumulate(model):
                loss = model(**inputs).mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.optim.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, config.optim.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.step(params)
            state["step"] += 1
            state["seconds"] = round(time.monotonic() - started, 1)
            bar.update(1)
            step_loss = accelerator.reduce(torch.stack(losses).mean(), "mean").item()
            losses.clear()
            _log(accelerator, config, log_path, state, step_loss, lr_scheduler.get_last_lr()[0])
            bar.set_postfix(loss=f"{step_loss:.4f}")
            if config.validation.every and state["step"] % config.validation.every == 0:
                validate(accelerator, config, cascade, ema, params, state["step"])
            if state["step"] % config.checkpoint_every == 0 or state["step"] == config.max_steps:
                save_checkpoint(accelerator, config, {**state, "epoch": epoch}, ema)
            if state["step"] >= config.max_steps:
                break
    bar.close()
    if state["skipped"]:
        accelerator.print(f"skipped {state['skipped']} unreadable image(s) in all (see train_log.jsonl)")
    model_yaml = export(accelerator, config, cascade, ema, params, adapted)
    accelerator.end_training()
    return model_yaml


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def _log(accelerator, config: TrainConfig, path: Path, state: dict, loss: float, lr: float) -> None:
    if not math.isfinite(loss):
        raise UnclipError(f"the loss is {loss} at step {state['step']}: lower optim.lr, or use bf16 rather than fp16")
    if accelerator.is_main_process:
        with path.open("a") as f:
            line = {"step": state["step"], "loss": loss, "lr": lr, "skipped": state["skipped"]}
            if accelerator.device.type == "cuda":  # the most this process has held so far
                line["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(accelerator.device) / 2**30, 3)
            f.write(json.dumps({**line, "seconds": state["seconds"]}) + "\n")
    if state["step"] % config.log_every == 0 or state["step"] == 1:
        accelerator.log({"loss": loss, "lr": lr, "skipped_images": state["skipped"]}, step=state["step"])


class _EMAWeights:
    """Within the block, the trained modules hold the EMA weights."""

    def __init__(self, ema: EMAModel | None, params: list[torch.nn.Parameter]):
        self.ema, self.params = ema, params

    def __enter__(self):
        if self.ema is not None:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)

    def __exit__(self, *_):
        if self.ema is not None:
            self.ema.restore(self.params)


@torch.no_grad()
def validate(accelerator, config: TrainConfig, cascade, ema, params, step: int) -> None:
    """Images for the validation prompts through the real cascade, up to the trained stage's size."""
    if accelerator.is_main_process:
        folder = Path(config.output_dir) / "validation" / f"step-{step}"
        folder.mkdir(parents=True, exist_ok=True)
        v = config.validation
        steps = {keyword: v.steps for keyword, name in KEYWORDS.items() if name.setting == "steps"}
        size = max(first_of(config.stage).size, first_of("decoder").size)  # the prior's through the decoder
        with _EMAWeights(ema, params):
            cascade.set_progress_bar_config(disable=True)
            out = cascade(v.prompts, seed=v.seed, size=size, output_type="np", **steps)
        for k, image in enumerate(out.images):
            cascade.numpy_to_pil(image[None])[0].save(folder / f"{k:02d}.png")
        pictures = torch.from_numpy(out.images).permute(0, 3, 1, 2)
        if config.tensorboard:
            tracker = accelerator.get_tracker("tensorboard", unwrap=True)
            tracker.add_images("validation", pictures, step)
        scored = _clip_score(accelerator, cascade, pictures, v.prompts)
        if scored is not None:  # a line of its own in train_log.jsonl, and the scalar validation/clip_score
            with (Path(config.output_dir) / "train_log.jsonl").open("a") as f:
                f.write(json.dumps({"step": step, "validation_clip_score": scored["clip_score"], "validation_n":
                                    scored["n"]}) + "\n")  # fmt: skip
            accelerator.log({"validation/clip_score": scored["clip_score"]}, step=step)
    accelerator.wait_for_everyone()


def _clip_score(accelerator, cascade, pictures: torch.Tensor, prompts: list[str]) -> dict | None:
    """The validation images' CLIP score with their prompts, by the cascade's own CLIP (``unclip.metrics``); None,
    said, when the model has no CLIP image tower."""
    from unclip.metrics import cascade_towers, clip_score

    try:
        import torchmetrics  # noqa: F401

        towers = cascade_towers(cascade, "the trained cascade")
    except ImportError:
        accelerator.print('validation: no CLIP score (it needs torchmetrics: pip install "unclip[train]")')
        return None
    except UnclipError as err:
        accelerator.print(f"validation: no CLIP score ({err})")
        return None
    return clip_score(towers, zip(pictures, prompts, strict=True))


def export(accelerator, config: TrainConfig, cascade, ema, params, adapted: Adapted | None = None) -> Path:
    """Write the cascade, with the trained stage's EMA weights, in the hub layouts plus model.yaml; or, for a LoRA
    run, the adapter (its EMA weights) and a model.yaml naming the base model and it."""
    output = Path(config.output_dir)
    if accelerator.is_main_process and adapted is not None:
        with _EMAWeights(ema, params):
            export_adapter(adapted, cascade, config)
        accelerator.print(f'saved {output / "model.yaml"}: unclip generate "..." --model {output / "model.yaml"}')
    elif accelerator.is_main_process:
        with _EMAWeights(ema, params):
            cascade.to("cpu")
            cascade.model_config = dataclasses.replace(cascade.model_config, name=str(output / "model.yaml"))
            cascade.save_pretrained(output)
        accelerator.print(f'saved {output / "model.yaml"}: unclip generate "..." --model {output / "model.yaml"}')
    accelerator.wait_for_everyone()
    return output / "model.yaml"
