# hashkd search service. CPU image by default; GPU variant with --build-arg VARIANT=gpu; slim
# serving variant without PyTorch with --build-arg VARIANT=serve.
#
#   docker build -t hashkd:cpu .
#   docker build -t hashkd:gpu --build-arg VARIANT=gpu --build-arg BASE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 .
#   docker build -t hashkd:serve --build-arg VARIANT=serve .
#   docker run --rm -p 8000:8000 -v $PWD/models:/models:ro -v hashkd-store:/data hashkd:cpu
#
# VARIANT=serve installs `.[serve]` (onnxruntime, faiss-cpu, numba, fastapi ...; no torch, timm
# or torchvision: ~500 MB of packages, docs/export.md). It serves models that have a current
# ONNX export (`hashkd export MODEL --format onnx [--quantize int8 --data SPEC]`); a model
# without one needs PyTorch, i.e. the cpu or gpu variant.
#
# See docs/service.md for the settings (HASHKD_* environment variables).
ARG BASE=python:3.11-slim
FROM ${BASE}

# cpu: faiss-cpu and CPU-only torch wheels; gpu: faiss-gpu (the `gpu` extra) and CUDA torch;
# serve: onnxruntime only (the `serve` extra), no torch.
ARG VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    OMP_NUM_THREADS=1

# The GPU base images have no python; the slim image already has it.
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv && \
        rm -rf /var/lib/apt/lists/*; \
    fi

WORKDIR /app
COPY pyproject.toml README.md ./
COPY hashkd ./hashkd
COPY indexes ./indexes
COPY service ./service

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN if [ "$VARIANT" = "gpu" ]; then \
        pip install torch torchvision && \
        pip install ".[train]" && pip uninstall -y faiss-cpu && pip install "faiss-gpu>=1.14.3"; \
    elif [ "$VARIANT" = "serve" ]; then \
        pip install ".[serve]" && \
        ! python3 -c "import torch" 2>/dev/null; \
    else \
        pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu && \
        pip install ".[train,onnx]"; \
    fi

RUN useradd --create-home --uid 10001 hashkd && mkdir -p /models /data && chown hashkd:hashkd /data
USER hashkd

# /models: model artifacts (read-only is fine); /data: the durable store (SQLite + index snapshots).
VOLUME ["/models", "/data"]
ENV HASHKD_MODEL=/models/student \
    HASHKD_STORE=/data \
    HASHKD_HOST=0.0.0.0 \
    HASHKD_PORT=8000
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python3 -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"

# Every setting comes from HASHKD_* variables; flags may be appended (docker run ... hashkd:cpu --batching).
ENTRYPOINT ["hashkd", "serve"]
