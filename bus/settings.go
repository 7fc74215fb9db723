package bus

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/catalog"
)

// SettingsCatalog is the name of the catalog that holds the cluster
// settings: topic "<cluster>-catalog-settings", file
// <DataDir>/catalog-settings.json.
const SettingsCatalog = "settings"

// Settings are the cluster-wide key/value settings: every node holds the
// same copy (feature flags, a base URL that flows read from CEL, ...). A
// Set on any node reaches every other node within moments (and a node that
// was away on its next start or digest exchange); concurrent Sets of one
// key resolve to the later write (hybrid logical clock, then node ID) on
// every node. They are kept in the node's DataDir and, where the broker
// retains (NATS), in the broker. Keys match catalog.KeyPattern; values are
// strings of at most 64 KiB. Get the node's with Node.Settings.
type Settings struct {
	c *catalog.Catalog
}

// Setting is one cluster setting.
type Setting struct {
	Key   string `json:"key"`
	Value string `json:"value"`
	// Updated is when it was last set (the writer's clock), By the node
	// that set it.
	Updated time.Time `json:"updated"`
	By      string    `json:"by"`
}

// MaxSettingValue bounds a setting's value.
const MaxSettingValue = 64 << 10

func settingOf(e catalog.Entry) Setting {
	return Setting{Key: e.Key, Value: string(e.Value), Updated: e.At, By: e.Rev.Node}
}

// Get returns the value of key and whether it is set.
func (s *Settings) Get(key string) (string, bool) {
	e, ok := s.c.Get(key)
	return string(e.Value), ok
}

// Lookup returns key's setting with its metadata.
func (s *Settings) Lookup(key string) (Setting, bool) {
	e, ok := s.c.Get(key)
	if !ok {
		return Setting{}, false
	}
	return settingOf(e), true
}

// Set sets key to value on every node. It returns once the value is
// applied here, kept in the data dir and the broker where it retains, and
// published; errors match adapters.ErrInvalidArgument (bad key),
// adapters.ErrTooLarge or an adapters error from the broker (then the
// value is set here and reaches the others later).
func (s *Settings) Set(ctx context.Context, key, value string) (Setting, error) {
	if len(value) > MaxSettingValue {
		return Setting{}, adapters.Errorf(adapters.ErrTooLarge, "bus: set setting "+key, "value of %d bytes, limit %d", len(value), MaxSettingValue)
	}
	e, err := s.c.Put(ctx, key, []byte(value))
	if err != nil && e.Key == "" {
		return Setting{}, err
	}
	return settingOf(e), err
}

// Delete unsets key on every node.
func (s *Settings) Delete(ctx context.Context, key string) error {
	_, err := s.c.Delete(ctx, key)
	return err
}

// List returns the settings whose key starts with prefix, sorted by key.
func (s *Settings) List(prefix string) []Setting {
	es := s.c.List(prefix)
	out := make([]Setting, len(es))
	for i, e := range es {
		out[i] = settingOf(e)
	}
	return out
}

// Map returns every setting as key → value (a fresh map), the shape CEL
// expressions see.
func (s *Settings) Map() map[string]string {
	es := s.c.List("")
	out := make(map[string]string, len(es))
	for _, e := range es {
		out[e.Key] = string(e.Value)
	}
	return out
}

// Watch calls fn, from one goroutine and in order, for every change of a
// setting on this node, local or remote: deleted is true when the key was
// unset (value is then ""). The returned func stops it.
func (s *Settings) Watch(fn func(key, value string, deleted bool)) (stop func()) {
	return s.c.Watch(func(e catalog.Entry) { fn(e.Key, string(e.Value), e.Deleted) })
}

// Sync asks the other nodes for their settings now; see catalog.Sync.
func (s *Settings) Sync(ctx context.Context) error { return s.c.Sync(ctx) }

// Catalog is the catalog underneath, for what Settings does not cover.
func (s *Settings) Catalog() *catalog.Catalog { return s.c }

// Settings returns the cluster settings, started and stopped with the node.
func (n *Node) Settings() *Settings { return n.settings }

// SetSettingRequest is the body of PUT /api/settings/{key}.
type SetSettingRequest struct {
	Value string `json:"value"`
}

// mountSettings adds the settings routes to mux (mutating ones are
// admin-authenticated by the HTTP front, adminhttp.Guard):
//
//	GET    /api/settings        {"settings": [Setting...]}
//	GET    /api/settings/{key}  Setting, 404 if unset
//	PUT    /api/settings/{key}  {"value": "..."} → Setting
//	DELETE /api/settings/{key}  204
func (n *Node) mountSettings(mux *http.ServeMux) {
	writeJSON := func(w http.ResponseWriter, code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(code)
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
	}
	errCode := func(err error) int {
		switch {
		case errors.Is(err, adapters.ErrInvalidArgument):
			return http.StatusBadRequest
		case errors.Is(err, adapters.ErrTooLarge):
			return http.StatusRequestEntityTooLarge
		case errors.Is(err, catalog.ErrFull):
			return http.StatusInsufficientStorage
		}
		return http.StatusBadGateway
	}
	mux.HandleFunc("GET /api/settings", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, struct {
			Settings []Setting `json:"settings"`
		}{n.settings.List(r.URL.Query().Get("prefix"))})
	})
	mux.HandleFunc("GET /api/settings/{key...}", func(w http.ResponseWriter, r *http.Request) {
		s, ok := n.settings.Lookup(r.PathValue("key"))
		if !ok {
			http.Error(w, "bus: setting "+r.PathValue("key")+" is not set", http.StatusNotFound)
			return
		}
		writeJSON(w, http.StatusOK, s)
	})
	mux.HandleFunc("PUT /api/settings/{key...}", func(w http.ResponseWriter, r *http.Request) {
		var req SetSettingRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, MaxSettingValue*2+1024)).Decode(&req); err != nil {
			http.Error(w, `bus: want {"value": "..."}`, http.StatusBadRequest)
			return
		}
		s, err := n.settings.Set(r.Context(), r.PathValue("key"), req.Value)
		if err != nil {
			http.Error(w, err.Error(), errCode(err))
			return
		}
		writeJSON(w, http.StatusOK, s)
	})
	mux.HandleFunc("DELETE /api/settings/{key...}", func(w http.ResponseWriter, r *http.Request) {
		if err := n.settings.Delete(r.Context(), r.PathValue("key")); err != nil {
			http.Error(w, err.Error(), errCode(err))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}
