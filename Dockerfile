# A clusterbus node image. Build: docker build -t clusterbus .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/clusterbus ./cmd/clusterbus

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/clusterbus /usr/local/bin/clusterbus
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/clusterbus"]
CMD ["node", "--http", ":8080"]
