# CPU image. The steps are the commands CI runs (`pip install -e '.[export,default-model]'`,
# `ember export`), so what CI tests is what the image builds. No container engine runs in this
# project's CI, so the image itself is not built there.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN python -m venv /opt/ember && /opt/ember/bin/pip install --no-cache-dir torch==2.13.0 \
 && /opt/ember/bin/pip install --no-cache-dir '.[export,default-model]'
# Export the default model at build time so the container starts offline.
RUN HF_HUB_OFFLINE=1 /opt/ember/bin/python -c "from pathlib import Path; from ember.export import ensure_default_model; ensure_default_model(Path('/models-cache'))"

FROM python:3.11-slim AS runtime
COPY --from=build /opt/ember /opt/ember
COPY --from=build /models-cache/models /models
# The runtime needs no PyTorch: drop the export-only packages.
RUN /opt/ember/bin/pip uninstall -y torch optimum optimum-onnx transformers || true
RUN useradd --uid 10001 --create-home ember
USER ember
ENV EMBER_MODELS_DIR=/models EMBER_PORT=50051 PATH=/opt/ember/bin:$PATH
VOLUME ["/models"]
EXPOSE 50051
ENTRYPOINT ["ember", "serve"]
