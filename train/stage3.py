"""Stage 3: domain fine-tuning (LEVIR-CC): everything trains (vision tower at 0.2x), one random caption per pair per
epoch, validation by generation each epoch with the best checkpoint kept by S_m.

The input is stage 2's output folder (or any rscc / LLaVA-OneVision checkpoint); the output folder is the final rscc
checkpoint. Arguments: `python train/stage3.py --help`; a recipe gives them as YAML.

8 GPUs on one node (CCExpert: 50 epochs, global batch 256):
    accelerate launch --config_file train/accelerate/8gpu.yaml train/stage3.py \
        --config train/recipes/ccexpert_stage3.yaml \
        --model_name_or_path runs/ccexpert-stage2 \
        --dataset_name_or_path data/levir_cc --output_dir runs/ccexpert-stage3

Resume an interrupted run: the same command plus `--resume_from_checkpoint last` (or a checkpoint-N folder).
"""

from rscc.training import main

if __name__ == "__main__":
    main(stage="stage3")
