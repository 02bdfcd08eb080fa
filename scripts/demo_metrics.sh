#!/usr/bin/env bash
# The demo's own CLIP score and Fréchet distances (issue 19), as docs/benchmarks.md records them.
#
#   bash scripts/demo_metrics.sh                 # into runs/demo-metrics/ (kept: a rerun reuses what is there)
#   bash scripts/demo_metrics.sh DIR --n 192     # another folder; N images a set (default 96)
#
# At 64 and 256 px: N demo samples over every form of the grammar's evaluation prompts (`unclip eval shapes --out`),
# N real shape renders (`unclip data shapes`, seed 7) and, as the floor a perfect model would reach with N images,
# N more renders (seed 8). Then the CLIP score of the samples with their prompts and of the renders with their
# captions, and the Fréchet distance (on the demo's own CLIP image features) of samples and of the other renders
# from the renders. Prints a markdown table; each number is also the JSON last line of its command in DIR/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/demo-metrics
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then out=$1; shift; fi
n=96
if [ "${1:-}" = "--n" ]; then n=$2; fi
export HF_HUB_OFFLINE=1
mkdir -p "$out"

last_json() { "$@" 2>/dev/null | tail -n 1; }
field() { python -c "import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

echo "| size | n | CLIP score: samples | CLIP score: renders | FD samples↔renders | FD renders↔renders (floor) |"
echo "|---|---|---|---|---|---|"
for size in 64 256; do
  samples=$out/samples-$size real=$out/renders-$size other=$out/renders-b-$size
  [ -f "$samples/metadata.jsonl" ] || unclip eval shapes --model demo --n "$n" --size "$size" --out "$samples" \
    --report "$out/shapes-$size.json" --quiet > /dev/null
  [ -f "$real/metadata.jsonl" ] || unclip data shapes --n "$n" --size "$size" --seed 7 "$real" --quiet > /dev/null
  [ -f "$other/metadata.jsonl" ] || unclip data shapes --n "$n" --size "$size" --seed 8 "$other" --quiet > /dev/null
  last_json unclip eval clip-score "$samples" --model demo > "$out/clip-samples-$size.json"
  last_json unclip eval clip-score "$real" --model demo > "$out/clip-renders-$size.json"
  last_json unclip eval fd "$real" "$samples" --features demo > "$out/fd-samples-$size.json"
  last_json unclip eval fd "$real" "$other" --features demo > "$out/fd-renders-$size.json"
  echo "| $size | $n | $(field "$(cat "$out/clip-samples-$size.json")" clip_score)" \
    "| $(field "$(cat "$out/clip-renders-$size.json")" clip_score)" \
    "| $(field "$(cat "$out/fd-samples-$size.json")" fd) | $(field "$(cat "$out/fd-renders-$size.json")" fd) |"
done
