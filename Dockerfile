# fedsigma's SuperExec image: Flower's official flwr/superexec with fedsigma and its
# dependencies (the CPU build of torch, numpy, pydantic, ...) installed, so that the
# ServerApp and the ClientApps of a submitted run can import them. docker-compose.yml
# builds it once, as fedsigma/superexec:0.1.0, for every SuperExec service and the Fleet
# gate (server/fleet_gate.py; the SuperLink and SuperNodes use Flower's images as they
# are). It ships the app only: shared, server, client and scenarios. Build alone:
#   docker build -t fedsigma/superexec:0.1.0 .
# CI (.ci/compose-test) builds it on a local stand-in for flwr/superexec (FLWR_IMAGE)
# with both package indexes pointed at a wheelhouse served on 127.0.0.1.
ARG FLWR_IMAGE=flwr/superexec
ARG FLWR_VERSION=1.42.0
FROM ${FLWR_IMAGE}:${FLWR_VERSION}

# torch's CPU wheels (no CUDA libraries: ~10× smaller) from PyTorch's own index
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# the rest from pip's default index, or from a mirror given as a build arg
ARG PIP_INDEX_URL
RUN python -m pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0

# fedsigma itself; flwr is already in the image (and the Simulation Engine's Ray is not needed)
WORKDIR /tmp/fedsigma
COPY --chown=app:app pyproject.toml README.md ./
COPY --chown=app:app shared ./shared
COPY --chown=app:app server ./server
COPY --chown=app:app client ./client
COPY --chown=app:app scenarios ./scenarios
RUN sed -i 's/"flwr\[simulation\]==/"flwr==/' pyproject.toml \
    && python -m pip install --no-cache-dir . \
    && rm -rf /tmp/fedsigma

# The ServerApp's working directory: out-dir runs/<name> lands in /app/runs (a volume)
WORKDIR /app
ENTRYPOINT ["flower-superexec"]
