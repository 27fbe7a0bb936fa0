"""Stage 2: everything trains, the vision tower at 0.2x the learning rate; one example per reference caption.

The input is stage 1's output folder; the output folder is an rscc checkpoint, the input of stage 3.
Arguments: `python train/stage2.py --help`; a recipe gives them as YAML.

8 GPUs on one node (CCExpert: ZeRO-2, bf16, global batch 256 = 8 GPUs x 8 per GPU x 4 accumulation steps):
    accelerate launch --config_file train/accelerate/8gpu.yaml train/stage2.py \
        --config train/recipes/ccexpert_stage2.yaml \
        --model_name_or_path runs/ccexpert-stage1 \
        --dataset_name_or_path data/cc_foundation --output_dir runs/ccexpert-stage2

Larger models: add `--deepspeed train/deepspeed/zero3.json` (or `zero3_offload.json` to hold optimizer states and
weights in CPU memory).
"""

from rscc.training import main

if __name__ == "__main__":
    main(stage="stage2")
