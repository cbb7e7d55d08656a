# sigil: release build in a Rust image, run from a slim image as an unprivileged user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin sigil

FROM debian:bookworm-slim
# A fixed uid, so that the volume holding the CA keys is owned the same in every replica.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/sigil --create-home sigil
COPY --from=build /src/target/release/sigil /usr/local/bin/sigil
USER sigil
ENV SIGIL_DATA_DIR=/var/lib/sigil \
    SIGIL_LISTEN=0.0.0.0:8443 \
    SIGIL_LOG_FORMAT=json
VOLUME /var/lib/sigil
EXPOSE 8443
ENTRYPOINT ["sigil"]
CMD ["serve"]
