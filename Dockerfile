# Brain-tumor MRI inference service (research use only: not a medical device).
#
#   docker build -t brain-tumor-service .                                                  # CPU
#   docker build -t brain-tumor-service:gpu --build-arg TENSORFLOW_PACKAGE="tensorflow[and-cuda]" .    # NVIDIA GPU
#   docker build -t brain-tumor-service:onnx --build-arg EXTRAS=onnx .    # then run with INFERENCE_RUNTIME=onnxruntime
#
# The GPU image keeps the same slim base: tensorflow[and-cuda] brings the CUDA and cuDNN user-space libraries as pip
# wheels, and the driver comes from the host through the NVIDIA Container Toolkit. BASE_IMAGE stays a build argument
# for a mirror, a pinned digest or a CUDA base image that provides Python 3.11 at the same path.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
# tensorflow-cpu (pinned in pyproject.toml) or tensorflow[and-cuda]; the version always comes from pyproject.toml.
ARG TENSORFLOW_PACKAGE=tensorflow-cpu
# Optional-dependency groups of pyproject.toml to add, comma-separated: onnx installs ONNX Runtime.
ARG EXTRAS=""
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /app

# Dependencies first, from pyproject.toml alone, so code changes do not reinstall TensorFlow. pip cannot override one
# dependency of a project, and tensorflow-cpu and tensorflow install the same package: so the requirements are written
# from pyproject.toml with only the TensorFlow distribution swapped, and the project itself is installed with
# --no-deps below. For the default build argument the list is exactly pyproject.toml's (tests/deploy checks it).
COPY pyproject.toml ./
COPY deploy/requirements_from_pyproject.py /tmp/
RUN python /tmp/requirements_from_pyproject.py pyproject.toml --tensorflow "${TENSORFLOW_PACKAGE}" \
        --extras "${EXTRAS}" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt

# Editable, as `make serve` installs it: the service finds models/ from its source tree, so the image keeps the
# repository layout under /app and the same code paths run in and out of the container. No training/: the service
# imports only app/ (what it shares with training lives in app/core; tests/core/test_import_graph.py checks it).
COPY README.md LICENSE ./
COPY app ./app
RUN pip install --no-cache-dir --no-deps -e .


# Final stage: the venv and the sources, no compiler, no pip cache, no build context.
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="brain-tumor-service" \
      org.opencontainers.image.description="Brain-tumor detection and segmentation on 2-D MRI slices. Research use only." \
      org.opencontainers.image.licenses="MIT"

# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it; the code and models stay root-owned and read-only.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    MODEL_DIR=/app/models \
    HEARTBEAT_FILE=/tmp/brain-tumor-heartbeat.json

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
# Models last: a re-export rebuilds one small layer only.
COPY models /app/models

WORKDIR /app
USER 10001:10001
EXPOSE 8000

# Whichever daemon the image runs: serve is ready once /health/ready answers 200 (both models loaded and warm);
# dicom-node and pacs-sync once their heartbeat (HEARTBEAT_FILE) says ready, and while it is renewed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["brain-tumor", "health"]

# The command `make serve` runs. Exec form, so uvicorn is PID 1 and gets SIGTERM for a graceful shutdown; CMD apart
# from ENTRYPOINT so the same image runs other subcommands (`docker run IMAGE pacs-sync --orthanc URL`).
ENTRYPOINT ["brain-tumor"]
CMD ["serve"]
