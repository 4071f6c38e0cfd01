# The voxel-trainer image: voxel-trainer with CUDA LibTorch assembled from the PyPI wheels of
# torch and its nvidia-* dependencies (scripts/libtorch.sh cuda), running as user 65532. The
# operator starts it as `voxel-trainer train ...`; the host needs the NVIDIA driver and device
# plugin, the image brings the CUDA runtime libraries.
#
#   docker build -f docker/trainer.Dockerfile -t REGISTRY/voxel-trainer:0.1.0 .
#
# Not built by the tests or CI (no container engine there); see the README's Limitations.
FROM rust:1.95-bookworm AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ENV VOXEL_CACHE=/cache VOXEL_LIBTORCH_VARIANT=cuda LIBTORCH_BYPASS_VERSION_CHECK=1
RUN LIBTORCH="$(bash scripts/libtorch.sh cuda)" \
 && export LIBTORCH LD_LIBRARY_PATH="$LIBTORCH/lib" \
 && cargo build --release --locked -p voxel-trainer --bin voxel-trainer \
 && install -D target/release/voxel-trainer /out/bin/voxel-trainer \
 && cp -a "$LIBTORCH/lib" /out/lib

FROM debian:bookworm-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 voxel && useradd --uid 65532 --gid 65532 --no-create-home voxel
COPY --from=build /out/lib /opt/libtorch/lib
COPY --from=build /out/bin/voxel-trainer /usr/local/bin/voxel-trainer
ENV LD_LIBRARY_PATH=/opt/libtorch/lib \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 65532:65532
# The trainer pod mounts an emptyDir at /tmp; the root file system stays read-only.
ENV HOME=/tmp
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/voxel-trainer"]
