"""unclip: the DALL·E 2-style cascade (CLIP text encoder → prior → 64 px decoder → 256 → 1024 px) on
pretrained components, built on diffusers.

    from unclip import UnCLIPCascade
    pipe = UnCLIPCascade.from_pretrained("karlo-x4", torch_dtype=torch.float16).to("cuda")
    images = pipe("a corgi playing a trumpet", seed=0).images
"""

from importlib import import_module

__version__ = "0.1.0"

# Public names, imported on first use so that `unclip --help` does not wait for torch.
_EXPORTS = {
    "CascadeOutput": "unclip.outputs",
    "UnCLIPCascade": "unclip.pipeline",
    "ModelConfig": "unclip.config",
    "StageSettings": "unclip.settings",
    "load_model_config": "unclip.config",
    "UnclipError": "unclip.errors",
    "UnCLIPTextProjModel": "unclip.text_proj",
}
__all__ = [
    "CascadeOutput",
    "UnCLIPCascade",
    "ModelConfig",
    "StageSettings",
    "load_model_config",
    "UnclipError",
    "UnCLIPTextProjModel",
    "__version__",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'unclip' has no attribute {name!r}")
