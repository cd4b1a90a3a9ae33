# One image for the API, the dashboard and training. CPU torch by default; for CUDA:
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#                --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
# (the CUDA base needs python3.11 and python3.11-venv from its package manager).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_EXTRA_INDEX_URL=${TORCH_INDEX_URL} \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    LQ_DATA_DIR=/data \
    PATH=/app/.venv/bin:$PATH

WORKDIR /app
COPY . /app
# The same install as the README's commands: ./run.sh install
RUN ./run.sh install

VOLUME ["/data"]
EXPOSE 8000 8501
ENTRYPOINT ["lightning-quant"]
# Other entry points: "serve --host 0.0.0.0", "dashboard --host 0.0.0.0 --api-url URL",
# "bench --task digits ..." (training), or python -m benchmarks.sweep.
CMD ["demo", "--host", "0.0.0.0"]
