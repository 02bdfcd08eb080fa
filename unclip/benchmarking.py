"""Measuring the cascade: per-stage time (CUDA events, or the wall clock on a CPU), FLOPs per stage
(torch.utils.flop_counter), peak GPU memory, and the same image through the diffusers chain for a ratio.
``scripts/benchmark.py`` is the command; this module is what it and its smoke test share.

    pipe = full_size_cascade("../shared/reference/pretrained-configs", torch.float16, "cuda")  # random weights
    with StageClock(pipe) as clock:
        pipe("a corgi", seed=0, size=1024)
    clock.seconds()   # {"text": ..., "prior": ..., "decoder": ..., "sr256": ..., "sr1024": ...}

Speed does not depend on weight values, so full-size replicas with random weights, built in memory from the
real repos' configs, measure what the real weights would; what they draw means nothing.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from unclip.config import ModelConfig, StageSettings, karlo_defaults
from unclip.errors import UnclipError
from unclip.plan import KEYWORDS
from unclip.stages import STAGES, first_of

# Dense fp16/bf16 tensor-core peaks (no sparsity), from the vendors' data sheets, for "fraction of peak".
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "RTX 4090": 165.0}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageClock:
    """While entered, wraps the cascade's ``run_stage`` (each stage of the registry, by its name) and
    ``encode_text`` (as ``text``): each call is timed (CUDA events on a GPU, so no sync inside the stage), or
    with ``count_flops`` its FLOPs counted instead (FlopCounterMode slows the run)."""

    def __init__(self, pipe, count_flops: bool = False):
        self.pipe, self.count_flops = pipe, count_flops
        self.events: dict[str, list] = defaultdict(list)
        self.flops: dict[str, int] = defaultdict(int)

    def __enter__(self) -> StageClock:
        encode, run_stage = self.pipe.encode_text, self.pipe.run_stage

        def stage(name, x, inputs, plan):
            if name not in plan.stages:  # skipped: nothing to count
                return run_stage(name, x, inputs, plan)
            return self._timed(name, lambda: run_stage(name, x, inputs, plan))

        self.pipe.encode_text = lambda *args, **kwargs: self._timed("text", lambda: encode(*args, **kwargs))
        self.pipe.run_stage = stage
        return self

    def __exit__(self, *exc) -> None:
        for method in ("encode_text", "run_stage"):
            delattr(self.pipe, method)  # the class's method again

    def _timed(self, stage: str, run: Callable[[], Any]) -> Any:
        """``run()``, timed (or its FLOPs counted) as ``stage``."""
        if self.count_flops:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                out = run()
            self.flops[stage] += counter.get_total_flops()
            return out
        if self.pipe.execution_device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = run()
            end.record()
            self.events[stage].append((start, end))
        else:
            began = time.perf_counter()
            out = run()
            self.events[stage].append((began, time.perf_counter()))
        return out

    def reset(self) -> None:
        self.events.clear()
        self.flops.clear()

    def seconds(self) -> dict[str, float]:
        """Seconds per stage since the last reset (after a sync: call it when the run is done)."""
        synchronize(self.pipe.execution_device)
        out = {}
        for stage, pairs in self.events.items():
            if pairs and isinstance(pairs[0][0], float):
                out[stage] = sum(end - start for start, end in pairs)
            else:
                out[stage] = sum(start.elapsed_time(end) for start, end in pairs) / 1000
        return out


def full_size_cascade(configs: str | Path, dtype: torch.dtype, device: str | torch.device):
    """Karlo + the x4 upscaler at their real sizes with random weights, built in memory from the repos' configs
    (``configs/karlo-v1-alpha``, ``configs/stable-diffusion-x4-upscaler``, as in ../shared/reference)."""
    import diffusers
    import transformers

    from unclip.loading import LAYOUTS, SCHEDULER_CLASSES, UPSCALER_PREFIX
    from unclip.pipeline import UnCLIPCascade
    from unclip.replicas import clip_tokenizer_files
    from unclip.text_proj import UnCLIPTextProjModel

    root = Path(configs)
    folders = {"karlo": root / "karlo-v1-alpha", "x4": root / "stable-diffusion-x4-upscaler"}
    for folder in folders.values():
        if not (folder / "model_index.json").is_file():
            raise UnclipError(f"{folder} has no model_index.json: give --configs the pretrained-configs folder")
    builders = {
        "CLIPTextModelWithProjection": lambda c: transformers.CLIPTextModelWithProjection(
            transformers.CLIPTextConfig.from_dict(c)
        ),
        "CLIPTextModel": lambda c: transformers.CLIPTextModel(transformers.CLIPTextConfig.from_dict(c)),
        "UnCLIPTextProjModel": UnCLIPTextProjModel.from_config,
        **{
            name: getattr(diffusers, name).from_config
            for name in ("PriorTransformer", "UNet2DConditionModel", "UNet2DModel", "AutoencoderKL")
        },  # fmt: skip
    }
    components: dict[str, Any] = {}
    # the tokenizer reads its files once, into memory: the folder goes when it is built (it was left in /tmp)
    with tempfile.TemporaryDirectory(prefix="unclip-bench-tokenizer-") as tmp:
        vocab = clip_tokenizer_files(tmp)
        for layout, folder in folders.items():
            index = json.loads((folder / "model_index.json").read_text())
            prefix = UPSCALER_PREFIX if layout == "x4" else ""
            for name in LAYOUTS[layout]:
                if name not in index:
                    continue
                class_name = index[name][1]
                if class_name in SCHEDULER_CLASSES:
                    config = json.loads((folder / name / "scheduler_config.json").read_text())
                    components[prefix + name] = SCHEDULER_CLASSES[class_name].from_config(config)
                elif class_name in ("CLIPTokenizer", "CLIPTokenizerFast"):
                    components[prefix + name] = transformers.CLIPTokenizer(
                        str(vocab / "vocab.json"),
                        str(vocab / "merges.txt"),
                        pad_token=_pad_token(folder / name),
                        model_max_length=_max_length(folder / name),  # unset, it is 1e30 and padding overflows
                    )
                else:
                    config = json.loads((folder / name / "config.json").read_text())
                    with torch.device(device):  # initialise where it will run: minutes faster on a GPU
                        components[prefix + name] = builders[class_name](config).to(dtype).eval()
            if layout == "x4":
                components["max_noise_level"] = index.get("max_noise_level", 350)
    if dtype == torch.float16:
        components["upscaler_vae"].to(torch.float32)  # as from_pretrained does: the x4 VAE overflows in fp16
    config = ModelConfig(unclip=str(folders["karlo"]), upscaler=str(folders["x4"]), name="full-size replica")
    return UnCLIPCascade(**components, model_config=config)


def _max_length(folder: Path) -> int:
    """tokenizer_config.json's model_max_length (CLIP's 77)."""
    file = folder / "tokenizer_config.json"
    return json.loads(file.read_text()).get("model_max_length", 77) if file.is_file() else 77


def _pad_token(folder: Path) -> str:
    """special_tokens_map.json's pad token, which wins over tokenizer_config.json's (as in the x4 repo)."""
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / file).is_file():
            pad = json.loads((folder / file).read_text()).get("pad_token")
            if pad:
                return pad if isinstance(pad, str) else pad["content"]
    return "<|endoftext|>"


def diffusers_chain(pipe) -> Callable[..., torch.Tensor]:
    """The reference chain on the same modules (no copies): UnCLIPPipeline (its deprecated text projection,
    loaded from unclip's) then StableDiffusionUpscalePipeline fed the 256 px tensor. Returns a function
    ``(prompt, seed, settings) -> images``; settings are unclip's StageSettings per stage."""
    from diffusers import StableDiffusionUpscalePipeline, UnCLIPPipeline
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel as ReferenceTextProj

    reference_proj = ReferenceTextProj.from_config(pipe.text_proj.config)
    reference_proj.load_state_dict(pipe.text_proj.state_dict())
    reference_proj.to(pipe.text_proj.device, pipe.text_proj.dtype)
    unclip = UnCLIPPipeline(
        prior=pipe.prior,
        decoder=pipe.decoder,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        text_proj=reference_proj,
        super_res_first=pipe.super_res_first,
        super_res_last=pipe.super_res_last,
        prior_scheduler=pipe.prior_scheduler,
        decoder_scheduler=pipe.decoder_scheduler,
        super_res_scheduler=pipe.super_res_scheduler,
    )
    x4 = StableDiffusionUpscalePipeline(
        vae=pipe.upscaler_vae,
        text_encoder=pipe.upscaler_text_encoder,
        tokenizer=pipe.upscaler_tokenizer,
        unet=pipe.upscaler_unet,
        low_res_scheduler=pipe.upscaler_low_res_scheduler,
        scheduler=pipe.upscaler_scheduler,
        max_noise_level=pipe.max_noise_level,
    )
    for reference in (unclip, x4):
        reference.set_progress_bar_config(disable=True)

    def run(prompt: str, seed: int, settings: dict, batch: int = 1) -> torch.Tensor:
        generator = torch.Generator("cpu").manual_seed(seed)  # unclip's seed: at batch 1 the same noise
        s = settings
        low = unclip(
            [prompt] * batch,
            prior_num_inference_steps=s["prior"].steps,
            decoder_num_inference_steps=s["decoder"].steps,
            super_res_num_inference_steps=s["sr256"].steps,
            prior_guidance_scale=s["prior"].guidance,
            decoder_guidance_scale=s["decoder"].guidance,
            generator=generator,
            output_type="pt",
        ).images
        return x4(
            [prompt] * batch,
            image=low,
            num_inference_steps=s["sr1024"].steps,
            guidance_scale=s["sr1024"].guidance,
            noise_level=s["sr1024"].noise_level,
            generator=generator,
            output_type="pt",
        ).images

    return run


PRESETS: dict[str, Callable[[], dict[str, StageSettings]]] = {
    # the diffusers chain's own defaults (UnCLIPPipeline, then StableDiffusionUpscalePipeline)
    "reference": karlo_defaults,
    # the x4 stage at 20 DPM-Solver++ steps (speed only: random weights say nothing of quality)
    "fast": lambda: {**karlo_defaults(), "sr1024": StageSettings(20, 9.0, "dpmpp", noise_level=20)},
    # two steps a stage: the CPU smoke test of the harness itself
    "smoke": lambda: {s: dataclasses.replace(v, steps=2) for s, v in karlo_defaults().items()},
}


def image_difference(ours: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """How far two batches of [0, 1] images are apart: max and mean absolute difference, NaNs counted."""
    ours, reference = ours.float().cpu(), reference.float().cpu()
    difference = (ours - reference).abs()
    return {
        "max_abs_diff": float(difference.nan_to_num(float("inf")).max()),
        "mean_abs_diff": float(difference.nan_to_num(1.0).mean()),
        "nan": bool(ours.isnan().any() or reference.isnan().any()),
    }


def call_kwargs(settings: dict, kinds: dict | None = None) -> dict:
    """UnCLIPCascade.__call__ keywords for a full set of StageSettings: the per-stage keywords (``KEYWORDS``) that
    each stage's kind in ``kinds`` (default: the x4 cascade's) takes; the decoder's start serves only the edits."""
    kinds = kinds or {stage: first_of(stage) for stage in STAGES}
    kwargs = {
        keyword: getattr(settings[name.stage], name.setting)
        for keyword, name in KEYWORDS.items()
        if name.setting in kinds[name.stage].settings and (name.stage, name.setting) != ("decoder", "start")
    }
    return {**kwargs, "scheduler": {stage: settings[stage].scheduler for stage in STAGES}}


def measure(run: Callable[[], Any], device: torch.device, runs: int, warmup: int) -> list[float]:
    """Wall seconds of ``run()`` (synchronised), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        synchronize(device)
        began = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - began)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
