"""Training data: imagefolder and tar shards, corrupt images, init errors, CLIP encoders by name, and the
`unclip embed` cache (round trip, staleness, the command)."""

import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import _error

from unclip import UnclipError
from unclip.cli import main
from unclip.clip_models import OPENAI_MEAN, OPENAI_STD, load_clip_image_encoder
from unclip.train.data import CaptionedImages, collate, expand_braces, load_image
from unclip.train.embeddings import cache_path, embed_dataset, load_cached_embeddings

N_GOOD = 10
BAD = {"random.png": 10, "truncated.png": 11}  # file name → dataset index


def _png(i: int) -> bytes:
    """Image i: noisy (so a truncated copy is really truncated), sizes vary so that resize and crop both run."""
    rng = np.random.default_rng(i)
    width, height = (40 + 4 * i, 24 + 2 * i) if i % 2 else (24 + 2 * i, 40 + 4 * i)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[..., i % 3] = 255  # a dominant channel per image
    out = io.BytesIO()
    image = Image.fromarray(pixels)
    (image.convert("P") if i == 3 else image.convert("RGBA") if i == 4 else image).save(out, format="PNG")
    return out.getvalue()


def _files() -> dict[str, tuple[bytes, str]]:
    """file name → (bytes, caption): N_GOOD images, then a random-bytes and a truncated PNG."""
    files = {f"{i:03d}.png": (_png(i), f"caption {i}") for i in range(N_GOOD)}
    files["random.png"] = (bytes(np.random.default_rng(99).integers(0, 256, 300, dtype=np.uint8)), "random bytes")
    whole = _png(20)
    files["truncated.png"] = (whole[: len(whole) // 2], "a truncated png")
    return files


def write_imagefolder(folder: Path, files: dict[str, tuple[bytes, str]] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    files = _files() if files is None else files
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    lines = [json.dumps({"file_name": name, "text": text}) for name, (_, text) in files.items()]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_shards(folder: Path) -> list[Path]:
    """The imagefolder's files as two shards; captions as .txt, except image 1's as .json."""
    members = {}
    for name, (data, text) in _files().items():
        key = name.removesuffix(".png")
        members[f"{key}.png"] = data
        if key == "001":
            members[f"{key}.json"] = json.dumps({"caption": text, "width": 1}).encode()
        else:
            members[f"{key}.txt"] = text.encode()
    items = list(members.items())
    return [
        write_tar(folder / "shard-0.tar", dict(items[:10])),  # keys 000-004
        write_tar(folder / "shard-1.tar", dict(items[10:])),
    ]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("data") / "images")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    return write_shards(tmp_path_factory.mktemp("data") / "shards")


# ----------------------------------------------------------------------------------------------- items
def test_items_have_shape_range_caption_and_key(folder):
    data = CaptionedImages(folder, resolution=16)
    assert len(data) == N_GOOD + len(BAD)
    assert data.keys[:3] == ["000.png", "001.png", "002.png"] and data.texts[2] == "caption 2"
    for i in range(N_GOOD):
        item = data[i]
        assert item["pixel_values"].shape == (3, 16, 16) and item["pixel_values"].dtype == torch.float32
        assert -1 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1
        assert (item["text"], item["key"], item["index"]) == (f"caption {i}", f"{i:03d}.png", i)
        assert item["pixel_values"][i % 3].mean() > 0.95  # the dominant channel, so channels are in RGB order
    assert data[-1] is None and data[N_GOOD - 1]["index"] == N_GOOD - 1
    with pytest.raises(IndexError):
        data[len(data)]


def test_shorter_side_resized_then_center_cropped(tmp_path):
    image = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high: left quarter red, middle half green, right blue
    image[:, :10, 0], image[:, 10:30, 1], image[:, 30:, 2] = 255, 255, 255
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    folder = write_imagefolder(tmp_path / "d", {"wide.png": (buffer.getvalue(), "wide")})
    assert torch.equal(CaptionedImages(folder, 20)[0]["pixel_values"][1], torch.ones(20, 20))  # no resize: crop
    pixels = CaptionedImages(folder, 10)[0]["pixel_values"]  # 40x20 → 20x10, then the middle 10 columns
    reference = Image.fromarray(image).resize((20, 10), Image.Resampling.BICUBIC).crop((5, 0, 15, 10))
    expected = torch.from_numpy(np.asarray(reference, np.float32) / 127.5 - 1).permute(2, 0, 1)
    assert torch.allclose(pixels, expected) and pixels[1].mean() > 0.9 and pixels[0].max() < -0.8


def test_corrupt_images_are_none_and_collate_counts_them(folder):
    data = CaptionedImages(folder, resolution=16)
    assert all(data[i] is None for i in BAD.values())
    batch = collate([data[i] for i in range(len(data))])
    assert batch["skipped"] == len(BAD) and batch["pixel_values"].shape == (N_GOOD, 3, 16, 16)
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == list(range(N_GOOD))
    assert batch["text"] == [f"caption {i}" for i in range(N_GOOD)] and batch["key"][0] == "000.png"
    empty = collate([data[i] for i in BAD.values()])
    assert empty["skipped"] == len(BAD) and empty["text"] == [] and empty["key"] == []
    assert empty["pixel_values"].shape[0] == 0 and empty["index"].shape == (0,)


def test_tar_shards_give_the_same_samples(folder, shards):
    images = CaptionedImages(folder, resolution=24)
    for spec in (shards[0].parent, str(shards[0].parent / "shard-{0..1}.tar"), str(shards[0].parent / "shard-*.tar")):
        tars = CaptionedImages(spec, resolution=24)
        assert len(tars) == len(images) and tars.texts == images.texts
        assert tars.keys[:2] == ["shard-0/000", "shard-0/001"] and tars.keys[-1] == "shard-1/truncated"
    for i in range(len(images)):
        a, b = images[i], tars[i]
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["text"] == b["text"]
    assert len(CaptionedImages(shards[1], resolution=24)) == len(images) - 5  # a single .tar


def test_random_access_and_worker_processes_do_not_change_items(folder, shards):
    for path in (folder, shards[0].parent):
        data = CaptionedImages(path, resolution=8)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist()
        direct = collate([data[i] for i in order])
        copied = pickle.loads(pickle.dumps(data))
        loader = torch.utils.data.DataLoader(copied, batch_size=4, sampler=order, collate_fn=collate, num_workers=2)
        batches = list(loader)
        assert torch.cat([b["index"] for b in batches]).tolist() == direct["index"].tolist()
        assert torch.equal(torch.cat([b["pixel_values"] for b in batches]), direct["pixel_values"])
        assert sum(b["skipped"] for b in batches) == len(BAD)


def test_brace_expansion():
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}-{8..10}") == ["a-8", "a-9", "a-10", "b-8", "b-9", "b-10"]
    assert expand_braces("plain.tar") == ["plain.tar"]


# ------------------------------------------------------------------------------------------ init errors
def _metadata_error(tmp_path, lines: list[str], files=("0.png",)) -> str:
    folder = tmp_path / "d"
    folder.mkdir()
    for name in files:
        (folder / name).write_bytes(_png(0))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UnclipError) as err:
        CaptionedImages(folder, 16)
    return str(err.value)


@pytest.mark.parametrize(
    "lines, expected",
    [
        (['{"file_name": "0.png", "text": "a"}', "{not json"], "metadata.jsonl:2: not a JSON object"),
        (['{"text": "a"}'], 'metadata.jsonl:1: no "file_name"'),
        (['{"file_name": "0.png"}'], "missing caption for 0.png (" + "{folder}/metadata.jsonl:1)"),
        (['{"file_name": "0.png", "text": "  "}'], "missing caption for 0.png"),
        (['{"file_name": "0.png", "text": []}'], "(a string, or a list of strings)"),
        (['{"file_name": "0.png", "text": ["a", 3]}'], "missing caption for 0.png"),
        (['{"file_name": "0.png", "text": ["a", " "]}'], "missing caption for 0.png"),
        (
            ['{"file_name": "0.png", "text": "a"}', "", '{"file_name": "gone.png", "text": "b"}'],
            ":3: file_name gone.png",
        ),
        ([""], "holds no captioned images"),
        (['{"file_name": "0.png", "text": "a", "clip_file_name": "gone.png"}'], ":1: clip_file_name gone.png does"),
        (['{"file_name": "0.png", "text": "a", "clip_file_name": 3}'], ':1: "clip_file_name" must name an image'),
    ],
)
def test_bad_metadata_is_refused_at_init(tmp_path, lines, expected):
    message = _metadata_error(tmp_path, lines)
    assert expected.replace("{folder}", str(tmp_path / "d")) in message and "\n" not in message


def test_bad_paths_and_shards_are_refused_at_init(tmp_path, shards):
    cases = {}
    cases["does not exist"] = tmp_path / "missing"
    (tmp_path / "no-meta").mkdir()
    (tmp_path / "no-meta" / "0.png").write_bytes(_png(0))
    cases["has no metadata.jsonl"] = tmp_path / "no-meta"
    cases[f"missing caption for {tmp_path / 'a.tar'}:dir/k1: add a .txt"] = write_tar(
        tmp_path / "a.tar", {"k0.jpg": _png(0), "k0.txt": b"fine", "dir/k1.png": _png(1)}
    )
    cases["missing caption for"] = write_tar(tmp_path / "j.tar", {"k.png": _png(0), "k.json": b'{"url": "x"}'})
    cases["holds no captioned images"] = write_tar(tmp_path / "t.tar", {"k.txt": b"no image"})
    cases[f"shard {shards[0].parent / 'shard-2.tar'} of"] = str(shards[0].parent / "shard-{0..2}.tar")
    cases["is not a .tar shard"] = tmp_path / "no-meta" / "0.png"
    (tmp_path / "latin1").mkdir()
    (tmp_path / "latin1" / "metadata.jsonl").write_bytes('{"file_name": "0.png", "text": "café"}'.encode("latin-1"))
    cases["is not UTF-8 text"] = tmp_path / "latin1"
    (tmp_path / "broken.tar").write_bytes(b"not a tar" * 100)
    cases["is not a readable tar file"] = tmp_path / "broken.tar"
    for expected, path in cases.items():
        with pytest.raises(UnclipError) as err:
            CaptionedImages(path, 16)
        assert expected in str(err.value), (path, str(err.value))


# -------------------------------------------------------------------------------------------- CLIP
def test_tiny_encoder_is_deterministic_and_normalises_inside(folder):
    clip = load_clip_image_encoder("tiny:16")
    assert (clip.name, clip.dim, clip.image_size) == ("tiny:16", 16, 32)
    smooth = torch.nn.functional.interpolate  # smooth images: resizing them changes little
    generator = torch.Generator().manual_seed(0)
    pixels = smooth(torch.rand(3, 3, 4, 4, generator=generator) * 2 - 1, size=32, mode="bilinear")
    out = clip(pixels)
    assert out.shape == (3, 16) and out.dtype == torch.float32
    assert torch.equal(load_clip_image_encoder("tiny:16")(pixels), out)  # same weights every time
    assert torch.allclose(clip(pixels[:1]), out[:1], atol=1e-6)  # each image alone
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    manual = clip.model(pixel_values=((pixels + 1) / 2 - mean) / std).image_embeds
    assert torch.allclose(out, manual, atol=1e-6)
    border = torch.rand(3, 3, 8, 64, generator=generator) * 2 - 1
    big = torch.cat([border, smooth(pixels, size=64, mode="bilinear"), border], dim=2)  # 80 high, 64 wide
    assert torch.allclose(clip(big), out, atol=0.02 * out.abs().max())  # halved, then the center 32 rows
    assert not torch.allclose(clip(big[..., :64, :]), out, atol=0.02 * out.abs().max())  # another crop
    assert not torch.allclose(clip(-pixels), out, atol=0.02 * out.abs().max())


@pytest.mark.parametrize(
    "name, expected",
    [
        ("clip-vit", "unknown CLIP image encoder 'clip-vit': use openclip:MODEL/PRETRAINED"),
        ("torch:ViT", "hf:HUB_ID_OR_FOLDER"),
        ("tiny:big", "tiny:DIM needs a positive"),
        ("hf:./nowhere", "folder ./nowhere does not exist"),
        ("hf:openai/clip-vit-large-patch14", "HF_HUB_OFFLINE is set"),
        ("openclip:ViT-B-32", "give openclip:MODEL/PRETRAINED"),
        ("openclip:ViT-Nope/openai", "open_clip has no model ViT-Nope"),
        ("openclip:ViT-B-32/nope", "tags: openai"),
        ("openclip:ViT-B-32/laion2b_s34b_b79k", "HF_HUB_OFFLINE is set"),
    ],
)
def test_bad_clip_names(name, expected):
    with pytest.raises(UnclipError) as err:
        load_clip_image_encoder(name)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_hf_local_folder_of_a_full_clip(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=48)
    torch.manual_seed(0)
    full = CLIPModel(CLIPConfig(text_config=text, vision_config={**vision, "patch_size": 16}, projection_dim=24))
    full.save_pretrained(tmp_path / "clip")
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    size = {"shortest_edge": 48}
    CLIPImageProcessor(image_mean=mean, image_std=std, size=size, crop_size=48).save_pretrained(tmp_path / "clip")
    clip = load_clip_image_encoder(f"hf:{tmp_path / 'clip'}")
    assert (clip.dim, clip.image_size, clip.mean, clip.std) == (24, 48, mean, std)
    pixels = torch.rand(2, 3, 48, 48) * 2 - 1
    normalised = ((pixels + 1) / 2 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = full.get_image_features(pixel_values=normalised)
    expected = getattr(expected, "pooler_output", expected)
    assert torch.allclose(clip(pixels), expected, atol=1e-5)
    (tmp_path / "clip" / "preprocessor_config.json").unlink()  # then OpenAI CLIP's statistics, the model's size
    clip = load_clip_image_encoder(f"hf:{tmp_path / 'clip'}")
    assert (clip.dim, clip.image_size, clip.mean, clip.std) == (24, 48, OPENAI_MEAN, OPENAI_STD)
    (tmp_path / "clip" / "model.safetensors").unlink()
    with pytest.raises(UnclipError, match="no CLIP weights loadable from"):
        load_clip_image_encoder(f"hf:{tmp_path / 'clip'}")


def test_openclip_local_checkpoint(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    config = {
        "embed_dim": 12,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
    }
    (tmp_path / "unclip-test-tiny.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "unclip-test-tiny.json")
    torch.manual_seed(0)
    model = open_clip.create_model("unclip-test-tiny")
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    clip = load_clip_image_encoder(f"openclip:unclip-test-tiny/{tmp_path / 'tiny.pt'}")
    assert (clip.dim, clip.image_size) == (12, 32)
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.eval().encode_image(((pixels + 1) / 2 - mean) / std)
    assert torch.allclose(clip(pixels), expected, atol=1e-5)
    assert expected.norm(dim=-1).sub(1).abs().min() > 1e-3  # not normalised


# ------------------------------------------------------------------------------------- embedding cache
def test_embed_then_load_equals_encoding_on_the_fly(tmp_path, shards):
    folder = write_imagefolder(tmp_path / "images")
    file = embed_dataset(folder, "tiny:16", batch_size=5, progress=False)
    assert file == folder / ".unclip-cache" / "tiny-16.safetensors" == cache_path(folder, "tiny:16")
    assert sorted(p.name for p in file.parent.iterdir()) == [file.name]  # no temporary files left
    umask = os.umask(0)
    os.umask(umask)
    assert file.stat().st_mode & 0o777 == 0o666 & ~umask
    cache = load_cached_embeddings(folder, "tiny:16")
    assert cache.image_embeds.shape == (N_GOOD + len(BAD), 16) and cache.image_embeds.dtype == torch.float32
    assert cache.valid.tolist() == [True] * N_GOOD + [False] * len(BAD)
    data, clip = CaptionedImages(folder, resolution=32), load_clip_image_encoder("tiny:16")
    expected = clip(torch.stack([data[i]["pixel_values"] for i in range(N_GOOD)]))
    assert torch.allclose(cache.image_embeds[:N_GOOD], expected, atol=1e-5)
    assert not cache.image_embeds[N_GOOD:].any()
    assert load_cached_embeddings(folder, "tiny:8") is None  # another CLIP: not embedded yet

    spec = str(shards[0].parent / "shard-{0..1}.tar")
    tar_file = embed_dataset(spec, "tiny:16", batch_size=4, progress=False)
    assert (
        tar_file.parent == shards[0].parent / ".unclip-cache"
        and tar_file.name == "shard-0..1-.tar--tiny-16.safetensors"
    )
    assert torch.allclose(load_cached_embeddings(spec, "tiny:16").image_embeds, cache.image_embeds, atol=1e-5)


def test_paired_images_are_embedded_from_their_clip_file_and_train_only_from_the_cache(tmp_path):
    """``clip_file_name``: the row's z_i is CLIP's embedding of that other image (an outlined shape's plain twin);
    training reads the row's own pixels, and a changed twin makes the cache stale."""
    folder = write_imagefolder(tmp_path / "images", {f"{i:03d}.png": (_png(i), f"caption {i}") for i in range(4)})
    lines = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    lines[1]["clip_file_name"] = "003.png"  # image 1 is conditioned on image 3's embedding
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    data = CaptionedImages(folder, resolution=32)
    assert data.paired and torch.equal(data[1]["pixel_values"], load_image(_png(1), 32))  # its own pixels
    embed_dataset(folder, "tiny:16", progress=False)
    embeds = load_cached_embeddings(folder, "tiny:16")
    clip = load_clip_image_encoder("tiny:16")
    on_the_fly = clip(torch.stack([data[i]["pixel_values"] for i in range(4)]))
    assert torch.allclose(embeds.image_embeds[[0, 2, 3]], on_the_fly[[0, 2, 3]], atol=1e-5)
    assert torch.allclose(embeds.image_embeds[1], on_the_fly[3], atol=1e-5)  # the twin's, not its own
    assert not torch.allclose(embeds.image_embeds[1], on_the_fly[1], atol=1e-2)
    (folder / "003.png").write_bytes(_png(30))
    with pytest.raises(UnclipError, match="is stale"):
        load_cached_embeddings(folder, "tiny:16")
    cache_path(folder, "tiny:16").unlink()  # no cache: training would embed its own pixels, so it refuses
    from unclip.train.config import load_train_config
    from unclip.train.trainer import build_frozen

    config = load_train_config(None, ["stage=decoder", f"data.path={folder}", "data.clip=tiny:16"])
    with pytest.raises(UnclipError, match="pairs images with others for their CLIP embeddings") as err:
        build_frozen(config, None, CaptionedImages(folder, 32), torch.device("cpu"))
    assert f"unclip embed {folder} --clip tiny:16" in str(err.value)


def test_stale_cache_is_refused(tmp_path):
    folder = write_imagefolder(tmp_path / "images")
    embed_dataset(folder, "tiny:8", progress=False)
    assert load_cached_embeddings(folder, "tiny:8") is not None
    (folder / "003.png").write_bytes(_png(30))  # an image replaced
    with pytest.raises(UnclipError, match=r"is stale: .* rerun `unclip embed .* --clip tiny:8`"):
        load_cached_embeddings(folder, "tiny:8")
    embed_dataset(folder, "tiny:8", progress=False)
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    (folder / "metadata.jsonl").write_text("\n".join(lines[::-1]) + "\n")  # same files, another order
    with pytest.raises(UnclipError, match="is stale"):
        load_cached_embeddings(folder, "tiny:8")


def test_a_failed_write_keeps_the_old_cache(tmp_path, monkeypatch):
    folder = write_imagefolder(tmp_path / "images")
    file = embed_dataset(folder, "tiny:8", progress=False)
    before = file.read_bytes()
    (folder / "003.png").write_bytes(_png(30))

    def fail(*args, **kwargs):
        Path(args[1]).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("unclip.train.embeddings.save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        embed_dataset(folder, "tiny:8", progress=False)
    assert file.read_bytes() == before and sorted(p.name for p in file.parent.iterdir()) == [file.name]


def test_embed_command(tmp_path, capsys):
    folder = write_imagefolder(tmp_path / "images")
    assert main(["embed", str(folder), "--clip", "tiny:16", "--batch-size", "4", "--device", "cpu", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(cache_path(folder, "tiny:16")) and Path(out.strip()).is_file()
    assert f"embedded {N_GOOD} images, skipped {len(BAD)} unreadable" in err
    assert err.count("warning: skipping unreadable image") == len(BAD)


def test_the_real_command_fails_offline_in_one_line(folder):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "unclip.cli", "embed", str(folder), "--clip", "openclip:ViT-B-32/laion2b_s34b_b79k"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and done.stderr.startswith("error: openclip:ViT-B-32/laion2b_s34b_b79k: the weights")
    assert done.stderr.count("\n") == 1, done.stderr


def test_embed_command_errors(tmp_path, capsys):
    folder = write_imagefolder(tmp_path / "images")
    assert "data path" in _error(capsys, ["embed", str(tmp_path / "missing"), "--clip", "tiny:16"])
    assert "unknown CLIP image encoder" in _error(capsys, ["embed", str(folder), "--clip", "vit-l"])
    assert "HF_HUB_OFFLINE" in _error(capsys, ["embed", str(folder), "--clip", "hf:openai/clip-vit-large-patch14"])
    assert "fp16 needs a CUDA GPU" in _error(capsys, ["embed", str(folder), "--clip", "tiny:8", "--dtype", "fp16"])
    assert "the following arguments are required: --clip" in _error(capsys, ["embed", str(folder)])
    os.chmod(folder, 0o555)  # read-only data folder: the cache cannot be written
    try:
        if not os.access(folder, os.W_OK):  # root writes anyway
            assert "cannot write the cache" in _error(capsys, ["embed", str(folder), "--clip", "tiny:8", "--quiet"])
    finally:
        os.chmod(folder, 0o755)


def test_several_captions_per_image_and_training_draws_among_them(tmp_path):
    from unclip.train.data import pick_captions

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(_png(i))
    rows = [{"file_name": "0.png", "text": [" first ", "second", "third"]}, {"file_name": "1.png", "text": "only"}]
    rows.append({"file_name": "2.png", "text": ["alone"]})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = CaptionedImages(folder, 16)
    assert data.texts == ["first", "only", "alone"]  # the first caption is the image's text everywhere else
    batch = collate([data[i] for i in range(3)])
    assert batch["captions"] == [("first", "second", "third"), ("only",), ("alone",)]
    generator = torch.Generator().manual_seed(0)
    drawn = [pick_captions(batch, generator) for _ in range(60)]
    assert {d[0] for d in drawn} == {"first", "second", "third"} and {d[1] for d in drawn} == {"only"}
    again = torch.Generator().manual_seed(0)
    assert [pick_captions(batch, again) for _ in range(60)] == drawn  # seeded: the trainer's generator
    single = collate([data[1], data[2]])
    state = generator.get_state()
    assert pick_captions(single, generator) == ["only", "alone"]
    assert torch.equal(generator.get_state(), state)  # one caption each: no draw, the run's numbers unchanged

    shard = write_tar(tmp_path / "s.tar", {"a.png": _png(0), "a.json": json.dumps({"caption": ["x", "y"]}).encode()})
    assert CaptionedImages(shard, 16)[0]["captions"] == ("x", "y")
