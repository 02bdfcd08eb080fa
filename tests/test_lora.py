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
