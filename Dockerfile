# syntax=docker/dockerfile:1
#
# tenantsync's container image: a release build with the locked dependency
# set, then a small Debian runtime (glibc, OpenSSL 3, zlib, CA certificates;
# libgit2 and libssh2 are compiled into the binary) running as uid 65532
# with a read-only root file system in mind: the only writable paths it
# needs are XDG_CACHE_HOME (the Git remote's clone) and /tmp, volumes in
# deploy/deployment.yaml.
#
#   docker build --build-arg GIT_COMMIT="$(git rev-parse HEAD)" -t tenantsync .
#   docker run --rm tenantsync --version
#
# The build context has no .git (.dockerignore): the commit shown by
# --version comes from the GIT_COMMIT build argument, `unknown` without it.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
# The base images, by tag here; a release pins them by digest (README,
# Install: `--build-arg BUILD_IMAGE=rust@sha256:... RUNTIME_IMAGE=debian@sha256:...`),
# so the bytes built from are the bytes reviewed.
ARG BUILD_IMAGE=rust:${RUST_VERSION}-${DEBIAN_RELEASE}
ARG RUNTIME_IMAGE=debian:${DEBIAN_RELEASE}-slim

FROM ${BUILD_IMAGE} AS build
# git2 links the system OpenSSL, found with pkg-config. Versions are left to
# the Debian release: pinned ones vanish from the mirror with each security
# update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG GIT_COMMIT=unknown
# build.rs reads TENANTSYNC_GIT_COMMIT for `tenantsync --version`.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    TENANTSYNC_GIT_COMMIT="${GIT_COMMIT}" cargo build --release --locked --bin tenantsync \
    && install -D -m 0755 target/release/tenantsync /out/tenantsync

FROM ${RUNTIME_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 65532 tenantsync \
    && useradd --system --uid 65532 --gid 65532 --home-dir /home/tenantsync \
        --create-home --shell /usr/sbin/nologin tenantsync \
    && install -d -o 65532 -g 65532 /var/cache/tenantsync
COPY --from=build /out/tenantsync /usr/local/bin/tenantsync
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="tenantsync" \
      org.opencontainers.image.description="Declarative GitOps reconciler for healthcare-API tenant workspaces on Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${GIT_COMMIT}"
# HOME holds ~/.ssh/known_hosts for ssh remotes (mount it there).
ENV HOME=/home/tenantsync \
    XDG_CACHE_HOME=/var/cache/tenantsync
USER 65532:65532
# 8080: probes, /status, /metrics; 8081: POST /hooks/git (deploy/'s webhookListen).
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/tenantsync"]
CMD ["run", "--config", "/etc/tenantsync/tenantsync.yaml"]
