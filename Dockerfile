# lit_safe on NVIDIA GPUs: CUDA PyTorch runtime + lit_safe; the entry point is the `lit-safe` command.
#   docker build -t lit-safe .
#   docker run --gpus all --ipc=host -v "$PWD/runs:/workspace/runs" -v "$HOME/.cache/huggingface:/cache/huggingface" \
#     -v "$HOME/.cache/lit_safe:/cache/lit_safe" lit-safe fit --config /opt/lit_safe/configs/reward/pku_saferlhf_alpaca-7b.yaml
FROM pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    LIT_SAFE_CACHE=/cache/lit_safe

WORKDIR /opt/lit_safe
COPY pyproject.toml README.md ./
COPY lit_safe ./lit_safe
COPY data_modules ./data_modules
COPY callbacks ./callbacks
COPY configs ./configs
# The base image's torch and torchvision satisfy lit_safe's and litdata's requirements, so pip keeps them.
RUN pip install --no-cache-dir . \
    && lit-safe --help > /dev/null

WORKDIR /workspace
ENTRYPOINT ["lit-safe"]
CMD ["--help"]
