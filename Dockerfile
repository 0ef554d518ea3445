# mfvan on CPU: `mfvan run` and its stages, ONNX Runtime for the network.
# UNVERIFIED: no Docker daemon on the machines this was written on (see docs/deploy.md).
#   docker build -t mfvan .
#   docker run --rm -v $PWD/deploy/ops/mfvan.toml:/etc/mfvan/mfvan.toml:ro -v mfvan-data:/var/lib/mfvan \
#       -p 127.0.0.1:9100:9100 mfvan
FROM python:3.11-slim

# The CPU build of torch (the default one on PyPI is the multi-GB CUDA build)
RUN pip install --no-cache-dir torch --index-url https://download.pytorch.org/whl/cpu

WORKDIR /src
COPY pyproject.toml README.md ./
COPY model model
COPY kernels kernels
COPY stream stream
COPY deploy deploy
RUN pip install --no-cache-dir . && rm -rf /src

RUN useradd --system --create-home mfvan && mkdir -p /run/mfvan /var/lib/mfvan \
    && chown mfvan /run/mfvan /var/lib/mfvan && chmod 0700 /var/lib/mfvan
USER mfvan
WORKDIR /home/mfvan
# the spot stage's kernels compiled once, into ~/.cache/mfvan/numba (site-packages is not
# the mfvan user's to write): containers start in seconds, not after a 20 s compile
RUN mfvan warm-up
# metrics: the run's one endpoint, 9100 (every stage's series); events if published on tcp
EXPOSE 9100 5560
VOLUME /var/lib/mfvan
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/ready', timeout=3)"
# inside a container, /metrics must listen beyond its loopback for Prometheus to reach it;
# publish the ports on the host's loopback only (-p 127.0.0.1:...), faces are biometric data
ENV MFVAN_METRICS_HOST=0.0.0.0
ENTRYPOINT ["mfvan"]
CMD ["run", "--config", "/etc/mfvan/mfvan.toml", "--runtime-dir", "/run/mfvan"]
