# The voxel operator image: the `voxel` binary alone (it does not link LibTorch) on a
# distroless base, running as the non-root user 65532.
#
#   docker build -f docker/operator.Dockerfile -t REGISTRY/voxel-operator:0.1.0 .
#
# Not built by the tests or CI (no container engine there); see the README's Limitations.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The operator crate alone: no LibTorch is needed to build it.
RUN cargo build --release --locked -p voxel-operator --bin voxel \
 && install -D target/release/voxel /out/voxel

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/voxel /usr/local/bin/voxel
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/voxel"]
CMD ["operator"]
