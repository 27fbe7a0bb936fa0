"""The defaults and choices the commands show in their help, in a module that imports nothing, so that
`rscc COMMAND --help` and argument errors need neither torch nor transformers."""

DEFAULT_MODEL = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
DEFAULT_LICENSE = "apache-2.0"  # the base model's (LLaVA-OneVision-0.5B: SigLIP and Qwen2, Apache-2.0)
# Weight dtypes by the name the commands take (--dtype); `rscc.loading.DTYPES` maps them to torch dtypes.
DTYPE_NAMES = ("bfloat16", "float16", "float32")
DEFAULT_BATCH_SIZE = 8
# `captioning_rscc.DEFAULT_MAX_NEW_TOKENS`, which remote code cannot import from here; a test keeps the two equal.
DEFAULT_MAX_NEW_TOKENS = 64
# How `rscc scene` treats dates out of time order (--order): refuse, sort by date, or keep as given.
SCENE_DATE_ORDERS = ("check", "time", "given")
# The smallest tile side `rscc scene` takes (--tile-size): LEVIR-CC's pairs are 256 px; a tile of a few pixels
# says nothing and a scene has millions.
MIN_TILE_SIZE = 32
# rscc data: the Parquet shard size (--max-shard-size), a manifest's columns, and the smallest region a mask-captioned
# source describes (--min-region-pixels).
DEFAULT_MAX_SHARD_SIZE = 500 * 1024**2
MANIFEST_FIELDS = ("id", "split", "before", "after", "images", "caption", "captions", "mask", "change_flag")
DEFAULT_MIN_REGION_PIXELS = 20
