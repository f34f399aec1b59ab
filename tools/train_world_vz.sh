#!/usr/bin/env bash
# Train the bundled shapes-world model (the zero-terminal-SNR lineage, shipped since the sixteenth session) with the
# project's own commands and install it into the package (zoetrope/assets/world/). Run from the repository root:
#     TRAIL=0 bash tools/train_world.sh        # first: the 52-minute lineage every stage here starts from (runs/world/)
#     bash tools/train_world_vz.sh             # then this (~13.8 CPU hours on 2 cores, docs/world-training.md)
# Every stage's wall time goes to runs/exp/times.tsv, its log to runs/exp/logs/. Each stage is a config file under
# configs/world/experiments/ (its header says what it is for and what it measured); the chain:
#   image-vpred-ztsnr (the base image model converted to v-prediction with zero terminal SNR)
#   -> domain adapter on it -> motion module with a text cross-attention (from the first lineage's module)
#   -> motion curriculum 1-5 (left/right, the same at high noise, translations, all eight motions, the weak ones)
#   -> personalised (pastel) model, decoder-only VAE fine-tune, SparseCtrl RGB + sketch encoders, MotionLoRAs.
# FROM=<stage> starts at a stage (earlier exports must exist); SKIP_INSTALL=1 leaves the package data alone.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=data/world
RUNS=runs/exp
X=configs/world/experiments
source tools/recipe_lib.sh  # want, timed, runs/exp/logs and times.tsv
for needed in runs/world/image/model.safetensors runs/world/motion/motion_module.safetensors \
    runs/world/sparsectrl-rgb-long/sparse_control.safetensors \
    runs/world/sparsectrl-sketch/sparse_control.safetensors; do
    [ -f "$needed" ] || { echo "missing $needed: run TRAIL=0 bash tools/train_world.sh first" >&2; exit 1; }
done

train() {  # train NAME CONFIG [--set ...]: one stage, two threads (the stages here run one at a time)
    local name=$1; shift
    want "$name" && OMP_NUM_THREADS=${THREADS:-2} timed "$name" zoetrope train "$@"
    return 0
}

# 1. Data: the plain base world (no trail; the first lineage's data when it was made with TRAIL=0), the subsets the
#    curriculum names, and the image folder of the decoder fine-tune (plain + pastel stills side by side).
if [ -z "${FROM:-}" ]; then
    [ -f "$DATA/plain/videos.csv" ] || zoetrope world make "$DATA/plain" --preset base --scale 4
    for preset in pastel zoom-in pan-left; do
        [ -f "$DATA/$preset/world.json" ] || zoetrope world make "$DATA/$preset" --preset "$preset"
    done
    # The zoom LoRA's clips zoom twice as far as the preset's (twenty-fourth session).
    [ -f "$DATA/zoom-strong/world.json" ] || zoetrope world make "$DATA/zoom-strong" --preset zoom-in --camera-speed-range 0.8 1.0
    subset() {  # subset NAME REGEX [TIMES]: the header and the rows whose caption matches, or all rows + matches
        local out="$DATA/plain/$1.csv"
        if [ "${3:-0}" = 0 ]; then
            (head -1 "$DATA/plain/videos.csv"; grep -E "$2" "$DATA/plain/videos.csv") > "$out"
        else
            (cat "$DATA/plain/videos.csv"
             for _ in $(seq "$3"); do grep -E "$2" "$DATA/plain/videos.csv"; done) > "$out"
        fi
    }
    subset leftright "moving (left|right)"
    subset lrud "moving (left|right|up|down)"
    subset weak3x "moving (up|down)|growing|rotating" 2
    # The fast world of the keyframes-first LoRA: its left/right/up/down clips only.
    [ -f "$DATA/fast/videos.csv" ] || zoetrope world make "$DATA/fast" --preset base --scale 2 --seed 6 --speed-range 0.5 0.7
    (head -1 "$DATA/fast/videos.csv"; grep -E "moving (left|right|up|down)" "$DATA/fast/videos.csv") > "$DATA/fast/translations.csv"
    mkdir -p "$DATA/vae-mix/images"
    for world in plain pastel; do
        for file in "$DATA/$world"/images/*.png; do
            name=$(basename "$file")
            ln -sf "../../$world/images/$name" "$DATA/vae-mix/images/$world-$name"
        done
        sed "s/\"file_name\": \"/\"file_name\": \"$world-/" "$DATA/$world/images/metadata.jsonl"
    done > "$DATA/vae-mix/images/metadata.jsonl"
fi

# 2. Stages, in dependency order (each starts from the export of the one before it).
train image-vz $X/image-vpred-ztsnr.yaml
train adapter-vz configs/world/domain-adapter.yaml --set output_dir=$RUNS/adapter-vz \
    --set model.image_model=$RUNS/image-vz/model.safetensors --set data.csv_path=$DATA/plain/videos.csv \
    --set data.video_folder=$DATA/plain/videos
# The text-cross-attention module ran 8,250 steps before the curriculum started from it (its config asks for more:
# it was a side-by-side experiment with its self-attention control, motion-self-bundled.yaml).
train motion-cross $X/motion-cross-bundled.yaml --set steps=8250
START="$RUNS/motion-cross-bundled/checkpoints/step-0008250/motion_module.safetensors"  # what curriculum 1 reads
if want curriculum-1-leftright && [ ! -f "$START" ]; then
    mkdir -p "$(dirname "$START")"
    cp "$RUNS/motion-cross-bundled/motion_module.safetensors" "$START"
fi
for stage in 1-leftright 2-leftright-high-noise 3-translations 4-all-motions 5-weak-motions; do
    train "curriculum-$stage" "$X/curriculum-$stage.yaml"
done
# The shipped module (seventeenth session): stage 5 taught prompts without the background phrase. The SparseCtrl
# encoders are continued against it and the MotionLoRAs trained from it (eighteenth session).
train captions-vz "$X/motion-captions-vz.yaml"
train personalize-vz configs/world/personalize.yaml --set output_dir=$RUNS/personalize-vz \
    --set model.image_model=$RUNS/image-vz/model.safetensors
train vae-decoder $X/vae-decoder-styles.yaml
# The pastel model on a VAE whose encoder tells pale colours from saturated ones (twenty-second session).
train vae-anchored $X/vae-anchored-styles.yaml
train personalize-anchored $X/personalize-anchored.yaml
train sparsectrl-rgb-vz $X/sparsectrl-rgb-vz.yaml
train sparsectrl-sketch-vz $X/sparsectrl-sketch-vz.yaml
# ... continued against the shipped module (seventeenth session)
train sparsectrl-rgb-captions $X/sparsectrl-rgb-captions.yaml
train sparsectrl-sketch-captions $X/sparsectrl-sketch-captions.yaml
# ... and both 1,000 more steps, half of them at high noise (eighteenth session: the interpolation path)
train sparsectrl-rgb-highnoise $X/sparsectrl-rgb-highnoise.yaml
train sparsectrl-sketch-highnoise $X/sparsectrl-sketch-highnoise.yaml
# ... and the RGB one 1,000 more with first + last keyframes in 40 % of its clips (nineteenth session: interpolation)
train sparsectrl-rgb-interp2 $X/sparsectrl-rgb-interp2.yaml
# MotionLoRAs against the shipped module (eighteenth session; the -vz configs they extend trained against stage 5)
train zoom-lora-capt $X/motion-lora-zoom-in-captions.yaml  # shipped until the twenty-fourth session
train zoom-lora-strong $X/motion-lora-zoom-strong.yaml  # the shipped zoom LoRA (use it with --noise zoom_warped)
train pan-lora-capt $X/motion-lora-pan-left-captions.yaml
train fast-lora $X/motion-lora-fast.yaml

# 3. Install (float16 copies; the decoder fine-tune goes inside both image models).
[ "${SKIP_INSTALL:-0}" = 1 ] && exit 0
python -m zoetrope.world.bundled personalized_model="$RUNS/personalize-anchored/model.safetensors"  # its own VAE
python -m zoetrope.world.bundled --vae "$RUNS/vae-decoder-styles/vae.safetensors" \
    model="$RUNS/image-vz/model.safetensors" \
    motion_module="$RUNS/captions-vz/motion_module.safetensors" \
    domain_adapter="$RUNS/adapter-vz/domain_adapter.safetensors" \
    motion_lora_zoom_in="$RUNS/zoom-lora-strong/motion_lora.safetensors" \
    motion_lora_pan_left="$RUNS/pan-lora-capt/motion_lora.safetensors" \
    motion_lora_fast="$RUNS/fast-lora/motion_lora.safetensors" \
    sparsectrl_rgb="$RUNS/sc-rgb-interp2/sparse_control.safetensors" \
    sparsectrl_sketch="$RUNS/sc-sketch-hn/sparse_control.safetensors"
du -ch zoetrope/assets/world/*.safetensors | tail -n1
