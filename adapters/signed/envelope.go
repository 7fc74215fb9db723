package signed

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
)

// The envelope is the body of every message the decorator sends:
//
//	magic "CBS1" | MAC (32 bytes) | signed part
//
// and the signed part is
//
//	kind (1 byte: 'T' topic, 'Q' queue, 'R' retained value) | cluster | destination | sender |
//	incarnation (8) | sequence (8) | sent (8, unix ns) | ID | key |
//	header count (2) | name, value ... | body (the rest)
//
// where strings are a 2-byte big-endian length and the bytes. The MAC is
// HMAC-SHA256 of macDomain followed by the signed part, exactly as received,
// so the receiver needs no canonical re-encoding. Headers are sorted by name
// when encoding.
const (
	magic     = "CBS1"
	macSize   = sha256.Size
	macDomain = "clusterbus/signed/v1\n"
	// fixedOverhead is the envelope size without its strings, headers and
	// body.
	fixedOverhead = len(magic) + macSize + 1 + 3*2 + 3*8 + 2*2 + 2

	kindTopic byte = 'T'
	kindQueue byte = 'Q'
	// kindRetained signs a value kept by an adapters.Retainer: the
	// destination is the log, the envelope's key the value's key.
	kindRetained byte = 'R'

	maxHeaders = 256
)

// envelope is a decoded message.
type envelope struct {
	Kind        byte
	Cluster     string
	Destination string
	Sender      string
	Incarnation uint64
	Seq         uint64
	Sent        int64
	ID, Key     string
	Headers     map[string]string
	Body        []byte

	mac    []byte // as received
	signed []byte // the signed part, as received
}

var (
	errNotEnvelope = errors.New("not a signed envelope")
	errTruncated   = errors.New("truncated envelope")
)

// encode builds the envelope of e, signed with key.
func encode(key []byte, e *envelope) ([]byte, error) {
	n := fixedOverhead + len(e.Cluster) + len(e.Destination) + len(e.Sender) + len(e.ID) + len(e.Key) + len(e.Body)
	names := make([]string, 0, len(e.Headers))
	for k, v := range e.Headers {
		names = append(names, k)
		n += 4 + len(k) + len(v)
	}
	if len(names) > maxHeaders {
		return nil, fmt.Errorf("%d headers, at most %d", len(names), maxHeaders)
	}
	sort.Strings(names)
	buf := make([]byte, len(magic)+macSize, n)
	copy(buf, magic)
	var err error
	put := func(s string) {
		if len(s) > 0xffff {
			err = fmt.Errorf("field of %d bytes, at most 65535", len(s))
		}
		buf = binary.BigEndian.AppendUint16(buf, uint16(len(s)))
		buf = append(buf, s...)
	}
	buf = append(buf, e.Kind)
	put(e.Cluster)
	put(e.Destination)
	put(e.Sender)
	buf = binary.BigEndian.AppendUint64(buf, e.Incarnation)
	buf = binary.BigEndian.AppendUint64(buf, e.Seq)
	buf = binary.BigEndian.AppendUint64(buf, uint64(e.Sent))
	put(e.ID)
	put(e.Key)
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(names)))
	for _, k := range names {
		put(k)
		put(e.Headers[k])
	}
	buf = append(buf, e.Body...)
	if err != nil {
		return nil, err
	}
	copy(buf[len(magic):], mac(key, buf[len(magic)+macSize:]))
	return buf, nil
}

func mac(key, signed []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(macDomain))
	h.Write(signed)
	return h.Sum(nil)
}

// decode parses an envelope without checking its MAC. It never panics and
// allocates no more than the input's size.
func decode(b []byte) (*envelope, error) {
	if len(b) < len(magic) || string(b[:len(magic)]) != magic {
		return nil, errNotEnvelope
	}
	if len(b) < fixedOverhead {
		return nil, errTruncated
	}
	e := &envelope{mac: b[len(magic) : len(magic)+macSize], signed: b[len(magic)+macSize:]}
	r := reader{b: e.signed}
	e.Kind = r.byte()
	e.Cluster = r.str()
	e.Destination = r.str()
	e.Sender = r.str()
	e.Incarnation = r.u64()
	e.Seq = r.u64()
	e.Sent = int64(r.u64())
	e.ID = r.str()
	e.Key = r.str()
	nh := int(r.u16())
	if r.err == nil && nh > 0 {
		if nh > maxHeaders {
			return nil, fmt.Errorf("%d headers, at most %d", nh, maxHeaders)
		}
		e.Headers = make(map[string]string, nh)
		for range nh {
			k, v := r.str(), r.str()
			if r.err != nil {
				break
			}
			if _, dup := e.Headers[k]; dup {
				return nil, fmt.Errorf("header %q twice", k)
			}
			e.Headers[k] = v
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	if e.Kind != kindTopic && e.Kind != kindQueue && e.Kind != kindRetained {
		return nil, fmt.Errorf("kind %q: want T, Q or R", e.Kind)
	}
	e.Body = r.b[r.off:]
	return e, nil
}

// verify reports whether one of keys made the envelope's MAC.
func (e *envelope) verify(keys [][]byte) bool {
	for _, k := range keys {
		if hmac.Equal(e.mac, mac(k, e.signed)) {
			return true
		}
	}
	return false
}

type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) need(n int) bool {
	if r.err != nil {
		return false
	}
	if len(r.b)-r.off < n {
		r.err = errTruncated
		return false
	}
	return true
}

func (r *reader) byte() byte {
	if !r.need(1) {
		return 0
	}
	r.off++
	return r.b[r.off-1]
}

func (r *reader) u16() uint16 {
	if !r.need(2) {
		return 0
	}
	r.off += 2
	return binary.BigEndian.Uint16(r.b[r.off-2:])
}

func (r *reader) u64() uint64 {
	if !r.need(8) {
		return 0
	}
	r.off += 8
	return binary.BigEndian.Uint64(r.b[r.off-8:])
}

func (r *reader) str() string {
	n := int(r.u16())
	if !r.need(n) {
		return ""
	}
	r.off += n
	return string(r.b[r.off-n : r.off])
}
