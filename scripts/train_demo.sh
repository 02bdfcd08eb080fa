#!/usr/bin/env bash
# Retrain the offline demo cascade (`--model demo`) from nothing, with unclip's own code, then ship it.
#
#   bash scripts/train_demo.sh                                  # CPU: docs/benchmarks.md says how long it took
#   DECODER_LAUNCH="accelerate launch" bash scripts/train_demo.sh   # e.g. one GPU (accelerate's own config)
#
# 1. The procedural shapes dataset: the same scenes at 256 px (CLIP, prior, decoder, 64→256) and, the first
#    4000, at 1024 px (256→1024; decoding a 1024 px PNG costs more than a 64 px decoder step on a CPU).
# 2. Two lanes side by side, each on half the cores: (a) the tiny CLIP (open_clip, contrastive), its image
#    embeddings cached (`unclip embed`), the prior around it; (b) the two upsamplers, which see no text and so
#    need no trained CLIP (configs/train/demo-sr256.yaml, demo-sr1024.yaml).
# 3. The 64 px decoder, on the prior's cascade, with every core ($DECODER_LAUNCH: by default two CPU
#    processes, accelerate's torchrun launcher; batch_size in demo-decoder.yaml is per process), in three
#    phases, each from the previous one's weights: demo-decoder.yaml, demo-decoder2.yaml (Min-SNR-γ
#    weighting), demo-decoder3.yaml (multi-resolution training noise: backgrounds and positions).
# 4. The fp16 export into models/demo/ (text stages from the decoder run, upsamplers from the sr1024 run), and
#    the shapes evaluation of what was shipped.
# Everything goes under runs/demo/ and data/; rerunning skips finished steps (a stage is finished when its
# output_dir has model.yaml; an interrupted stage resumes from its latest checkpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
SEED=${SEED:-0}
CORES=$(nproc)
HALF=$(( CORES > 1 ? CORES / 2 : 1 ))
DECODER_LAUNCH=${DECODER_LAUNCH:-accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no}

step() { echo "== $(date -u +%H:%M:%S) $*"; }
resume() { [ -d "runs/demo/$1/checkpoints" ] && echo "resume=latest" || true; }
stage() {  # stage NAME [launcher...]: train configs/train/demo-NAME.yaml unless finished
  local name=$1; shift
  [ -f "runs/demo/$name/model.yaml" ] && return
  step "$name"
  if [ $# -eq 0 ]; then set -- python; fi
  "$@" -m unclip.train --config "configs/train/demo-$name.yaml" seed="$SEED" $(resume "$name")
}

[ -f data/shapes-256/metadata.jsonl ] || { step "dataset 256 px"; unclip data shapes data/shapes-256 --n 20000 --size 256 --seed "$SEED" --workers "$CORES" --quiet; }
[ -f data/shapes-1024/metadata.jsonl ] || { step "dataset 1024 px"; unclip data shapes data/shapes-1024 --n 4000 --size 1024 --seed "$SEED" --workers "$CORES" --quiet; }

mkdir -p runs/demo
text_lane() {
  export OMP_NUM_THREADS=$HALF
  if [ ! -f runs/demo/clip/text_encoder/config.json ]; then
    step "CLIP"
    rm -rf runs/demo/clip
    python scripts/train_demo_clip.py --data data/shapes-256 --out runs/demo/clip --steps 5000 --seed "$SEED" --no-progress
  fi
  step "CLIP image embeddings"
  unclip embed data/shapes-256 --clip hf:runs/demo/clip/image_encoder
  stage prior
}
upsampler_lane() {
  export OMP_NUM_THREADS=$HALF
  stage sr256
  stage sr1024
}
text_lane > runs/demo-text-lane.log 2>&1 &
text=$!
upsampler_lane > runs/demo-upsampler-lane.log 2>&1 &
upsamplers=$!
step "two lanes: text (CLIP, prior; runs/demo-text-lane.log) and upsamplers (runs/demo-upsampler-lane.log)"
wait $text || { echo "the text lane failed: see runs/demo-text-lane.log" >&2; exit 1; }
wait $upsamplers || { echo "the upsampler lane failed: see runs/demo-upsampler-lane.log" >&2; exit 1; }

export OMP_NUM_THREADS=$HALF   # per decoder process
stage decoder $DECODER_LAUNCH
stage decoder2 $DECODER_LAUNCH   # 2,700 more steps with Min-SNR-γ 5, from the first phase's weights
stage decoder3 $DECODER_LAUNCH   # 2,000 more with pyramid noise: backgrounds and positions from z_i and the caption

step "export fp16 into models/demo"
python scripts/export_demo.py runs/demo/decoder3/model.yaml --upsamplers runs/demo/sr1024/model.yaml \
  --clip runs/demo/clip --out models/demo --force
sed -e 's#\.\./models/demo/##' configs/demo.yaml > models/demo/model.yaml  # the demo's settings, paths relative to it
step "evaluate"
rm -f runs/demo/eval-64.json
unclip eval shapes --model demo --n 96 --size 64 --report runs/demo/eval-64.json --quiet
step "done"
