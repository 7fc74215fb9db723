package signed

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
)

// MinKeyLen is the shortest key accepted, in bytes.
const MinKeyLen = 16

// KeyRing holds the cluster keys: the first signs, every one verifies. It is
// safe for concurrent use; Set swaps the keys at once, so a rotation never
// leaves a moment with no key.
type KeyRing struct {
	keys atomic.Pointer[[][]byte]
}

// NewKeyRing returns a ring holding keys (see Set).
func NewKeyRing(keys ...[]byte) (*KeyRing, error) {
	r := &KeyRing{}
	if err := r.Set(keys...); err != nil {
		return nil, err
	}
	return r, nil
}

// Set replaces the keys. It refuses an empty list and keys shorter than
// MinKeyLen, and keeps the old keys then.
func (r *KeyRing) Set(keys ...[]byte) error {
	if len(keys) == 0 {
		return fmt.Errorf("signed: no key given")
	}
	cp := make([][]byte, len(keys))
	for i, k := range keys {
		if len(k) < MinKeyLen {
			return fmt.Errorf("signed: key %d of %d is %d bytes; want at least %d", i+1, len(keys), len(k), MinKeyLen)
		}
		cp[i] = bytes.Clone(k)
	}
	r.keys.Store(&cp)
	return nil
}

// Keys returns the keys, the signing key first.
func (r *KeyRing) Keys() [][]byte {
	if p := r.keys.Load(); p != nil {
		return *p
	}
	return nil
}

// Len is the number of keys.
func (r *KeyRing) Len() int { return len(r.Keys()) }

// ParseKeys splits a comma-separated list (as in CLUSTERBUS_CLUSTER_KEY),
// trimming spaces and skipping empty entries.
func ParseKeys(s string) [][]byte {
	var out [][]byte
	for _, k := range strings.Split(s, ",") {
		if k = strings.TrimSpace(k); k != "" {
			out = append(out, []byte(k))
		}
	}
	return out
}

// ReadKeyFile reads one key per line; blank lines and lines starting with
// '#' are skipped, surrounding spaces trimmed. The first key signs.
func ReadKeyFile(path string) ([][]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 4096), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, []byte(line))
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no key (one key per line, '#' comments)", path)
	}
	return out, nil
}
