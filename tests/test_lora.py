"""LoRA (issue 20): each stage's default targets, and adapter sizes as peft builds them."""

import copy

import pytest

from unclip.lora import ATTENTION, RESNET, default_targets, lora_parameters, training_bytes

peft = pytest.importorskip("peft")


@pytest.mark.parametrize(
    "module, expected",
    [
        ("prior", ("to_q", "to_k", "to_v", "to_out.0")),
        ("decoder", ATTENTION),  # Karlo's decoder: self-attention plus the added key/value of the text tokens
        ("super_res_first", RESNET),  # no attention layers: the ResNet blocks' 3 × 3 convolutions
        ("upscaler_unet", ("to_q", "to_k", "to_v", "to_out.0")),
    ],
)
def test_default_targets_and_adapter_size_match_peft(cascade, module, expected):
    model = getattr(cascade, module)
    targets = default_targets(model)
    assert targets == expected
    adapted = peft.inject_adapter_in_model(peft.LoraConfig(r=4, target_modules=list(targets)), copy.deepcopy(model))
    built = sum(p.numel() for name, p in adapted.named_parameters() if "lora_" in name)
    assert built > 0 and lora_parameters(model, targets, rank=4) == built


def test_training_bytes_add_up():
    full = training_bytes(1000, "fp32 AdamW")
    assert full == {"weights": 4000, "grads": 4000, "optimizer": 8000, "ema": 4000, "total": 20000}
    lean = training_bytes(1000, "bf16 + 8-bit AdamW", ema=False)
    assert lean["total"] == 10000 and lean["ema"] == 0
    lora = training_bytes(10, "fp32 AdamW", frozen=1000, frozen_bytes=2)
    assert lora["weights"] == 40 + 2000 and lora["total"] == 2000 + 10 * 20


# ------------------------------------------------------------------------------------------- inference
FAST = dict(prior_num_inference_steps=3, decoder_num_inference_steps=3, super_res_num_inference_steps=2)


def make_adapter(path, model, component, rank=4, seed=0, targets=None):
    """A LoRA adapter of ``model`` with random A and B (peft starts B at zero: no effect), written as unclip does."""
    import torch

    from unclip.lora import save_adapter

    model = copy.deepcopy(model)
    config = {"r": rank, "lora_alpha": rank, "target_modules": list(targets or default_targets(model))}
    peft.inject_adapter_in_model(peft.LoraConfig(**config), model)
    generator = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = torch.randn(p.shape, generator=generator) * 0.3
    return save_adapter(path, model, component, config)


@pytest.fixture(scope="module")
def adapters(cascade, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "decoder": make_adapter(root / "style.safetensors", cascade.decoder, "decoder", seed=1),
        "decoder2": make_adapter(root / "other.safetensors", cascade.decoder, "decoder", seed=2),
        "prior": make_adapter(root / "prior" / "pytorch_lora_weights.safetensors", cascade.prior, "prior", seed=3),
    }


@pytest.fixture()
def pipe(model_yaml):
    from unclip import UnCLIPCascade

    fresh = UnCLIPCascade.from_pretrained(model_yaml)  # adapters change a pipeline: never the shared one
    fresh.set_progress_bar_config(disable=True)
    return fresh


def _draw(pipe, size=64):
    return pipe("a red cube", seed=0, size=size, output_type="np", **FAST).images


def test_scale_zero_is_the_base_exactly_one_differs_and_two_stack(pipe, adapters):
    import numpy as np

    base = _draw(pipe)
    name = pipe.load_lora(adapters["decoder"], scale=0.0)
    assert name == "style" and np.array_equal(_draw(pipe), base)
    pipe.set_lora_scale("style", 1.0)
    one = _draw(pipe)
    assert np.abs(one - base).max() > 0.01
    pipe.load_lora(adapters["decoder2"], scale=1.0)
    both = _draw(pipe)
    pipe.set_lora_scale("style", 0)
    other = _draw(pipe)
    assert np.abs(both - one).max() > 0.01 and np.abs(both - other).max() > 0.01
    pipe.set_lora_scale(str(adapters["decoder2"]), 0)  # by path too
    assert np.array_equal(_draw(pipe), base)
    # fused: the same picture without the per-step cost; unfused: the adapters apply as before
    pipe.set_lora_scale("style", 1.0)
    pipe.fuse_lora()  # (float rounding of W + s B A, carried through every step: close, not equal)
    fused = _draw(pipe)
    assert np.abs(fused - one).mean() < 1e-3 and np.abs(fused - base).mean() > 0.01
    pipe.unfuse_lora()
    assert np.abs(_draw(pipe) - one).mean() < 1e-3
    meta = pipe("a red cube", seed=0, size=64, **FAST).metadata[0]
    assert [(lora["name"], lora["stage"], lora["scale"]) for lora in meta["lora"]] == [
        ("style", "decoder", 1.0), ("other", "decoder", 0.0)]  # fmt: skip


def test_a_prior_adapter_changes_the_embedding(pipe, adapters):
    import torch

    base = pipe("a red cube", seed=0, size=64, output_type="pt", **FAST).images
    assert pipe.load_lora(adapters["prior"].parent) == "prior"  # a folder with diffusers' file name
    assert not torch.equal(pipe("a red cube", seed=0, size=64, output_type="pt", **FAST).images, base)


def test_diffusers_loads_the_adapter_the_same_way(pipe, model_yaml, adapters):
    import numpy as np

    from unclip import UnCLIPCascade

    pipe.load_lora(adapters["decoder"])
    theirs = UnCLIPCascade.from_pretrained(model_yaml)
    theirs.set_progress_bar_config(disable=True)
    theirs.decoder.load_lora_adapter(str(adapters["decoder"]), prefix="decoder", adapter_name="style")
    base = _draw(UnCLIPCascade.from_pretrained(model_yaml))
    ours, diffusers_ = _draw(pipe), _draw(theirs)
    assert np.abs(diffusers_ - ours).mean() < 1e-4 and np.abs(ours - base).mean() > 0.01


def test_the_cli_and_a_model_yaml_apply_adapters(model_yaml, adapters, tmp_path):
    import json

    from PIL import Image

    from unclip.cli import main

    def generate(model, out, *extra):
        argv = ["generate", "a red cube", "--model", str(model), "--size", "64", "--out", str(out), "--quiet",
                "--decoder-steps", "3", "--prior-steps", "3", *extra]  # fmt: skip
        assert main(argv) == 0
        with Image.open(next(out.glob("*.png"))) as png:
            return json.loads((out / "metadata.jsonl").read_text().splitlines()[0]), png.tobytes(), png.text

    line, pixels, text = generate(model_yaml, tmp_path / "cli", "--lora", f"{adapters['decoder']}:0.5")
    assert line["lora"][0]["name"] == "style" and line["lora"][0]["scale"] == 0.5
    assert "Lora: style:0.5" in text["parameters"]
    yaml = model_yaml.parent / "styled.yaml"  # the same adapter in a model YAML (beside the replicas): same picture
    yaml.write_text(model_yaml.read_text() + f"lora: [{{path: {adapters['decoder']}, scale: 0.5}}]\n")
    assert generate(yaml, tmp_path / "yaml")[1] == pixels
    assert generate(model_yaml, tmp_path / "plain")[1] != pixels


def test_bad_adapters_are_one_line_errors(model_yaml, adapters, tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    from unclip.cli import main

    def error(*extra) -> str:
        argv = ["generate", "a red cube", "--model", str(model_yaml), "--size", "64", "--out", str(tmp_path / "o"),
                "--quiet", "--decoder-steps", "2", "--prior-steps", "2", *extra]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        return err

    from unclip.lora import read_adapter

    full, header = read_adapter(adapters["decoder"]), read_adapter(adapters["decoder"], weights=False)
    assert (header.component, header.config) == (full.component, full.config) and full.state and not header.state
    assert "does not exist" in error("--lora", str(tmp_path / "missing.safetensors"))
    assert "the scale must be a number" in error("--lora", f"{adapters['decoder']}:strong")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert "is not a safetensors file" in error("--lora", str(tmp_path / "junk.safetensors"))
    save_file({"unet.down.lora_A.weight": torch.zeros(2, 2)}, tmp_path / "sd.safetensors")
    assert "is not an adapter of an unclip stage" in error("--lora", str(tmp_path / "sd.safetensors"))
    # a decoder adapter of another size of decoder: the shapes do not fit
    from diffusers import UNet2DConditionModel

    config = dict(UNet2DConditionModel.load_config(str(model_yaml.parent / "karlo-v1-alpha" / "decoder")))
    config["block_out_channels"] = [2 * c for c in config["block_out_channels"]]
    make_adapter(tmp_path / "wide.safetensors", UNet2DConditionModel.from_config(config), "decoder")
    assert "does not fit this model's decoder" in error("--lora", str(tmp_path / "wide.safetensors"))
    # an adapter of layers the stage has not (the decoder's text key projections, said to be the prior's)
    from unclip import UnCLIPCascade

    decoder = UnCLIPCascade.from_pretrained(model_yaml).decoder
    make_adapter(tmp_path / "kv.safetensors", decoder, "prior", targets=["add_k_proj"])
    assert "adapts add_k_proj, which this model's prior" in error("--lora", str(tmp_path / "kv.safetensors"))


# -------------------------------------------------------------------------------------------- training
def _train(args: list[str]):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "unclip.train", *args], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _objective_loss(model, data, config) -> float:
    """The decoder's loss on the first 8 samples with fixed generators (same t, noise and dropout each time)."""
    import torch

    from unclip import UnCLIPCascade
    from unclip.train.data import CaptionedImages, collate
    from unclip.train.objectives import data_resolution, objective_for
    from unclip.train.trainer import build_frozen

    cascade = UnCLIPCascade.from_pretrained(model)
    objective = objective_for(cascade, config).eval()
    dataset = CaptionedImages(data, data_resolution("decoder"))
    frozen = build_frozen(config, cascade, dataset, torch.device("cpu"))
    batch = collate([dataset[i] for i in range(8)])
    with torch.no_grad():
        return sum(objective(**objective.prepare(batch, frozen, torch.Generator().manual_seed(s), torch.device("cpu")))
                   .mean().item() for s in range(4)) / 4  # fmt: skip


def test_lora_training_changes_only_the_adapter_resumes_exactly_and_generates(model_yaml, karlo_dir, tmp_path):
    import json

    import torch
    from safetensors.torch import load_file

    from unclip.demo.shapes import write_dataset
    from unclip.train.config import load_train_config

    data = write_dataset(tmp_path / "data", 8, seed=0, size=64, progress=False).parent
    base = ["--config", "tiny-decoder", f"init_from={model_yaml}", f"data.path={data}", "lora.rank=4",
            "tensorboard=false", "checkpoint_every=3", "batch_size=8", "optim.lr=1e-2",
            "ema.enabled=false"]  # fmt: skip
    whole, split = tmp_path / "whole", tmp_path / "split"
    _train([*base, f"output_dir={whole}", "max_steps=15"])
    _train([*base, f"output_dir={split}", "max_steps=3"])
    assert "resumed from" in _train([*base, f"output_dir={split}", "max_steps=15", "resume=latest"]).stdout

    # exact resume: the same adapter, bit for bit
    adapter = whole / "pytorch_lora_weights.safetensors"
    tensors, resumed = load_file(adapter), load_file(split / "pytorch_lora_weights.safetensors")
    assert tensors.keys() == resumed.keys() and all(torch.equal(tensors[k], resumed[k]) for k in tensors)
    assert tensors and all(k.startswith("decoder.") and ".lora_" in k for k in tensors)
    # only the adapter trained: every base tensor in the last checkpoint is the replica's, bit for bit
    saved = load_file(whole / "checkpoints" / "step-15" / "model.safetensors")
    original = load_file(karlo_dir / "decoder" / "diffusion_pytorch_model.safetensors")
    base_tensors = {k.removeprefix("decoder.").replace(".base_layer", ""): v for k, v in saved.items()
                    if k.startswith("decoder.") and ".lora_" not in k}  # fmt: skip
    assert base_tensors.keys() == original.keys()
    assert all(torch.equal(base_tensors[k], original[k]) for k in original)
    assert any(".lora_B" in k and v.abs().max() > 0 for k, v in saved.items())  # B starts at 0: it moved
    # the result: a model.yaml naming the base and the adapter; the loss on the training set fell
    assert "pytorch_lora_weights.safetensors" in (whole / "model.yaml").read_text()
    config = load_train_config(None, ["stage=decoder", f"data.path={data}", "data.clip=tiny:32"])
    before, after = _objective_loss(model_yaml, data, config), _objective_loss(whole / "model.yaml", data, config)
    assert after < before * 0.9, (before, after)

    from unclip.cli import main

    out = tmp_path / "images"
    argv = ["generate", "a red circle on a blue background", "--model", str(whole / "model.yaml"), "--size", "64",
            "--out", str(out), "--quiet", "--decoder-steps", "3", "--prior-steps", "3"]  # fmt: skip
    assert main(argv) == 0
    line = json.loads((out / "metadata.jsonl").read_text())
    assert [(lora["name"], lora["stage"]) for lora in line["lora"]] == [("whole", "decoder")]


def test_lora_presets_load_with_an_adapter():
    from pathlib import Path

    from unclip.train.config import load_train_config

    presets = sorted((Path(__file__).parent.parent / "configs" / "train").glob("*-lora.yaml"))
    assert {p.stem for p in presets} >= {"karlo-decoder-lora", "karlo-prior-lora", "karlo-x4-lora", "tiny-decoder-lora"}
    for preset in presets:
        config = load_train_config(preset, ["data.path=d"])
        assert config.lora.rank > 0 and config.lora.alpha > 0, preset


def test_an_adapter_of_a_stage_the_model_has_not_is_refused(adapters, tmp_path):
    from unclip import UnCLIPCascade, UnclipError
    from unclip.replicas import tiny_karlo

    variations = UnCLIPCascade.from_pretrained(tiny_karlo(tmp_path / "variations", with_prior=False,
                                                          image_variations=True))  # fmt: skip
    with pytest.raises(UnclipError, match="adapts the prior stage .prior., which model .* has not"):
        variations.load_lora(adapters["prior"])
    with pytest.raises(UnclipError, match="the scale must be a number"):
        variations.load_lora(adapters["decoder"], scale="strong")
    assert variations.lora_metadata() == []  # nothing half-loaded


# ----------------------------------------------------------------------------- memory-lean full fine-tuning
@pytest.mark.parametrize("stage, block", [("prior", "prior.transformer_blocks.0.attn1"),
                                          ("decoder", "decoder.down_blocks.1.resnets.0")])  # fmt: skip
def test_gradient_checkpointing_recomputes_and_changes_nothing(model_yaml, tmp_path, stage, block):
    import torch

    from unclip import UnCLIPCascade
    from unclip.demo.shapes import write_dataset
    from unclip.train.config import load_train_config
    from unclip.train.data import CaptionedImages, collate
    from unclip.train.memory import enable_gradient_checkpointing
    from unclip.train.objectives import data_resolution, objective_for
    from unclip.train.trainer import build_frozen

    data = write_dataset(tmp_path / "data", 4, seed=0, size=64, progress=False).parent
    config = load_train_config(None, [f"stage={stage}", f"data.path={data}", "data.clip=tiny:32"])
    results = []
    for checkpointed in (False, True):
        cascade = UnCLIPCascade.from_pretrained(model_yaml)
        objective = objective_for(cascade, config).train()
        if checkpointed:
            enable_gradient_checkpointing(objective)
        calls: list[int] = []  # a pre-hook: a recompute stops early, before the post-hooks
        objective.get_submodule(block).register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        dataset = CaptionedImages(data, data_resolution(stage))
        frozen = build_frozen(config, cascade, dataset, torch.device("cpu"))
        inputs = objective.prepare(collate([dataset[i] for i in range(4)]), frozen, torch.Generator().manual_seed(0),
                                   torch.device("cpu"))  # fmt: skip
        loss = objective(**inputs).mean()
        loss.backward()
        grads = [p.grad.clone() for p in objective.parameters() if p.grad is not None]
        results.append((loss.item(), grads, len(calls)))
    (loss, grads, calls), (loss_c, grads_c, calls_c) = results
    assert calls == 1 and calls_c == 2  # the block ran again in the backward pass
    assert loss == loss_c and len(grads) == len(grads_c)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_c, strict=True))


def test_8bit_adamw_on_cpu_is_a_one_line_error(tmp_path):
    import torch

    from unclip import UnclipError
    from unclip.train.config import OptimConfig
    from unclip.train.memory import build_optimizer

    with pytest.raises(UnclipError, match="optim.kind=adamw8bit needs a CUDA GPU"):
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], OptimConfig(kind="adamw8bit"), torch.device("cpu"))


@pytest.mark.parametrize("name, kind", [("deepspeed-zero2", "DEEPSPEED"), ("fsdp", "FSDP")])
def test_the_accelerate_configs_load_as_accelerate_reads_them(name, kind):
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(Path(__file__).parent.parent / "configs" / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.mixed_precision == "bf16" and not config.use_cpu


def test_full_fine_tuning_of_a_model_with_adapters_is_refused_before_training(model_yaml, adapters, tmp_path):
    from unclip import UnclipError
    from unclip.demo.shapes import write_dataset
    from unclip.train.config import load_train_config
    from unclip.train.trainer import train

    data = write_dataset(tmp_path / "data", 2, size=64, progress=False).parent
    yaml = model_yaml.parent / "with-adapter.yaml"
    yaml.write_text(model_yaml.read_text() + f"lora: [{adapters['decoder']}]\n")
    config = load_train_config(
        None, ["stage=decoder", f"init_from={yaml}", f"data.path={data}", "data.clip=tiny:32", f"output_dir={tmp_path}"]
    )
    with pytest.raises(UnclipError, match="carries LoRA adapters: full fine-tuning cannot save them"):
        train(config)


def test_batch_applies_adapters_and_a_run_without_them_is_another_command(model_yaml, adapters, tmp_path, capsys):
    import json

    from unclip.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n")
    argv = ["batch", str(prompts), "--model", str(model_yaml), "--out", str(tmp_path / "run"), "--size", "64",
            "--quiet", "--decoder-steps", "2", "--prior-steps", "2"]  # fmt: skip
    assert main([*argv, "--lora", f"{adapters['decoder']}:0.5"]) == 0
    line = json.loads((tmp_path / "run" / "metadata.jsonl").read_text().splitlines()[0])
    assert [(lora["name"], lora["scale"]) for lora in line["lora"]] == [("style", 0.5)]
    capsys.readouterr()
    assert main(argv) == 2  # the same folder without the adapter: other pictures, refused
    assert "holds a run of another command" in capsys.readouterr().err
