# hql-ray on Ray's CUDA image, from the lock: every package at the version CI tests (installed with --no-deps,
# nothing resolved), PyTorch's CUDA build, then hql-ray itself (its configs, language files and sample inside).
#
#   docker build -t YOUR-REGISTRY/hql-ray:0.1.0 .
#   docker run --gpus all YOUR-REGISTRY/hql-ray:0.1.0 hql-ray train        # the demo, from the image's own files
#
# The KubeRay RayJob in deploy/kuberay/rayjob.yaml runs this image (docs/cluster.md).
# Ray's image and the lock agree: Ray 2.60.0 (.ci/constraints.txt), Python 3.11 (what .ci/lock resolves for).
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cu128
FROM ${RAY_IMAGE}

# PyTorch is not in the lock (CI installs its CPU build): the CUDA build of the same version, from PyTorch's index.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128

WORKDIR /home/ray/hql-ray
COPY --chown=ray:users .ci/requirements.lock .ci/requirements.lock
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}" \
 && pip install --no-cache-dir --no-deps -r .ci/requirements.lock

COPY --chown=ray:users . .
RUN pip install --no-cache-dir --no-deps . \
 && hql-ray --version
