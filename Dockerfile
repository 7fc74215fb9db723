# A clusterbus node image. Build: docker build --build-arg VERSION=1.2.3 -t clusterbus .
FROM golang:1.26 AS build
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/clusterbus ./cmd/clusterbus \
 && mkdir -p /out/data

# distroless "nonroot": no shell, runs as uid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/clusterbus /usr/local/bin/clusterbus
# The node's directory (node ID; the embedded NATS store without --broker),
# writable by the non-root user; mount a volume here.
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/clusterbus"]
CMD ["node", "--http", ":8080", "--data-dir", "/data"]
