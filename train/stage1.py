"""Stage 1: align the new modules (projector + difference module, + change head when the model has one).

Everything else is frozen; one training example per reference caption ("flatten"). The input is a LLaVA-OneVision
checkpoint (a difference module is added, zero-initialised) or an rscc one; the output folder is an rscc
checkpoint, the input of stage 2. Arguments: `python train/stage1.py --help`; a recipe gives them as YAML.

One GPU:
    accelerate launch --config_file train/accelerate/single_gpu.yaml train/stage1.py \
        --config train/recipes/ccexpert_stage1.yaml \
        --model_name_or_path llava-hf/llava-onevision-qwen2-0.5b-ov-hf \
        --dataset_name_or_path data/cc_foundation --output_dir runs/ccexpert-stage1

8 GPUs on one node (CCExpert: global batch 64 = 8 GPUs x 8 per GPU):
    accelerate launch --config_file train/accelerate/8gpu.yaml train/stage1.py \
        --config train/recipes/ccexpert_stage1.yaml \
        --model_name_or_path llava-hf/llava-onevision-qwen2-0.5b-ov-hf \
        --dataset_name_or_path data/cc_foundation --output_dir runs/ccexpert-stage1
"""

from rscc.training import main

if __name__ == "__main__":
    main(stage="stage1")
