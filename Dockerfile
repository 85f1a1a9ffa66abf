# taskworker in a container: a static binary on an empty base, run as a non-root user.
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t taskworker .
#   docker run -p 7946:7946 -p 7946:7946/udp -p 7947:7947 -p 7948:7948 -v tw-data:/data taskworker
#
# The default command starts a node with ACLs on (run `taskworker acl bootstrap` against it first).
# Join one with: docker run ... taskworker agent --acl --join HOST:7946, and the join token in
# TASKWORKER_JOIN_TOKEN or TASKWORKER_JOIN_TOKEN_FILE (never on the command line).
# SIGTERM drains the node for up to --drain-timeout (30s), but `docker stop` kills after 10s:
# stop with `docker stop -t 60` (docker run --stop-timeout 60, compose stop_grace_period: 60s).

# The Go version of go.mod. Pin by digest too (golang:1.26.8@sha256:...) for a reproducible build.
FROM golang:1.26.8 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/taskworker . \
	&& mkdir -p /out/data /out/home /out/tmp \
	&& chown 65532:65532 /out/data /out/home \
	&& chmod 0700 /out/data /out/home \
	&& chmod 1777 /out/tmp

FROM scratch
# CA certificates, for outbound HTTPS the node makes (a JWKS URL, an OTLP collector).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/taskworker /taskworker
# The data dir (raft log, snapshots, keys; mount a volume here), a home for the CLI's pointer to
# it, and a temporary directory for command-backed tasks.
COPY --from=build /out/data /data
COPY --from=build /out/home /home/taskworker
COPY --from=build /out/tmp /tmp
ENV HOME=/home/taskworker TASKWORKER_DATA_DIR=/data
USER 65532:65532
VOLUME /data
# Gossip (TCP and UDP; also the join exchange and internode calls), raft, HTTP API.
EXPOSE 7946/tcp 7946/udp 7947/tcp 7948/tcp
STOPSIGNAL SIGTERM
ENTRYPOINT ["/taskworker"]
CMD ["agent", "--http-addr", "0.0.0.0:7948", "--acl"]
