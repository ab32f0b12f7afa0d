# The one image for the operator and its workloads: `ferry operator`, `ferry relay`,
# `ferry consumer` and the tools (`ferry dlq`, `ferry outbox migrate`) are the same binary.
#
#   docker build -t ghcr.io/ferry-dev/ferry:0.1.0 .
#
# The runtime image has no shell and runs as the non-root user 65532, matching the chart's and
# the workloads' restricted pod security context (read-only root filesystem included: Ferry
# writes nothing outside /tmp, which the workloads mount as an emptyDir).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked && strip target/release/ferry

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/ferry /usr/local/bin/ferry
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ferry"]
