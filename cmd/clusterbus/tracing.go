package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/clusterbus/clusterbus/adapters/traced"
)

// setupTracing installs the process's tracer provider. Trace context is
// always made and carried (trace IDs in logs, traceparent in messages and on
// http steps); spans are exported only when the standard variables name an
// OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, http/protobuf), and OTEL_SDK_DISABLED
// or OTEL_TRACES_EXPORTER=none turn that off. The exporter reads the other
// OTEL_EXPORTER_OTLP_* variables (headers, timeout, certificate) itself;
// the SDK reads OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES and
// OTEL_TRACES_SAMPLER.
func setupTracing(ctx context.Context, nodeID string, log *slog.Logger) (shutdown func(context.Context) error, err error) {
	otel.SetTextMapPropagator(traced.Propagator)
	endpoint := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") + os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
	export := endpoint != "" && !strings.EqualFold(os.Getenv("OTEL_SDK_DISABLED"), "true") &&
		!strings.EqualFold(os.Getenv("OTEL_TRACES_EXPORTER"), "none")
	attrs := []attribute.KeyValue{attribute.String("service.instance.id", nodeID)}
	if os.Getenv("OTEL_SERVICE_NAME") == "" {
		attrs = append(attrs, attribute.String("service.name", "clusterbus"))
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(attrs...))
	if err != nil {
		res = resource.Default()
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if export {
		for _, k := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
			if p := os.Getenv(k); p != "" && p != "http/protobuf" {
				return nil, fmt.Errorf("%s=%q: this build exports OTLP over http/protobuf only", k, p)
			}
		}
		exp, err := otlptracehttp.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT: %w", err)
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
		log.Info("tracing: exporting spans over OTLP", "endpoint", endpoint)
	} else {
		// IDs without recording: trace context still flows.
		opts = append(opts, sdktrace.WithSampler(sdktrace.NeverSample()))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	otel.SetTracerProvider(tp)
	return tp.Shutdown, nil
}
