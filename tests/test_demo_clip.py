"""The demo's tiny CLIP: open_clip training, and its transformers export equal to open_clip to float rounding."""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from unclip.demo import clip, shapes
from unclip.demo.clip_export import export_clip, load_open_clip
from unclip.demo.shapes import write_dataset
from unclip.errors import UnclipError
from unclip.replicas import randomize_

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_demo_clip.py"
CAPTIONS = [
    "a large red circle in the top left on a blue background",
    "a small orange square on a white background",
    "a small purple triangle in the center on a yellow background",
    "A Large GREEN circle,  in the bottom right",  # case, punctuation and spaces as both tokenizers clean them
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A randomised (no all-zero biases, no all-one gains: a missed term shows) demo CLIP and its export."""
    model = clip.create_clip(seed=3).eval()
    randomize_(model, torch.Generator().manual_seed(3))
    folder = export_clip(model, tmp_path_factory.mktemp("clip"))
    return model, folder


def test_text_encoder_and_tokenizer_equal_open_clip(exported):
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    from unclip.text import tokenize

    model, folder = exported
    tokens = clip.tokenize(CAPTIONS)
    ids, _ = tokenize(CLIPTokenizer.from_pretrained(folder / "tokenizer"), CAPTIONS)  # as the cascade does
    assert torch.equal(ids, tokens)
    encoder = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder")
    with torch.no_grad():
        out = encoder(ids)
        embeds = model.encode_text(tokens)
        x = model.token_embedding(tokens) + model.positional_embedding
        hidden = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))  # every position, padding too
        prefix = clip.encode_text_prefix(model, tokens)  # what training computes
    torch.testing.assert_close(out.text_embeds, embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.last_hidden_state, hidden, rtol=0, atol=1e-5)
    torch.testing.assert_close(prefix, embeds, rtol=0, atol=1e-5)


def test_image_encoder_equals_open_clip(exported):
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from transformers import CLIPVisionModelWithProjection

    from unclip.clip_models import load_clip_image_encoder

    model, folder = exported
    generator = torch.Generator().manual_seed(0)
    encoder = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder")
    normalised = torch.randn(3, 3, 64, 64, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(
            encoder(pixel_values=normalised).image_embeds, model.encode_image(normalised), rtol=0, atol=1e-5
        )
        # the trainer's z_i: [-1, 1] pixels through hf:FOLDER/image_encoder, and open_clip's own preprocessing
        uint8 = torch.randint(0, 256, (3, 3, 64, 64), generator=generator, dtype=torch.uint8)
        z_i = load_clip_image_encoder(f"hf:{folder}/image_encoder")(uint8.float() / 127.5 - 1)
        preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
        pil = [Image.fromarray(np.ascontiguousarray(u.permute(1, 2, 0).numpy())) for u in uint8]
        reference = model.encode_image(torch.stack([preprocess(p) for p in pil]))
        again = load_open_clip(folder).encode_image(torch.stack([preprocess(p) for p in pil]))
    torch.testing.assert_close(z_i, reference, rtol=0, atol=1e-5)
    assert torch.equal(again, reference)


def test_training_is_seeded_and_lowers_the_loss(tmp_path):
    write_dataset(tmp_path / "data", n=24, seed=0, size=64, progress=False)
    data = clip.load_images(tmp_path / "data", progress=False)
    assert data.images.shape == (24, 3, 64, 64) and data.images.dtype == torch.uint8
    config = clip.ClipTrainConfig(steps=8, batch_size=8, lr=1e-3, warmup_steps=1, seed=0)
    losses = []
    for _ in range(2):
        model = clip.create_clip(seed=0)
        losses.append(clip.train_clip(model, data.images, data.texts, config, progress=False).losses)
    assert losses[0] == losses[1]
    assert np.mean(losses[0][-3:]) < np.mean(losses[0][:3]) - 0.2


@pytest.mark.parametrize("jitter", [0.0, 0.3])
def test_training_resumes_from_its_checkpoint_step_for_step(tmp_path, jitter):
    write_dataset(tmp_path / "data", n=24, seed=0, size=64, progress=False)
    data = clip.load_images(tmp_path / "data", progress=False)
    assert all(len(c) in (4, 8) for c in data.captions) and data.texts == [c[0] for c in data.captions]
    config = clip.ClipTrainConfig(steps=6, batch_size=8, warmup_steps=1, seed=0, checkpoint_every=3,
                                  colour_jitter=jitter)  # fmt: skip
    checkpoint = tmp_path / "clip.pt"
    whole = clip.create_clip(seed=0)  # saves its state after step 3 (not after the last)
    straight = clip.train_clip(whole, data.images, data.texts, config, progress=False, captions=data.captions,
                               checkpoint=checkpoint)  # fmt: skip
    assert torch.load(checkpoint, weights_only=True)["step"] == 3
    other = clip.create_clip(seed=1)  # other weights: all that matters must come from the checkpoint
    resumed = clip.train_clip(other, data.images, data.texts, config, progress=False, captions=data.captions,
                              checkpoint=checkpoint)  # fmt: skip
    assert resumed.losses == straight.losses and len(resumed.losses) == 6
    for (name, a), b in zip(whole.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_colour_jitter_scales_and_shifts_each_image_channel_within_its_bounds():
    model = clip.create_clip(seed=0)
    images = torch.randint(0, 256, (5, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    plain = clip.normalize_images(model, images)
    none = clip.jitter_colours(model, images, 0.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(none, plain, rtol=0, atol=1e-6)
    jittered = clip.jitter_colours(model, images, 0.3, torch.Generator().manual_seed(0))
    again = clip.jitter_colours(model, images, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(jittered, again) and not torch.allclose(jittered, plain, atol=1e-2)
    cfg = model.visual.preprocess_cfg
    mean, std = (torch.tensor(cfg[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    before, after = images.float() / 255, jittered * std + mean  # [0, 1] pixels either side of the jitter
    for i in range(5):
        for c in range(3):
            x, y = before[i, c].flatten(), after[i, c].flatten()
            inside = (y > 1e-4) & (y < 1 - 1e-4)  # where the clamp did not cut
            slope, offset = np.polyfit(x[inside].numpy(), y[inside].numpy(), 1)
            assert abs(slope - 1) <= 0.3 + 1e-3 and abs(offset) <= 0.3 + 1e-3, (i, c, slope, offset)
            assert torch.allclose(y, (x * slope + offset).clamp(0, 1), atol=1e-4)
    gains = {round(float(np.polyfit(before[i, 0].flatten(), after[i, 0].flatten(), 1)[0]), 3) for i in range(5)}
    assert len(gains) > 1  # per image, not one for the batch


def test_colour_jitter_changes_training_and_zero_leaves_it_alone(tmp_path):
    write_dataset(tmp_path / "data", n=24, seed=0, size=64, progress=False)
    data = clip.load_images(tmp_path / "data", progress=False)
    runs = {}
    for jitter in (0.0, 0.3):
        config = clip.ClipTrainConfig(steps=3, batch_size=8, warmup_steps=1, seed=0, colour_jitter=jitter)
        runs[jitter] = clip.train_clip(clip.create_clip(seed=0), data.images, data.texts, config, progress=False)
    assert runs[0.0].losses[0] != runs[0.3].losses[0]
    with pytest.raises(UnclipError, match="colour_jitter must be at least 0 and below 1, got -0.1"):
        clip.train_clip(clip.create_clip(seed=0), data.images, data.texts, clip.ClipTrainConfig(colour_jitter=-0.1))
    default = clip.ClipTrainConfig(steps=3, batch_size=8, warmup_steps=1, seed=0)
    assert clip.train_clip(clip.create_clip(seed=0), data.images, data.texts, default, progress=False).losses == (
        runs[0.0].losses
    )


def test_a_caption_true_of_two_images_of_a_batch_is_no_negative_for_either():
    captions = [("a red circle", "a large red circle"), ("a red circle", "a small red circle"), ("a blue square",)]
    draws = clip.CaptionDraws(captions, seed=0)
    seen = set()
    for _ in range(40):
        tokens, no_negative = draws.draw(torch.tensor([0, 1, 2]))
        short = [int(t.argmax()) == 4 for t in tokens[:2]]  # "a red circle": start, 3 words, end-of-text at 4
        seen.add(tuple(short))
        assert no_negative.tolist() == [[False, short[1], False], [short[0], False, False], [False, False, False]]
    assert len(seen) == 4  # each image of two captions drew both
    look_alike = F.normalize(torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]]), dim=-1)  # two images, one caption
    mask = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    confused = clip.contrastive_loss(look_alike, look_alike, 10.0, None)
    assert confused.item() > 0.4  # two of the three rows each way split between two captions: 2/3 · log 2
    assert clip.contrastive_loss(look_alike, look_alike, 10.0, mask).item() < 1e-3


def test_batches_hold_minimal_pairs_and_distinct_captions():
    from unclip.demo.clip_batches import BatchSampler

    # a 4 x 3 x 2 attribute grid, two images of each combination (one caption)
    rows = [{"a": str(a), "b": str(b), "c": str(c)} for a in range(4) for b in range(3) for c in range(2)] * 2
    texts = [" ".join(r.values()) for r in rows]
    pairs = BatchSampler(texts, batch_size=2, seed=0, attributes=rows, hard_fraction=1.0, group_size=2)
    for _ in range(50):  # an anchor and an image that differs from it in exactly one attribute
        i, j = pairs.next().tolist()
        assert sum(rows[i][k] != rows[j][k] for k in "abc") == 1
    random = BatchSampler(texts, batch_size=64, seed=0)  # no attributes: random, each caption once at most
    assert sorted(texts[i] for i in random.next()) == sorted(set(texts))
    assert torch.equal(BatchSampler(texts, 8, 3, rows, 0.5, 4).next(), BatchSampler(texts, 8, 3, rows, 0.5, 4).next())


def test_script_trains_scores_and_exports(tmp_path, capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    write_dataset(tmp_path / "data", n=32, seed=0, size=64, progress=False)
    out = tmp_path / "clip"
    args = [
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(out),
        "--steps",
        "3",
        "--batch-size",
        "16",
        "--warmup-steps",
        "1",
        "--eval-n",
        "24",
        "--captions",
        "placed",
        "--no-progress",
    ]
    assert main(args) == 0
    summary = json.loads((out / "zero_shot.json").read_text())
    assert set(summary["zero_shot"]) == {"colour", "shape", "position", "background", "size"}
    assert set(summary["zero_shot_sizeless"]) == {"colour", "shape", "position", "background"}
    assert summary["captions"] == "placed"
    assert summary["eval_images"] == 24 and summary["eval_images_held_out"] == 3
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 3
    for sub in ("text_encoder", "tokenizer", "image_encoder", "feature_extractor", "open_clip"):
        assert (out / sub).is_dir()
    assert "zero-shot accuracy (all): colour" in capsys.readouterr().out
    assert main(args) == 2  # never over an earlier run
    assert "not a new or empty folder" in capsys.readouterr().err
    assert main([*args[:3], str(tmp_path / "other"), "--colour-jitter", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "--colour-jitter must be at least 0 and below 1, got 1.5" in err and "Traceback" not in err
    assert not (tmp_path / "other").exists()


def test_placed_captions_keep_the_place_and_drop_the_size_word():
    choose = runpy.run_path(str(SCRIPT))["choose_captions"]
    placed = shapes.Attributes(shape="circle", colour="red", background="blue", size="large", position="top left")
    anywhere = shapes.Attributes(shape="square", colour="orange", background="green", size="small", position="anywhere")
    captions = [tuple(shapes.captions(placed)), tuple(shapes.captions(anywhere))]
    texts = [c[0] for c in captions]
    assert choose(texts, captions, "first") is None and choose(texts, captions, "all") == captions
    kept = choose(texts, captions, "placed")
    assert set(kept[0]) == {
        "a large red circle in the top left on a blue background",
        "a red circle in the top left on a blue background",
        "a large red circle in the top left on a blue background.",
        "a red circle in the top left on a blue background.",
    }
    assert kept[1] == captions[1]  # said nowhere: every caption of it says as much of the place
