"""The batch output folder: atomic PNGs and exactly one metadata line per finished image after any crash."""

import json

from PIL import Image

from unclip.batch.store import METADATA, PARTS, append_line, repair, write_image


def _meta(image_id, seed=0):
    stages = {"prior": {"steps": 2, "scheduler": "ddim", "guidance": 4.0},
              "decoder": {"steps": 2, "scheduler": "ddim", "guidance": 4.0}}  # fmt: skip
    return {"file_name": f"{image_id}.png", "id": image_id, "prompt": "a cat", "seed": seed, "size": 64,
            "model": "demo", "stages": stages}  # fmt: skip


def _finish(folder, image_id, rank=0, line=True):
    meta = _meta(image_id)
    write_image(folder, image_id, Image.new("RGB", (8, 8), (255, 0, 0)), meta)
    if line:
        append_line(folder, rank, meta)
    return meta


def _read(folder):
    return [json.loads(t) for t in (folder / METADATA).read_text().splitlines()]


def test_finished_images_get_one_sorted_line_and_carry_it(tmp_path):
    for image_id, rank in (("00001-0000", 1), ("00000-0000", 0), ("00000-0001", 0)):
        _finish(tmp_path, image_id, rank)
    lines = repair(tmp_path)
    assert [m["id"] for m in _read(tmp_path)] == ["00000-0000", "00000-0001", "00001-0000"] and len(lines) == 3
    assert not list((tmp_path / PARTS).iterdir())
    with Image.open(tmp_path / "00001-0000.png") as image:
        assert json.loads(image.text["unclip"])["id"] == "00001-0000"
        assert image.text["parameters"].startswith("a cat\n")


def test_repair_after_a_crash_at_each_point(tmp_path):
    done = _finish(tmp_path, "00000-0000")  # finished and merged by an earlier repair
    repair(tmp_path)
    append_line(tmp_path, 0, done)  # killed during a repair: its line is in both files
    _finish(tmp_path, "00000-0001", line=False)  # killed between the rename and the metadata line
    (tmp_path / ".00000-0002.png.tmp-123").write_bytes(b"\x89PNG half")  # killed while writing the PNG
    with open(tmp_path / PARTS / "metadata-0.jsonl", "a") as handle:
        handle.write('{"file_name": "00000-0002.png", "id"')  # a torn last line
    gone = _finish(tmp_path, "00000-0003")
    (tmp_path / gone["file_name"]).unlink()  # a PNG the user deleted: its line goes too
    lines = repair(tmp_path)
    assert sorted(lines) == ["00000-0000.png", "00000-0001.png"]
    assert [m["id"] for m in _read(tmp_path)] == ["00000-0000", "00000-0001"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["00000-0000.png", "00000-0001.png", METADATA]
    assert repair(tmp_path) == lines  # idempotent


def test_a_png_that_is_not_ours_is_left_alone(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "holiday.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert repair(tmp_path) == {}
    assert (tmp_path / "holiday.png").is_file() and (tmp_path / "broken.png").is_file()
