package adapters

import "context"

// Retainer is implemented by brokers that keep the last value per key of a
// named log durably, so that state survives the restart of every client
// (the catalog package keeps its entries there). It is optional: check for
// it with a type assertion. log is a name (see ValidateName); keys are
// opaque strings of 1 to 1024 bytes, which the adapter encodes as its broker
// needs.
type Retainer interface {
	// Retain stores value as key's last value in log, durably once it
	// returns nil; the log is created if needed.
	Retain(ctx context.Context, log, key string, value []byte) error
	// Retained returns every key's last value in log; an empty map if the
	// log does not exist.
	Retained(ctx context.Context, log string) (map[string][]byte, error)
}
