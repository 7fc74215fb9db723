package mem

import (
	"context"
	"net/url"
	"strings"
	"sync"

	"github.com/clusterbus/clusterbus/adapters"
)

var (
	namedMu sync.Mutex
	named   = map[string]*Server{}
)

func init() {
	adapters.Register("mem", func(_ context.Context, u *url.URL) (adapters.Broker, error) {
		name := u.Host
		if name == "" {
			name = u.Opaque
		}
		if strings.Trim(u.Path, "/") != "" || u.RawQuery != "" {
			return nil, adapters.Errorf(adapters.ErrInvalidArgument, "mem: open",
				"URL %q: want mem://NAME (a process-wide in-memory server), no path or query", adapters.Redact(u.String()))
		}
		return Named(name).Client(), nil
	})
}

// Named returns the process-wide Server called name (an empty name is
// "default"), creating it with the real clock on first use. The URL
// mem://NAME opens a client of it, so every adapters.Open of the same URL in
// one process shares one in-memory broker.
func Named(name string) *Server {
	if name == "" {
		name = "default"
	}
	namedMu.Lock()
	defer namedMu.Unlock()
	s, ok := named[name]
	if !ok {
		s = NewServer()
		named[name] = s
	}
	return s
}
