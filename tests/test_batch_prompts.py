"""Prompt files for `unclip batch`: each format, per-row overrides, and one-line FILE:LINE errors."""

import json

import pytest

from unclip.batch.prompts import PromptRow, read_prompts
from unclip.errors import UnclipError


def test_txt_skips_blank_lines_and_comments(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# my prompts\na red circle\n\n   \n  # indented comment\n  a blue square  \n")
    assert read_prompts(path) == [PromptRow(0, 2, "a red circle"), PromptRow(1, 6, "a blue square")]


def test_jsonl_with_overrides(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [
        {"prompt": "a cat"},
        {"prompt": "a dog", "negative_prompt": "blurry", "seed": 7, "num_images": 2, "steps": 10, "guidance": 3},
        {"prompt": "a fox", "size": 256, "seed": None},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines[:2]) + "\n\n" + json.dumps(lines[2]) + "\n")
    rows = read_prompts(path)
    assert rows[0] == PromptRow(0, 1, "a cat")
    assert rows[1] == PromptRow(1, 2, "a dog", "blurry", 7, 2, 10, 3.0, None)
    assert rows[2] == PromptRow(2, 4, "a fox", size=256)


def test_csv_with_columns_in_any_order_and_empty_cells(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('seed,prompt,num_images\n3,"a cat, sitting",2\n,a dog,\n\n1,"two\nlines",1\n')
    rows = read_prompts(path)
    assert rows[0] == PromptRow(0, 2, "a cat, sitting", seed=3, num_images=2)
    assert rows[1] == PromptRow(1, 3, "a dog")
    assert rows[2].prompt == "two\nlines" and rows[2].seed == 1


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.jsonl", '{"prompt": "a"}\n{"prompt": "b"\n', r"p.jsonl:2: not valid JSON"),
        ("p.jsonl", '{"prompt": "a"}\n["b"]\n', r"p.jsonl:2: each line must be a JSON object"),
        ("p.jsonl", '{"text": "a"}\n', r"p.jsonl:1: unknown field 'text'"),
        ("p.jsonl", '{"prompt": ""}\n', r'p.jsonl:1: needs a non-empty "prompt"'),
        ("p.jsonl", '{"prompt": "a", "seed": -1}\n', r"p.jsonl:1: seed must be ≥ 0, got -1"),
        ("p.jsonl", '{"prompt": "a", "num_images": 1.5}\n', r"p.jsonl:1: num_images must be a whole number"),
        ("p.jsonl", '{"prompt": "a", "guidance": "lots"}\n', r"p.jsonl:1: guidance must be a number"),
        ("p.jsonl", '{"prompt": "a", "size": 512}\n', r"p.jsonl:1: size must be one of 64, 256, 1024, got 512"),
        ("p.csv", "text\na cat\n", r"p.csv:1: a .csv needs a header row with a 'prompt' column"),
        ("p.csv", "prompt,seed\na cat,1\na dog\n", r"p.csv:3: 1 cells for 2 columns"),
        ("p.csv", "prompt,steps\na cat,zero\n", r"p.csv:2: steps must be a whole number, got 'zero'"),
        ("p.txt", "# only a comment\n\n", r"p.txt: no prompts"),
        ("p.yaml", "a cat\n", r"p.yaml: unknown prompt file type '.yaml'"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UnclipError, match=message) as caught:
        read_prompts(path)
    assert "\n" not in str(caught.value) and str(caught.value).startswith(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(UnclipError, match="no such prompt file"):
        read_prompts(tmp_path / "nope.txt")
