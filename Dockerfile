# ember images, multi-stage:
#
#   docker build --target cpu  -t ember:cpu  .     # CPU (the default target: the last stage)
#   docker build --target cuda -t ember:cuda .     # CUDA 12 + cuDNN 9, onnxruntime-gpu
#   docker run -p 50051:50051 -p 9464:9464 ember:cpu
#
# Every step is a command CI runs on its machine (`make health-probe`, the Makefile's PyTorch
# install, `pip install '.[...]'`, the default model's export): what CI tests is what the image
# builds. PyTorch is the CPU build (TORCH_SPEC from TORCH_INDEX, as in the Makefile), and only the
# export stage has it.
# No container engine runs in this project's CI, so the image itself is not built there.
#
# Both images: non-root user (uid 10001), models in the /models volume (the default model,
# all-MiniLM-L6-v2, is exported there at build time, so the container starts offline),
# grpc_health_probe on the PATH and a HEALTHCHECK that runs it, gRPC on 50051, metrics on 9464.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ARG ORT_GPU_VERSION=1.22.0
ARG TORCH_SPEC=torch==2.13.0+cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# ---- grpc_health_probe, from Debian's grpc-go (GOPATH mode, as `make test` builds it) --------
FROM debian:bookworm-slim AS probe
RUN apt-get update && apt-get install -y --no-install-recommends make ca-certificates golang-go \
      protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev golang-google-protobuf-dev \
      golang-github-golang-protobuf-1-5-dev protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY clients/go ./clients/go
RUN make health-probe

# ---- the default model, exported once (needs PyTorch; nothing of it reaches the images) -----
FROM ${PYTHON_IMAGE} AS export
ARG TORCH_SPEC
ARG TORCH_INDEX
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN python -m venv /opt/export \
 && { /opt/export/bin/pip install --no-cache-dir "${TORCH_SPEC}" 2>/dev/null \
      || /opt/export/bin/pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" "${TORCH_SPEC}"; } \
 && /opt/export/bin/pip install --no-cache-dir '.[export,default-model]'
RUN HF_HUB_OFFLINE=1 /opt/export/bin/python -c "from pathlib import Path; from ember.export import ensure_default_model; ensure_default_model(Path('/export'))" \
 && mv /export/models /models

# ---- CPU runtime environment: ember without PyTorch --------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-build
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN python -m venv /opt/ember && /opt/ember/bin/pip install --no-cache-dir ./clients/python '.[bulk]'

# ---- CUDA runtime environment: the same, with onnxruntime-gpu in place of onnxruntime ---------
FROM ${CUDA_IMAGE} AS cuda-build
ARG ORT_GPU_VERSION
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN python3 -m venv /opt/ember && /opt/ember/bin/pip install --no-cache-dir ./clients/python '.[bulk]' \
 && /opt/ember/bin/pip uninstall -y onnxruntime \
 && /opt/ember/bin/pip install --no-cache-dir "onnxruntime-gpu==${ORT_GPU_VERSION}"

# ---- CUDA image ------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS cuda
RUN apt-get update && apt-get install -y --no-install-recommends python3 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --create-home ember
COPY --from=cuda-build /opt/ember /opt/ember
COPY --from=probe /src/clients/go/bin/grpc_health_probe /usr/local/bin/grpc_health_probe
COPY --from=export --chown=10001:10001 /models /models
USER 10001
ENV PATH=/opt/ember/bin:$PATH EMBER_MODELS_DIR=/models EMBER_PORT=50051 EMBER_PROVIDERS=tensorrt,cuda,cpu \
    EMBER_CACHE_DIR=/home/ember/.cache/ember HF_HUB_OFFLINE=1
VOLUME ["/models"]
EXPOSE 50051 8080 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["grpc_health_probe", "-addr=127.0.0.1:50051"]
ENTRYPOINT ["ember", "serve"]

# ---- CPU image (default) ---------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
RUN useradd --uid 10001 --create-home ember
COPY --from=cpu-build /opt/ember /opt/ember
COPY --from=probe /src/clients/go/bin/grpc_health_probe /usr/local/bin/grpc_health_probe
COPY --from=export --chown=10001:10001 /models /models
USER 10001
ENV PATH=/opt/ember/bin:$PATH EMBER_MODELS_DIR=/models EMBER_PORT=50051 EMBER_PROVIDERS=cpu \
    EMBER_CACHE_DIR=/home/ember/.cache/ember HF_HUB_OFFLINE=1
VOLUME ["/models"]
EXPOSE 50051 8080 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["grpc_health_probe", "-addr=127.0.0.1:50051"]
ENTRYPOINT ["ember", "serve"]
