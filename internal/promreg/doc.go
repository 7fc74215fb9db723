// Package promreg registers Prometheus collectors the way every clusterbus
// package does: a nil Registerer registers nothing, and a collector that is
// already registered (a second engine, catalog or worker on the same
// registry) is shared instead of failing.
package promreg
