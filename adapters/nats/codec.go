package nats

import (
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/clusterbus/clusterbus/adapters"
)

// encode builds a NATS message. User headers keep their names; ID and key
// travel in reserved headers.
func encode(subject string, m adapters.Message) *nats.Msg {
	msg := nats.NewMsg(subject)
	for k, v := range m.Headers {
		if hasPrefixFold(k, "nats") {
			// The server acts on Nats-* headers; keep user ones apart.
			k = hdrUserPrefix + k
		}
		msg.Header[k] = []string{escapeValue(v)}
	}
	if m.ID != "" {
		msg.Header[hdrID] = []string{escapeValue(m.ID)}
	}
	if m.Key != "" {
		msg.Header[hdrKey] = []string{escapeValue(m.Key)}
	}
	msg.Data = m.Body
	return msg
}

// decode is the inverse of encode. On a dead-letter queue the reason header
// is kept.
type headerMsg interface {
	Headers() nats.Header
	Data() []byte
}

func decode(raw any, keepReason bool) adapters.Message {
	var hdr nats.Header
	var data []byte
	switch v := raw.(type) {
	case *nats.Msg:
		hdr, data = v.Header, v.Data
	case headerMsg:
		hdr, data = v.Headers(), v.Data()
	}
	m := adapters.Message{Body: data}
	for k, vs := range hdr {
		if len(vs) == 0 {
			continue
		}
		v := unescapeValue(vs[0])
		switch {
		case k == hdrID:
			m.ID = v
		case k == hdrKey:
			m.Key = v
		case strings.HasPrefix(k, hdrUserPrefix):
			setHeader(&m, k[len(hdrUserPrefix):], v)
		case k == adapters.HeaderDeadLetterReason && keepReason:
			setHeader(&m, k, v)
		case hasPrefixFold(k, adapters.ReservedHeaderPrefix),
			strings.HasPrefix(k, "Nats-"), strings.HasPrefix(k, "NATS-"):
		default:
			setHeader(&m, k, v)
		}
	}
	return m
}

// hasPrefixFold reports whether s starts with the lower-case ASCII prefix
// in any case, as strings.HasPrefix(strings.ToLower(s), prefix) does for
// the prefixes used here, without the copy ToLower makes (decode runs it
// on every header of every item).
func hasPrefixFold(s, prefix string) bool {
	if len(s) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}

func setHeader(m *adapters.Message, k, v string) {
	if m.Headers == nil {
		m.Headers = map[string]string{}
	}
	m.Headers[k] = v
}

// NATS trims leading blanks from header values; a value that starts with a
// blank or the escape byte '~' is sent with a '~' in front.
func escapeValue(v string) string {
	if v != "" && (v[0] == ' ' || v[0] == '\t' || v[0] == '~') {
		return "~" + v
	}
	return v
}

func unescapeValue(v string) string {
	if v != "" && v[0] == '~' {
		return v[1:]
	}
	return v
}
