#!/usr/bin/env bash
# The GPU checks owed by issues 2, 3 and 6, as one prepared command for a lent device machine (H100/H200, no
# internet; its image has torch, transformers and accelerate but not diffusers or open_clip).
#
#   bash scripts/gpu_session.sh --prepare        # here, once: wheels and the reference configs into .gpu/
#   # then, with the device tool: run(command="bash scripts/gpu_session.sh", carry=[".gpu"], timeout_s=600)
#   bash scripts/gpu_session.sh bench-fast memory     # only some parts (default: all, in this order)
#
# Parts, most important first (what 2026-12-04's H200 left unmeasured: docs/benchmarks.md), each skipped when too
# little of the DEADLINE (seconds, default 560) is left and stopped at its own ceiling:
#   tests            the tests marked gpu (fp16/bf16 without NaN, no host sync in the step loop, CUDA graphs)
#   bench-fast       the fast preset (x4 at 20 DPM-Solver++ steps): the diffusers chain, then unclip off and fast
#   bench-reference  the reference preset's fast row (all four stages compiled; off/default/no_compile/graphs
#                    and the chain were measured on 2026-12-04)
#   eager            each eager switch alone: channels_last, vae_bf16, vae_tiled, split_guidance
#   memory           model CPU offload (peak memory), bf16, batch 4 and 8
#   train-memory     the trainer's peak memory, each Karlo fine-tuning preset at batch 1 and 8 (issue 20)
# Everything lands in $OUT (summary.txt; each part's log and JSON rows, written as measured, then added to results.tar);
# the last lines printed are the rows.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p .gpu/wheels
    grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/wheels diffusers==0.42.1 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 importlib_metadata==10.2.0
    rm -rf .gpu/pretrained-configs && cp -r ../shared/reference/pretrained-configs .gpu/pretrained-configs
    du -sh .gpu && exit 0
fi

OUT="${OUT:-/tmp/unclip-gpu-out}"
mkdir -p "$OUT"
DEADLINE="${DEADLINE:-560}"
PARTS=("$@")
[[ ${#PARTS[@]} -eq 0 ]] && PARTS=(tests bench-fast bench-reference eager memory train-memory)
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [[ -d .gpu/wheels ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu/wheels/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
nvidia-smi -L | tee "$OUT/summary.txt"
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, \
'transformers', transformers.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/summary.txt" || exit 1

# only the files that hold gpu tests: collecting the others would import the serve and browser extras, absent there
mapfile -t GPU_TESTS < <(grep -l "pytest.mark.gpu" tests/test_*.py)
BENCH=(python3 scripts/benchmark.py --configs .gpu/pretrained-configs --runs 3 --warmup 1)
left() { echo $((DEADLINE - SECONDS)); }
part() {  # part NAME NEEDED_SECONDS MOST_SECONDS COMMAND...: run it for at most MOST (or what is left of the
    local name=$1 needed=$2 most=$3  # deadline), log to $OUT/NAME.log; a benchmark cut short keeps its JSON rows
    shift 3
    if (($(left) < needed)); then
        echo "== $name: skipped, $(left) s left (needs about $needed)" | tee -a "$OUT/summary.txt"
        return
    fi
    echo "== $name ($(left) s left)"
    local limit=$(left)
    ((limit > most)) && limit=$most
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after ${SECONDS} s" | tee -a "$OUT/summary.txt"
    # the device tool brings back 8 files: each part's log and JSON go into one tar as it ends
    (cd "$OUT" && for f in "$name.log" *.json; do [[ -f $f ]] && tar -rf results.tar "$f" && rm "$f"; done)
}

for p in "${PARTS[@]}"; do
    case $p in
        tests) part tests 60 120 python3 -m pytest -q -p no:cacheprovider -m gpu "${GPU_TESTS[@]}" ;;
        bench-fast) part bench-fast 150 300 "${BENCH[@]}" --preset fast \
            --speedups off fast --json "$OUT/bench-fast.json" ;;
        bench-reference) part bench-reference 150 240 "${BENCH[@]}" --preset reference --no-diffusers \
            --speedups fast --json "$OUT/bench-reference.json" ;;
        eager) part eager 120 150 "${BENCH[@]}" --preset fast --no-diffusers \
            --speedups default channels_last vae_bf16 vae_tiled split_guidance --json "$OUT/bench-eager.json" ;;
        memory)
            part offload 60 90 "${BENCH[@]}" --preset fast --no-diffusers --offload --runs 1 \
                --speedups default no_compile vae_tiled --json "$OUT/bench-offload.json"
            part bf16 60 90 "${BENCH[@]}" --preset fast --dtype bf16 --speedups default no_compile \
                --json "$OUT/bench-bf16.json"
            part batches 90 150 "${BENCH[@]}" --preset fast --batch 4 8 --speedups default no_compile \
                --json "$OUT/bench-batches.json" ;;
        train-memory) part train-memory 120 240 python3 scripts/train_memory.py --configs .gpu/pretrained-configs \
            --json "$OUT/train-memory.json" ;;
        *) echo "unknown part '$p'; parts: tests bench-fast bench-reference eager memory train-memory" >&2; exit 2 ;;
    esac
done
echo "== rows"
tar -xOf "$OUT/results.tar" 2>/dev/null | grep '^| 20' || true
cat "$OUT/summary.txt"
