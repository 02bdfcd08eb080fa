#!/usr/bin/env bash
# Retrain the offline demo cascade (`--model demo`) from nothing, with unclip's own code, then ship it.
#
#   bash scripts/train_demo.sh                       # every step; run it again after an interruption to finish
#   bash scripts/train_demo.sh data clip embed prior # only these steps, in this order (finished ones skip)
#   DECODER_LAUNCH="accelerate launch" bash scripts/train_demo.sh   # e.g. one GPU (accelerate's own config)
#
# Steps (STEPS below), each skipped when its output is complete and resumed where it stopped otherwise:
#   data     the procedural shapes dataset: the same scenes at 256 px (CLIP, prior, decoder, 64→256) and, the
#            first 4000, at 1024 px (256→1024); written into a .partial folder, renamed when whole. Each image's
#            "text" lists every caption of the grammar true of it (size word, position, full stop said or not).
#   clip     the tiny CLIP (open_clip, contrastive; scripts/train_demo_clip.py --captions placed: each step one of
#            an image's captions that say its place, with or without the size word; --colour-jitter 0.3: the
#            image tower reads a shape apart from its colours, so a held-out green circle is a circle), its state
#            saved every 500 steps to runs/demo/clip.pt and resumed from.
#   embed    its image embeddings of the 256 px set, cached (`unclip embed`); redone when the CLIP is newer.
#   prior    configs/train/demo-prior.yaml around that CLIP.
#   sr256, sr1024   the two upsamplers (they see no text: no trained CLIP needed).
#   sr256-edge   sr256's second phase: 800 steps on the timesteps the demo samples (t < 500), input noise as
#            speckled as the decoder's pictures, the error weighed up at edges (the 1024 px edge 2.19 → 1.86 px).
#   sr1024-top   sr1024's second phase, on the top timesteps only (the demo samples it in one step from noise).
#   sr1024-more  its third: 3,000 more steps of the second's recipe (more steps kept sharpening its edges).
#   sr1024-edge  its fourth: 2,000 steps with the error weighed up at edges (sr.edge_weight; sharper still).
#   decoder, decoder2, …, decoder6   the 64 px decoder in six phases, each from the previous
#            one's weights, with every core ($DECODER_LAUNCH: by default two CPU processes, accelerate's torchrun
#            launcher); decoder4 is 2,700 more steps of decoder3's recipe (the place is learned late); decoder5
#            weighs the error up at edges (decoder.edge_weight: near-colour edges blurred, then widened at 1024 px);
#            decoder6 weighs near-colour pictures up (decoder.contrast_ref: specks in an orange disc on red).
#   export   fp16 into models/demo/ (text stages from $DECODER, the decoder's last phase; the upsamplers from
#            sr256-edge and sr1024-edge, or where those runs are not here, as shipped in models/demo), the demo's
#            settings (configs/demo.yaml).
#            Skipped while models/demo is what it last exported from the same runs (runs/demo/export.sha256).
#   eval     `unclip eval shapes` of what was shipped: 192 prompts at 64 px, 48 at 1024 px (runs/demo/eval-SIZE.json).
#   outline  the demo decoder's outline LoRA (issue 20) on the shipped demo: data/shapes-outline (dark band inside
#            each edge; z_i from each image's plain twin, embedded by the shipped CLIP),
#            configs/train/demo-outline-lora.yaml, shipped as models/demo-lora/outline.safetensors; retrained
#            when the $DECODER or CLIP run is newer than it.
# A training step is finished when its output_dir has model.yaml; an interrupted one resumes from its latest
# checkpoint (`resume=latest`). Without arguments the text side (clip, embed, prior), sr256 and sr1024 (with its
# later phases) run side by side, each on half the cores; the decoders start when the text side is done, beside
# what is left of the upsamplers, which the export waits for. Every step that ran appends
# "step<TAB>seconds<TAB>date" to runs/demo/times.tsv (a training step resumed in another session: that session's
# part, then "NAME (all sessions)", the trainer's clock).
# Everything goes under runs/demo/ and data/.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
SEED=${SEED:-0}
CORES=$(nproc)
HALF=$(( CORES > 1 ? CORES / 2 : 1 ))
DECODER=decoder6  # the decoder's last phase: what the export ships and the outline adapter adapts
DECODER_LAUNCH=${DECODER_LAUNCH:-accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no}
STEPS=(data clip embed prior sr256 sr256-edge sr1024 sr1024-top sr1024-more sr1024-edge decoder decoder2 decoder3
  decoder4 decoder5 decoder6 export eval outline)
mkdir -p runs/demo

say() { echo "== $(date -u +%H:%M:%S) $*"; }
timed() {  # timed NAME command...: run it, then log its wall time
  local name=$1 start=$SECONDS; shift
  say "$name"
  "$@"
  printf '%s\t%s\t%s\n' "$name" "$(( SECONDS - start ))" "$(date -u +%FT%TZ)" >> runs/demo/times.tsv
  say "$name done in $(( SECONDS - start )) s"
}
resume() { [ -d "runs/demo/$1/checkpoints" ] && echo "resume=latest" || true; }
train() {  # train NAME [launcher...]: configs/train/demo-NAME.yaml unless runs/demo/NAME has model.yaml
  local name=$1; shift
  [ -f "runs/demo/$name/model.yaml" ] && return
  if [ $# -eq 0 ]; then set -- python; fi
  timed "$name" "$@" -m unclip.train --config "configs/train/demo-$name.yaml" seed="$SEED" $(resume "$name")
  # and the trainer's own clock over every session's part of the run (the "seconds" of train_log.jsonl)
  printf '%s\t%s\t%s\n' "$name (all sessions)" "$(python -c 'import json, sys
print(round(max(json.loads(line).get("seconds") or 0 for line in open(sys.argv[1]))))' "runs/demo/$name/train_log.jsonl")" \
    "$(date -u +%FT%TZ)" >> runs/demo/times.tsv
}
dataset() {  # dataset FOLDER N SIZE [more `unclip data shapes` flags]
  [ -f "$1/metadata.jsonl" ] && return
  rm -rf "$1.partial"
  timed "data $3 px" unclip data shapes "$1.partial" --n "$2" --size "$3" --seed "$SEED" --workers "$CORES" --quiet \
    "${@:4}"
  mv "$1.partial" "$1"
}

step_data() {
  dataset data/shapes-256 20000 256
  dataset data/shapes-1024 4000 1024
}
step_clip() {
  [ -f runs/demo/clip/zero_shot.json ] && return
  rm -rf runs/demo/clip  # an export cut short; the training state is in runs/demo/clip.pt
  timed clip python scripts/train_demo_clip.py --data data/shapes-256 --out runs/demo/clip --steps 10000 \
    --seed "$SEED" --checkpoint runs/demo/clip.pt --captions placed --colour-jitter 0.3 --no-progress
}
step_embed() {
  local cache
  cache=$(ls data/shapes-256/.unclip-cache/*.safetensors 2>/dev/null | head -1 || true)
  [ -n "$cache" ] && [ "$cache" -nt runs/demo/clip/zero_shot.json ] && return
  timed embed unclip embed data/shapes-256 --clip hf:runs/demo/clip/image_encoder
}
step_prior() { train prior; }
step_sr256() { train sr256; }
step_sr256-edge() { train sr256-edge; }
step_sr1024() { train sr1024; }
step_sr1024-top() { train sr1024-top; }
step_sr1024-more() { train sr1024-more; }
step_sr1024-edge() { train sr1024-edge; }
step_decoder() { OMP_NUM_THREADS=$HALF train decoder $DECODER_LAUNCH; }
step_decoder2() { OMP_NUM_THREADS=$HALF train decoder2 $DECODER_LAUNCH; }  # Min-SNR-γ 5
step_decoder3() { OMP_NUM_THREADS=$HALF train decoder3 $DECODER_LAUNCH; }  # pyramid noise
step_decoder4() { OMP_NUM_THREADS=$HALF train decoder4 $DECODER_LAUNCH; }  # more of it
step_decoder5() { OMP_NUM_THREADS=$HALF train decoder5 $DECODER_LAUNCH; }  # edges weighed up
step_decoder6() { OMP_NUM_THREADS=$HALF train decoder6 $DECODER_LAUNCH; }  # near-colour pictures weighed up
export_stamp() {  # the sha256 of every file an export reads (the runs, the CLIP) and of what it wrote (models/demo)
  local run
  for run in "$@"; do
    find "runs/demo/$run" -type f ! -path '*/checkpoints/*' ! -name 'train_log.jsonl'
  done | { cat; find runs/demo/clip models/demo -type f; } | LC_ALL=C sort | xargs -r sha256sum | sha256sum
}
step_export() {
  local upsamplers runs=("$DECODER") stamp=runs/demo/export.sha256
  [ -f "runs/demo/$DECODER/model.yaml" ] || { say "export: no runs/demo/$DECODER here: models/demo kept as it is"; return; }
  # the upsamplers see no text: without their runs here (a text side retrained in a new workspace) the export keeps
  # the shipped ones, read from models/demo before it is replaced
  if [ -f runs/demo/sr256-edge/model.yaml ] && [ -f runs/demo/sr1024-edge/model.yaml ]; then
    upsamplers=(--upsamplers runs/demo/sr256-edge/model.yaml --upscaler runs/demo/sr1024-edge/model.yaml)
    runs+=(sr256-edge sr1024-edge)
  elif [ -f models/demo/model.yaml ]; then
    say "export: the upsamplers as shipped (no runs/demo/sr256-edge, sr1024-edge here)"
    upsamplers=(--upsamplers models/demo/model.yaml)
  else
    echo "export: no upsamplers: run the sr256 and sr1024 steps first" >&2; return 1
  fi
  # fresh: models/demo is, file for file, what the last export made from these same runs (a content stamp, not
  # mtimes: `git checkout -- models/demo` makes the shipped files newer than any run without being this export)
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(export_stamp "${runs[@]}")" ] && return
  timed export python scripts/export_demo.py "runs/demo/$DECODER/model.yaml" "${upsamplers[@]}" --clip runs/demo/clip \
    --out models/demo --force
  sed -e 's#\.\./models/demo/##' configs/demo.yaml > models/demo/model.yaml  # the demo's settings, relative
  export_stamp "${runs[@]}" > "$stamp"
}
step_eval() {  # the issue's two checks: every form at 64 px (n 192), and at 1024 px with the edge width (n 48)
  local size n
  for size in 64 1024; do
    n=$([ "$size" = 64 ] && echo 192 || echo 48)
    [ -f "runs/demo/eval-$size.json" ] && [ "runs/demo/eval-$size.json" -nt models/demo/model.yaml ] && continue
    rm -f "runs/demo/eval-$size.json"
    timed "eval $size px" unclip eval shapes --model demo --n "$n" --size "$size" \
      --report "runs/demo/eval-$size.json" --quiet
  done
}
step_outline() {
  local adapter=models/demo-lora/outline.safetensors
  # it adapts the shipped decoder and reads z_i by the shipped CLIP: stale when either run is newer (a new export
  # of the same runs, e.g. for new upsamplers, leaves it as it is)
  base_newer() { [ "runs/demo/$DECODER/model.yaml" -nt "$1" ] || [ runs/demo/clip/zero_shot.json -nt "$1" ]; }
  [ -f "$adapter" ] && ! base_newer "$adapter" && return
  dataset data/shapes-outline 2000 256 --outline 0.06
  # z_i of each outlined image: its plain twin's embedding by the shipped CLIP (redone when the CLIP is newer)
  local cache=data/shapes-outline/.unclip-cache/hf-models-demo-clip-image_encoder.safetensors
  [ -f "$cache" ] && ! base_newer "$cache" \
    || timed "embed outline" unclip embed data/shapes-outline --clip hf:models/demo/clip/image_encoder
  # an adapter trained on an earlier demo is stale, and so is its checkpoint
  [ -d runs/demo/outline-lora ] && base_newer runs/demo/outline-lora/train_config.yaml \
    && rm -rf runs/demo/outline-lora
  OMP_NUM_THREADS=$HALF train outline-lora $DECODER_LAUNCH
  mkdir -p models/demo-lora
  cp runs/demo/outline-lora/pytorch_lora_weights.safetensors "$adapter"
}

if [ $# -gt 0 ]; then
  for name in "$@"; do
    [[ " ${STEPS[*]} " == *" $name "* ]] || { echo "unknown step '$name': choose from ${STEPS[*]}" >&2; exit 2; }
  done
  for name in "$@"; do OMP_NUM_THREADS=${OMP_NUM_THREADS:-$CORES} "step_$name"; done
  exit 0
fi

step_data
# three lanes at once, on half the cores each: the text lane ends first, then each upsampler has its half (two
# lanes, the first upsampler then the second, left a core idle for most of an hour on 2 cores)
text_lane() { export OMP_NUM_THREADS=$HALF; step_clip; step_embed; step_prior; }
declare -A lanes
text_lane > runs/demo-text-lane.log 2>&1 &
lanes[text]=$!
sr1024_lane() { export OMP_NUM_THREADS=$HALF; step_sr1024; step_sr1024-top; step_sr1024-more; step_sr1024-edge; }
sr256_lane() { export OMP_NUM_THREADS=$HALF; step_sr256; step_sr256-edge; }
sr256_lane > runs/demo-sr256-lane.log 2>&1 &
lanes[sr256]=$!
sr1024_lane > runs/demo-sr1024-lane.log 2>&1 &
lanes[sr1024]=$!
say "three lanes: text (CLIP, prior), sr256, and sr1024 with its later phases (runs/demo-{text,sr256,sr1024}-lane.log)"
lane() {  # lane NAME: wait for it, or stop with where to look
  wait "${lanes[$1]}" || { echo "the $1 lane failed: see runs/demo-$1-lane.log" >&2; exit 1; }
}
lane text  # the decoders need the CLIP and its embeddings; the upsampler lanes go on beside them, up to the export
step_decoder
step_decoder2
step_decoder3
step_decoder4
step_decoder5
step_decoder6
lane sr256
lane sr1024
step_export
step_eval
step_outline
say "done: wall times in runs/demo/times.tsv"
