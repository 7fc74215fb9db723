package adaptertest

import "github.com/clusterbus/clusterbus/adapters"

// FuzzMessage builds a message from fuzz inputs and reports whether it is
// one the contract accepts (adapters.ValidateMessage with no size limits),
// so that codec fuzz targets can check that such a message survives
// encode and decode unchanged.
func FuzzMessage(id, key, hname, hval string, body []byte) (adapters.Message, bool) {
	m := adapters.Message{ID: id, Key: key, Body: body}
	if hname != "" {
		m.Headers = map[string]string{hname: hval}
	}
	if m.Body == nil {
		m.Body = []byte{}
	}
	return m, adapters.ValidateMessage("fuzz", m, adapters.Capabilities{}) == nil
}

// SameMessage reports whether two messages carry the same ID, key, headers
// and body (nil and empty are the same).
func SameMessage(a, b adapters.Message) bool {
	if a.ID != b.ID || a.Key != b.Key || string(a.Body) != string(b.Body) || len(a.Headers) != len(b.Headers) {
		return false
	}
	for k, v := range a.Headers {
		if w, ok := b.Headers[k]; !ok || w != v {
			return false
		}
	}
	return true
}
