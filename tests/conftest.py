"""Shared fixtures: tiny random-weight replicas of the real repos, in their hub layouts, built once.

Nothing touches the network: HF_HUB_OFFLINE=1 and an empty Hugging Face cache for the whole session.
"""

import atexit
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="unclip-test-hf-home-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch

from unclip.replicas import tiny_karlo, tiny_x4_upscaler

atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)  # not left in /tmp after the run


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def replica_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("replicas")
    tiny_karlo(root / "karlo-v1-alpha")
    tiny_x4_upscaler(root / "stable-diffusion-x4-upscaler")
    return root


@pytest.fixture(scope="session")
def karlo_dir(replica_root) -> Path:
    return replica_root / "karlo-v1-alpha"


@pytest.fixture(scope="session")
def x4_dir(replica_root) -> Path:
    return replica_root / "stable-diffusion-x4-upscaler"


def write_model_yaml(path: Path, karlo: Path, x4: Path | None, **stages) -> Path:
    """A user's copy of configs/karlo-x4.yaml pointing at local folders (paths relative to the YAML)."""
    lines = [f"unclip: {os.path.relpath(karlo, path.parent)}"]
    if x4 is not None:
        lines.append(f"upscaler: {os.path.relpath(x4, path.parent)}")
    for stage, settings in stages.items():
        lines.append(f"{stage}: {{{', '.join(f'{k}: {v}' for k, v in settings.items())}}}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def model_yaml(replica_root, karlo_dir, x4_dir) -> Path:
    return write_model_yaml(replica_root / "karlo-x4-local.yaml", karlo_dir, x4_dir)


@pytest.fixture(scope="session")
def cascade(model_yaml):
    from unclip import UnCLIPCascade

    pipe = UnCLIPCascade.from_pretrained(model_yaml)
    pipe.set_progress_bar_config(disable=True)
    return pipe
