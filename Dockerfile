# syntax=docker/dockerfile:1
# pete-serve images, two targets:
#   runtime (default): CPU-only torch, pinned runtime deps from requirements.lock (the same file
#     `make serve` / `make test` install from), the project with its bundled checkpoint.
#   slim: no torch: ONNX Runtime (PETE_BACKEND=onnx) serving the bundled checkpoint exported by
#     pete-export in a build stage; deps from requirements-slim.lock.
#
#   make image / make image-slim   (docker when its daemon answers, else podman/buildah: deploy/image/build.sh)
#   docker build -t pete-serve:0.1.0 .            docker build --target slim -t pete-serve:0.1.0-slim .
#   docker run --rm -p 8000:8000 -e PETE_WORKERS=2 -e PETE_TORCH_THREADS=1 pete-serve:0.1.0
#
# Build arguments: TORCH_PIP_ARGS says where pip finds torch 2.13.0's CPU build (default: the
# PyTorch CPU index; deploy/image/build.sh passes a local wheel where that index is unreachable);
# PIP_CERT, when given, is the CA bundle pip trusts (a host that intercepts TLS). The healthcheck
# needs the docker image format (podman/buildah: --format docker).

############################ builder ############################
FROM python:3.11-slim AS builder

ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
ARG PIP_CERT

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# 1. torch, CPU build, on its own (its deps are pinned in the lock file).
# 2. the pinned runtime closure. Layers stay cached until requirements.lock changes.
COPY requirements.lock ./
# $TORCH_PIP_ARGS holds pip options (word-split on purpose), torch itself is pinned:
# hadolint ignore=SC2086,DL3013
RUN pip install --no-cache-dir --no-deps $TORCH_PIP_ARGS "torch==2.13.0" \
 && pip install --no-cache-dir -r requirements.lock

# 3. the project itself (no deps: everything it needs came from the lock), checkpoint included
#    as package data; fail the build if the checkpoint did not make it into the package.
COPY pyproject.toml README.md ./
COPY app ./app
COPY model ./model
RUN pip install --no-cache-dir --no-deps . \
 && pip check \
 && python -c "import pathlib, model; d = pathlib.Path(model.__file__).parent / 'checkpoints' / 'default'; missing = [n for n in ('config.json', 'model.safetensors', 'tokenizer.json') if not (d / n).is_file()]; assert not missing, f'bundled checkpoint incomplete in {d}: {missing}'"

############################ export (slim's graphs) ############################
FROM builder AS export

ARG PIP_CERT
ARG ONNX_EXPORT_PACKAGES="onnx==1.23.2 onnxscript==0.7.2"
# $ONNX_EXPORT_PACKAGES is a list of pinned requirements (word-split on purpose):
# hadolint ignore=SC2086,DL3013
RUN pip install --no-cache-dir $ONNX_EXPORT_PACKAGES \
 && pete-export /opt/venv/lib/python3.11/site-packages/model/checkpoints/default --out /export

############################ slim builder ############################
FROM python:3.11-slim AS slim-builder

ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

COPY requirements-slim.lock ./
RUN pip install --no-cache-dir -r requirements-slim.lock

# The project without its dependencies (torch is one: never installed here), then the exported
# checkpoint in place of the torch weights; fail the build if torch crept in or the export is missing.
COPY pyproject.toml README.md ./
COPY app ./app
COPY model ./model
COPY --from=export /export /tmp/export
# What serving never imports goes too: the Hugging Face hub client (tokenizers' download helper;
# Tokenizer.from_file needs none of it), ONNX Runtime's C-API library (35 MB; the Python module links
# its own copy) and its Python tooling (transformers optimizer, quantization, tools), and
# pip/setuptools; the build fails unless both graphs still load.
RUN pip install --no-cache-dir --no-deps . \
 && ckpt=/opt/venv/lib/python3.11/site-packages/model/checkpoints/default \
 && rm -f "$ckpt/model.safetensors" \
 && cp /tmp/export/model.onnx /tmp/export/model_int8.onnx /tmp/export/nli_head.onnx /tmp/export/onnx_export.json "$ckpt/" \
 && rm -rf /tmp/export \
 && pip uninstall --yes huggingface-hub hf-xet fsspec tqdm filelock \
 && ort=/opt/venv/lib/python3.11/site-packages/onnxruntime \
 && rm -rf "$ort"/capi/libonnxruntime.so.* "$ort/transformers" "$ort/quantization" "$ort/tools" "$ort/datasets" \
 && python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch in the slim image'; import app.main, app.onnx_runner, tokenizers" \
 && python -c "import sys, onnxruntime as o; [o.InferenceSession(p) for p in sys.argv[1:]]" "$ckpt/model.onnx" "$ckpt/model_int8.onnx" \
 && pip uninstall --yes pip setuptools

############################ slim base: the Python base, pruned ############################
# What a server never reads goes: manuals, documentation, message translations, the standard
# library's test suite, IDLE, tkinter, lib2to3 and ensurepip, the base's own pip/setuptools/wheel
# (the venv needs none). The slim stage copies what is left as one layer (files deleted in a later
# layer would still count in the image).
FROM python:3.11-slim AS slim-base

# hadolint ignore=DL3027
RUN groupadd --system --gid 10001 pete \
 && useradd --system --uid 10001 --gid pete --home-dir /home/pete --create-home --shell /usr/sbin/nologin pete \
 && if dpkg-query --show python3-pip >/dev/null 2>&1; then \
        apt-get purge --yes --auto-remove python3-pip python3-setuptools python3-wheel; \
    else python -m pip uninstall --yes pip setuptools wheel; fi \
 && rm -rf /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/locale/* /usr/share/python-wheels \
           /var/lib/apt/lists/* /var/cache/debconf/*-old /root/.cache \
 && for lib in /usr/lib/python3.11 /usr/local/lib/python3.11; do \
        rm -rf "$lib/test" "$lib/idlelib" "$lib/tkinter" "$lib/turtledemo" "$lib/lib2to3" "$lib/ensurepip"; \
    done \
 && python -c "import ssl, sqlite3, ctypes, json, asyncio, encodings.idna"

############################ slim ############################
FROM scratch AS slim

LABEL org.opencontainers.image.title="pete-serve-slim" \
      org.opencontainers.image.description="pete-serve on ONNX Runtime, no torch (similarity, NLI, embeddings)" \
      org.opencontainers.image.version="0.1.0"

# The whole pruned base, on purpose: deleting in a layer above python:3.11-slim would not shrink the image.
# hadolint ignore=DL3067
COPY --from=slim-base / /
COPY --from=slim-builder /opt/venv /opt/venv

# FROM scratch keeps none of the base image's settings: PATH and LANG as python:3.11-slim sets them.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PETE_BACKEND=onnx \
    PETE_MODEL_PATH=/opt/venv/lib/python3.11/site-packages/model/checkpoints/default \
    PETE_HOST=0.0.0.0 \
    PETE_PORT=8000 \
    PETE_WORKERS=2 \
    PETE_TORCH_THREADS=1 \
    PETE_SHUTDOWN_TIMEOUT_S=20

WORKDIR /home/pete
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PETE_PORT', '8000') + '/healthz', timeout=4)"]
# PETE_TORCH_THREADS sets ONNX Runtime's intra-op threads; OMP_NUM_THREADS as in the runtime target.
CMD ["sh", "-c", "export OMP_NUM_THREADS=\"${PETE_TORCH_THREADS}\"; exec pete-serve"]

############################ runtime (default target) ############################
FROM python:3.11-slim AS runtime

LABEL org.opencontainers.image.title="pete-serve" \
      org.opencontainers.image.description="REST inference service for a PETE-embedded sentence encoder (similarity, NLI, embeddings)" \
      org.opencontainers.image.version="0.1.0"

RUN groupadd --system --gid 10001 pete \
 && useradd --system --uid 10001 --gid pete --home-dir /home/pete --create-home --shell /usr/sbin/nologin pete

COPY --from=builder /opt/venv /opt/venv

# The checkpoint ships inside the installed `model` package (see pyproject.toml package-data).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PETE_MODEL_PATH=/opt/venv/lib/python3.11/site-packages/model/checkpoints/default \
    PETE_HOST=0.0.0.0 \
    PETE_PORT=8000 \
    PETE_WORKERS=2 \
    PETE_TORCH_THREADS=1 \
    PETE_SHUTDOWN_TIMEOUT_S=20

WORKDIR /home/pete
USER 10001:10001

EXPOSE 8000

# No curl in slim images: a stdlib one-liner; urlopen raises (exit 1) on errors and non-2xx.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PETE_PORT', '8000') + '/healthz', timeout=4)"]

# Exec form through sh so the env settings expand and pete-serve becomes PID 1 (gets SIGTERM, drains,
# exits 0). pete-serve starts PETE_WORKERS uvicorn processes (their /metrics merged when more than
# one), each limited to PETE_TORCH_THREADS intra-op threads (OMP/MKL get the same value so BLAS
# pools agree); PETE_SHUTDOWN_TIMEOUT_S bounds the drain.
CMD ["sh", "-c", "export OMP_NUM_THREADS=\"${PETE_TORCH_THREADS}\" MKL_NUM_THREADS=\"${PETE_TORCH_THREADS}\"; exec pete-serve"]
