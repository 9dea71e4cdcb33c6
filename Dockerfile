# hashkd search service. The default image is the lean server: it serves models that have a
# current ONNX export, with onnxruntime and CPU FAISS and no PyTorch (`pip install '.[serve,cpu]'`,
# ~500 MB of packages, docs/export.md). The training image (PyTorch, timm: train, distill,
# export, and serving models without an ONNX export) is the build argument VARIANT:
#
#   docker build -t hashkd .                                   # VARIANT=serve (default)
#   docker build -t hashkd:train --build-arg VARIANT=train .   # + CPU PyTorch
#   docker build -t hashkd:gpu --build-arg VARIANT=gpu --build-arg BASE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 .
#   docker run --rm -p 8000:8000 -v $PWD/models:/models:ro -v hashkd-store:/data hashkd
#
# Export a model for the default image with `hashkd export MODEL --format onnx [--quantize int8
# --data SPEC]` (in the train image or a training install).
#
# See docs/service.md for the settings (HASHKD_* environment variables).
ARG BASE=python:3.11-slim
FROM ${BASE}

# serve: onnxruntime + faiss-cpu, no torch; train: CPU-only torch wheels + faiss-cpu;
# gpu: CUDA torch + faiss-gpu (the `gpu` extra in place of `cpu`).
ARG VARIANT=serve
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
COPY pyproject.toml README.md LICENSE ./
COPY configs ./configs
COPY hashkd ./hashkd
COPY indexes ./indexes
COPY service ./service

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN case "$VARIANT" in \
      serve) pip install ".[serve,cpu]" && ! python3 -c "import torch" 2>/dev/null ;; \
      train) pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu && \
             pip install ".[train,onnx,cpu]" ;; \
      gpu)   pip install torch torchvision && pip install ".[train,onnx,gpu]" ;; \
      *)     echo "VARIANT=$VARIANT is not valid: expected serve, train or gpu" >&2; exit 1 ;; \
    esac

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

# Every setting comes from HASHKD_* variables; flags may be appended (docker run ... hashkd --batching).
ENTRYPOINT ["hashkd", "serve"]
