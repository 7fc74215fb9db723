// Package tcpproxy is a TCP proxy for tests: it forwards every connection
// it accepts to one target, can cut every link and refuse new ones until
// restored (a partition), and can hold every chunk it forwards for a fixed
// delay (a far-away server). The adapter, natsserver and integration tests
// share it; it is not part of the product.
package tcpproxy
