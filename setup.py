"""idforge: identity-preserving text-to-image methods on one Lightning code base."""
from setuptools import find_packages, setup

CORE = [
    "torch>=2.4,<2.15",
    "torchvision>=0.19,<0.30",
    "pytorch-lightning>=2.4",
    "diffusers>=0.31",
    "transformers>=4.45",
    "accelerate>=0.33",
    "peft>=0.13",
    "huggingface_hub>=1.0",  # ModelCardData and HfApi of export (--push-to-hub); the `hf` CLI
    "safetensors>=0.4",
    "facenet-pytorch>=2.5.3,<2.6",  # 2.6 pins torch<2.3 and would downgrade torch
    "insightface>=0.7.3",
    "onnxruntime>=1.17",
    "open_clip_torch>=2.26",
    "controlnet_aux>=0.0.9",
    "wandb>=0.17",
    "omegaconf>=2.3",
    "orjson>=3.9",  # shard json (pose keypoints) parsed in the data loader
    "webdataset>=0.2.90",
    "numpy>=1.26",
    "pillow>=10",
    "matplotlib>=3.8",
    "tqdm>=4.66",
]
FACE_EXTRA = ["dlib-bin>=19.24", "face-recognition-models>=0.3.0"]
TEST_EXTRA = ["pytest>=8", "scikit-image>=0.22", "pyarrow>=14",  # pyarrow: LAION parquet input
              "moto[server]>=5",  # a local S3 server for the object-storage round trip
              "selenium>=4.20"]  # drives Chromium in tests/test_app_browser.py
# the web app (python -m ldm_ext.app); scikit-image: its example astronaut photo. Gradio 6
# pins pillow < 13, beside huggingface_hub >= 1
APP_EXTRA = ["gradio>=6.0,<7", "scikit-image>=0.22"]
# data at LAION-Face scale: `prepare --engine ray`, s3:// (and any fsspec URL) in and out;
# add the fsspec backend of another store (gcsfs, adlfs) the same way
SCALE_EXTRA = ["ray>=2.9", "s3fs>=2024.6"]
# ZeRO training (trainer.strategy=deepspeed): a pure Python install (~10 s), its C++ ops
# build on first use; in dev so CI runs ZeRO-2 on CPU processes (tests/test_deepspeed.py)
DEEPSPEED_EXTRA = ["deepspeed>=0.16"]  # Lightning needs >= 0.16 with torch >= 2.6
# console scripts idforge-<command> -> their function in ldm_ext/commands.py; train.py and
# eval.py are scripts of the checkout, never installed as modules
COMMANDS = {"train": "train", "eval": "evaluate", "fit": "fit", "generate": "generate",
            "export": "export", "prepare": "prepare", "app": "app"}

setup(
    name="idforge",
    version="0.1.0",
    description="Train, run and benchmark identity-preserving text-to-image methods",
    python_requires=">=3.10",
    packages=find_packages(include=["ldm_ext*", "datamodules*", "callbacks*"]),
    entry_points={"console_scripts": [f"idforge-{command}=ldm_ext.commands:{function}"
                                      for command, function in COMMANDS.items()]},
    install_requires=CORE,
    extras_require={
        "face": FACE_EXTRA,
        "test": TEST_EXTRA,
        "scale": SCALE_EXTRA,
        "deepspeed": DEEPSPEED_EXTRA,
        "app": APP_EXTRA,
        # ray: a 80 MB wheel, ~10 s to install
        "dev": FACE_EXTRA + TEST_EXTRA + SCALE_EXTRA + DEEPSPEED_EXTRA + APP_EXTRA,
    },
)
