# miko-stream: one image for every service (`run` processor, `serve` indexer + API, `produce`, `tail`, ...).
#   docker build -t miko-stream .
#   docker run --rm miko-stream --help
# Build args: PULL_MODELS=0 skips baking the default SmolLM2 model into the image (then mount a cache volume
# and run `miko-stream models pull` once, or point MIKO_LLM at an OpenAI-compatible server).

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/miko
ENV PATH=/opt/miko/bin:$PATH
# torch first, pinned to the CPU build: any other version pulls a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY miko_stream ./miko_stream
COPY graph ./graph
COPY consumers ./consumers
COPY index ./index
COPY prompts ./prompts
RUN pip install .

FROM python:3.11-slim-bookworm
# libGL/glib: OpenCV, which the OCR captioner (rapidocr) loads.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 miko
COPY --from=build /opt/miko /opt/miko
ENV PATH=/opt/miko/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    MIKO_CACHE_DIR=/home/miko/.cache/miko-stream \
    MIKO_INDEX_DIR=/data/index
RUN mkdir -p /data/index /home/miko/.cache/miko-stream && chown -R miko:miko /data /home/miko/.cache
USER miko
WORKDIR /home/miko
ARG PULL_MODELS=1
RUN if [ "$PULL_MODELS" = "1" ]; then miko-stream models pull; fi
ENTRYPOINT ["miko-stream"]
CMD ["run"]
