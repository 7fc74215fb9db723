package promreg

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers c with reg and returns the collector to use: c, or the
// one already registered under the same descriptors (which must be of c's
// type). A nil reg returns c unregistered. Any other registration error is
// a programming error (conflicting descriptors) and panics.
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
			panic(fmt.Sprintf("promreg: a collector of another type is registered under the same name: %T", are.ExistingCollector))
		}
		panic(err)
	}
	return c
}
