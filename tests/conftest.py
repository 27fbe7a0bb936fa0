import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, VideoMAEConfig, VJEPA2Config

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is not present")
    return SHARED_DATA

EXAMPLES = REPO_ROOT / "examples" / "levir_cc"


@pytest.fixture(scope="session")
def example_pairs() -> list[list[str]]:
    """Two real LEVIR-CC pairs kept in the repository."""
    return [[str(EXAMPLES / "A" / name), str(EXAMPLES / "B" / name)] for name in ("train_000016.png", "train_000051.png")]


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance of 2 CPUs for the tests of a module (the machine's cores)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from rscc.tiny_checkpoints import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-rscc"))


@pytest.fixture(scope="session")
def stock_folder(tmp_path_factory) -> Path:
    """A saved stock LLaVA-OneVision checkpoint (tiny random weights) with its tokenizer and image processor."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    from rscc.tiny_checkpoints import build_image_processor, make_processor, tiny_config

    processor = make_processor()
    config = tiny_config(processor.tokenizer).to_dict()
    for key in [key for key in config if key not in LlavaOnevisionConfig().to_dict() or key == "model_type"]:
        del config[key]
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("stock-llava-ov")
    LlavaOnevisionForConditionalGeneration(LlavaOnevisionConfig(**config)).save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    build_image_processor().save_pretrained(folder)
    return folder


VIDEO_ENCODER_TYPES = ["videomae", "vjepa2"]
# Each family's own names for 28 px frames (the tiny SigLIP's 7x7 grid of 4 px patches) in 2-frame clips; V-JEPA 2
# with a one-layer predictor, which rscc must leave out.
TINY_VIDEO_ENCODERS = {
    "videomae": (VideoMAEConfig, dict(image_size=28, num_frames=2, num_attention_heads=4, intermediate_size=64)),
    "vjepa2": (VJEPA2Config, dict(crop_size=28, frames_per_clip=2, num_attention_heads=2, mlp_ratio=2.0,
                                  pred_hidden_size=16, pred_num_attention_heads=2, pred_num_hidden_layers=1)),
}


def tiny_video_encoder_config(model_type="videomae", **overrides):
    """A video encoder of 2 layers, width 32, 28 px frames in 4 px patches, 2-frame clips in tubelets of 2."""
    config_class, options = TINY_VIDEO_ENCODERS[model_type]
    options = dict(patch_size=4, tubelet_size=2, hidden_size=32, num_hidden_layers=2, **options)
    return config_class(**{**options, **overrides})


@pytest.fixture(scope="session")
def video_encoder_folders(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny video encoder (random weights) per model type of `VIDEO_ENCODER_TYPES`."""
    folders = {}
    for model_type in VIDEO_ENCODER_TYPES:
        torch.manual_seed(2)
        folders[model_type] = tmp_path_factory.mktemp(f"tiny-{model_type}")
        AutoModel.from_config(tiny_video_encoder_config(model_type)).save_pretrained(folders[model_type])
    return folders


@pytest.fixture
def tiny_model(tiny_checkpoint):
    from rscc import RsccForConditionalGeneration

    return RsccForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()


@pytest.fixture(scope="session")
def tiny_processor(tiny_checkpoint):
    from rscc import RsccProcessor

    return RsccProcessor.from_pretrained(tiny_checkpoint)


@pytest.fixture
def single_torch_thread():
    """One torch thread: a tiny model's matrices are too small to share out, and on a busy machine threads waiting on
    each other make a tiny `generate` several times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
