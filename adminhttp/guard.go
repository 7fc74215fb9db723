package adminhttp

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strings"
	"time"
)

// DefaultMaxBody is Config.MaxBody when it is zero: 1 MiB.
const DefaultMaxBody = 1 << 20

// Timeouts of the server (see Server).
const (
	ReadHeaderTimeout = 10 * time.Second
	ReadTimeout       = 30 * time.Second
	WriteTimeout      = 60 * time.Second
	IdleTimeout       = 120 * time.Second
)

// Config is what Guard enforces.
type Config struct {
	// Token returns the admin token ("" for none). A function, so that a
	// caller can change it while the server runs.
	Token func() string
	// AllowRemoteWithoutToken serves mutating requests to any client when
	// no token is set. Off, they are served only to loopback clients.
	AllowRemoteWithoutToken bool
	// ProtectReads makes read endpoints (except health, livez, readyz)
	// need what mutating ones need.
	ProtectReads bool
	// AdminOnly answers mutating requests 404: they are served on another
	// listener.
	AdminOnly bool
	// MaxBody bounds request bodies (413 above). Zero means DefaultMaxBody.
	MaxBody int64
}

// alwaysOpen are the paths a load balancer calls.
var alwaysOpen = map[string]bool{"/ha/health": true, "/livez": true, "/readyz": true}

// IsMutating reports whether method changes something.
func IsMutating(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return false
	}
	return true
}

// Guard wraps h with the checks in the package doc.
func Guard(h http.Handler, cfg Config) http.Handler {
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	if cfg.Token == nil {
		cfg.Token = func() string { return "" }
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mutating := IsMutating(r.Method)
		if alwaysOpen[r.URL.Path] && !mutating {
			h.ServeHTTP(w, r)
			return
		}
		if mutating && cfg.AdminOnly {
			deny(w, http.StatusNotFound, "mutating requests are served on the admin listener only")
			return
		}
		if mutating || cfg.ProtectReads {
			if code, msg := authorize(r, cfg); code != 0 {
				if code == http.StatusUnauthorized {
					w.Header().Set("WWW-Authenticate", `Bearer realm="clusterbus"`)
				}
				deny(w, code, msg)
				return
			}
		}
		if mutating {
			mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
			if err != nil || mt != "application/json" {
				deny(w, http.StatusUnsupportedMediaType, "want Content-Type: application/json")
				return
			}
		}
		if r.ContentLength > cfg.MaxBody {
			deny(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body of %d bytes; at most %d", r.ContentLength, cfg.MaxBody))
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			// Read it here, bounded, so that every handler sees a body
			// that fits and a too large one is 413 whatever the handler.
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, cfg.MaxBody))
			var mbe *http.MaxBytesError
			switch {
			case errors.As(err, &mbe):
				deny(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", cfg.MaxBody))
				return
			case err != nil:
				deny(w, http.StatusBadRequest, "reading the body: "+err.Error())
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		h.ServeHTTP(w, r)
	})
}

// authorize returns 0 when r may proceed, else the status and why.
func authorize(r *http.Request, cfg Config) (int, string) {
	token := cfg.Token()
	if token == "" {
		if cfg.AllowRemoteWithoutToken || isLoopback(r.RemoteAddr) {
			return 0, ""
		}
		return http.StatusForbidden, "no admin token is configured: this endpoint answers loopback clients only (set CLUSTERBUS_ADMIN_TOKEN or --admin-token-file)"
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return http.StatusUnauthorized, "want Authorization: Bearer <admin token>"
	}
	// Hash both so the comparison takes the same time whatever the lengths.
	a, b := sha256.Sum256([]byte(strings.TrimSpace(got))), sha256.Sum256([]byte(token))
	if subtle.ConstantTimeCompare(a[:], b[:]) != 1 {
		return http.StatusUnauthorized, "wrong admin token"
	}
	return 0, ""
}

func isLoopback(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func deny(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	fmt.Fprintf(w, "{\"error\":%q}\n", msg)
}
