package adminhttp_test

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adminhttp"
)

// backend records whether a handler ran and echoes the body's size.
func backend(ran *int) http.Handler {
	mux := http.NewServeMux()
	for _, p := range []string{"GET /ha/health", "GET /livez", "GET /readyz", "GET /api/cluster", "GET /metrics"} {
		mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) { *ran++; io.WriteString(w, "ok") })
	}
	for _, p := range []string{"POST /api/flows", "POST /api/cache/clear", "POST /api/cluster/down", "DELETE /api/x", "PUT /api/x", "PATCH /api/x"} {
		mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
			*ran++
			b, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			w.WriteHeader(http.StatusAccepted)
			io.WriteString(w, strings.Repeat("x", len(b)%7))
		})
	}
	return mux
}

type req struct {
	method, path, remote, ctype, auth string
	body                              []byte
	chunked                           bool
}

func do(h http.Handler, q req) *httptest.ResponseRecorder {
	var body io.Reader = http.NoBody
	if q.body != nil {
		body = bytes.NewReader(q.body)
	}
	r := httptest.NewRequest(q.method, q.path, body)
	if q.chunked {
		r.ContentLength = -1
	}
	if q.remote != "" {
		r.RemoteAddr = q.remote
	} else {
		r.RemoteAddr = "203.0.113.9:4444"
	}
	if q.ctype != "" {
		r.Header.Set("Content-Type", q.ctype)
	}
	if q.auth != "" {
		r.Header.Set("Authorization", q.auth)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestGuardWithToken(t *testing.T) {
	var ran int
	h := adminhttp.Guard(backend(&ran), adminhttp.Config{Token: func() string { return "s3cret-token" }})
	json := "application/json"
	big := bytes.Repeat([]byte("a"), 3<<20)
	cases := []struct {
		name string
		q    req
		want int
	}{
		{"health open", req{method: "GET", path: "/ha/health"}, 200},
		{"livez open", req{method: "GET", path: "/livez"}, 200},
		{"readyz open", req{method: "GET", path: "/readyz"}, 200},
		{"reads open by default", req{method: "GET", path: "/api/cluster"}, 200},
		{"submit without token", req{method: "POST", path: "/api/flows", ctype: json, body: []byte(`{}`)}, 401},
		{"cache clear without token, even from loopback", req{method: "POST", path: "/api/cache/clear", remote: "127.0.0.1:1", ctype: json, body: []byte(`{}`)}, 401},
		{"wrong token", req{method: "POST", path: "/api/flows", ctype: json, auth: "Bearer nope", body: []byte(`{}`)}, 401},
		{"basic auth is not bearer", req{method: "POST", path: "/api/flows", ctype: json, auth: "Basic czNjcmV0LXRva2Vu", body: []byte(`{}`)}, 401},
		{"route added later is covered", req{method: "POST", path: "/api/cluster/down", ctype: json}, 401},
		{"DELETE covered", req{method: "DELETE", path: "/api/x", ctype: json}, 401},
		{"PUT covered", req{method: "PUT", path: "/api/x", ctype: json}, 401},
		{"PATCH covered", req{method: "PATCH", path: "/api/x", ctype: json}, 401},
		{"text/plain (CSRF form)", req{method: "POST", path: "/api/flows", ctype: "text/plain", auth: "Bearer s3cret-token", body: []byte(`{}`)}, 415},
		{"form", req{method: "POST", path: "/api/flows", ctype: "application/x-www-form-urlencoded", auth: "Bearer s3cret-token", body: []byte(`a=b`)}, 415},
		{"no content type", req{method: "POST", path: "/api/flows", auth: "Bearer s3cret-token", body: []byte(`{}`)}, 415},
		{"3 MB flow input", req{method: "POST", path: "/api/flows", ctype: json, auth: "Bearer s3cret-token", body: big}, 413},
		{"3 MB chunked", req{method: "POST", path: "/api/flows", ctype: json, auth: "Bearer s3cret-token", body: big, chunked: true}, 413},
		{"authorized", req{method: "POST", path: "/api/flows", ctype: "application/json; charset=utf-8", auth: "Bearer s3cret-token", body: []byte(`{"flow":"f"}`)}, 202},
	}
	for _, c := range cases {
		before := ran
		w := do(h, c.q)
		if w.Code != c.want {
			t.Errorf("%s: %d %s, want %d", c.name, w.Code, strings.TrimSpace(w.Body.String()), c.want)
		}
		if c.want >= 400 && ran != before {
			t.Errorf("%s: the handler ran", c.name)
		}
		if w.Code == 401 && w.Header().Get("WWW-Authenticate") == "" {
			t.Errorf("%s: 401 without WWW-Authenticate", c.name)
		}
	}
}

func TestGuardWithoutToken(t *testing.T) {
	var ran int
	json := "application/json"
	h := adminhttp.Guard(backend(&ran), adminhttp.Config{})
	if w := do(h, req{method: "POST", path: "/api/flows", remote: "127.0.0.1:5", ctype: json, body: []byte(`{}`)}); w.Code != 202 {
		t.Errorf("loopback v4: %d", w.Code)
	}
	if w := do(h, req{method: "POST", path: "/api/flows", remote: "[::1]:5", ctype: json, body: []byte(`{}`)}); w.Code != 202 {
		t.Errorf("loopback v6: %d", w.Code)
	}
	if w := do(h, req{method: "POST", path: "/api/flows", ctype: json, body: []byte(`{}`)}); w.Code != 403 {
		t.Errorf("remote without a token: %d, want 403", w.Code)
	}
	if w := do(h, req{method: "POST", path: "/api/flows", remote: "127.0.0.1:5", ctype: "text/plain", body: []byte(`{}`)}); w.Code != 415 {
		t.Errorf("loopback text/plain: %d, want 415", w.Code)
	}
	open := adminhttp.Guard(backend(&ran), adminhttp.Config{AllowRemoteWithoutToken: true})
	if w := do(open, req{method: "POST", path: "/api/flows", ctype: json, body: []byte(`{}`)}); w.Code != 202 {
		t.Errorf("remote, opted out: %d", w.Code)
	}
}

func TestGuardProtectReadsAndAdminOnly(t *testing.T) {
	var ran int
	tok := func() string { return "tok-tok-tok" }
	h := adminhttp.Guard(backend(&ran), adminhttp.Config{Token: tok, ProtectReads: true})
	for _, p := range []string{"/api/cluster", "/metrics"} {
		if w := do(h, req{method: "GET", path: p}); w.Code != 401 {
			t.Errorf("GET %s without token: %d, want 401", p, w.Code)
		}
		if w := do(h, req{method: "GET", path: p, auth: "Bearer tok-tok-tok"}); w.Code != 200 {
			t.Errorf("GET %s with token: %d", p, w.Code)
		}
	}
	for _, p := range []string{"/ha/health", "/livez", "/readyz"} {
		if w := do(h, req{method: "GET", path: p}); w.Code != 200 {
			t.Errorf("GET %s: %d, want 200 (always open)", p, w.Code)
		}
	}
	main := adminhttp.Guard(backend(&ran), adminhttp.Config{Token: tok, AdminOnly: true})
	if w := do(main, req{method: "POST", path: "/api/flows", ctype: "application/json", auth: "Bearer tok-tok-tok", body: []byte(`{}`)}); w.Code != 404 {
		t.Errorf("mutating on the main listener with an admin listener: %d, want 404", w.Code)
	}
}

// TestServerServesAfterRejections: a real server with the guard keeps
// serving after 401, 415 and 413 answers.
func TestServerServesAfterRejections(t *testing.T) {
	var ran int
	srv, err := adminhttp.Start(backend(&ran), adminhttp.ServerConfig{Addr: "127.0.0.1:0",
		Guard: adminhttp.Config{Token: func() string { return "tok-tok-tok" }}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(t.Context()) })
	base := "http://" + srv.Addrs()[0]
	post := func(ctype, auth string, body []byte) int {
		r, _ := http.NewRequest("POST", base+"/api/flows", bytes.NewReader(body))
		r.Header.Set("Content-Type", ctype)
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := post("application/json", "", []byte(`{}`)); c != 401 {
		t.Errorf("%d, want 401", c)
	}
	if c := post("text/plain", "Bearer tok-tok-tok", []byte(`{}`)); c != 415 {
		t.Errorf("%d, want 415", c)
	}
	if c := post("application/json", "Bearer tok-tok-tok", bytes.Repeat([]byte(" "), 3<<20)); c != 413 {
		t.Errorf("%d, want 413", c)
	}
	resp, err := http.Get(base + "/ha/health")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("health after rejections: %v %v", err, resp)
	}
	resp.Body.Close()
	if c := post("application/json", "Bearer tok-tok-tok", []byte(`{}`)); c != 202 {
		t.Errorf("%d, want 202", c)
	}
}

// TestServerCutsOffATrickledBody: a client that sends its body a byte at a
// time is cut off at ReadTimeout (here 400 ms) without its request reaching
// the handler, and the server keeps answering others meanwhile.
func TestServerCutsOffATrickledBody(t *testing.T) {
	var ran int
	srv, err := adminhttp.Start(backend(&ran), adminhttp.ServerConfig{Addr: "127.0.0.1:0", ReadTimeout: 400 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(t.Context()) })
	conn, err := net.Dial("tcp", srv.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	_, err = io.WriteString(conn, "POST /api/cache/clear HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
	if err != nil {
		t.Fatal(err)
	}
	cut := make(chan time.Duration, 1)
	go func() {
		for range 1000 {
			if _, err := conn.Write([]byte(" ")); err != nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		cut <- time.Since(start)
	}()
	// Meanwhile other requests are served.
	resp, err := http.Get("http://" + srv.Addrs()[0] + "/ha/health")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("health while a body trickles: %v %v", err, resp)
	}
	resp.Body.Close()
	// The server answers the trickler (an error for its unread body, or
	// nothing) and closes the connection: its next writes fail.
	select {
	case d := <-cut:
		if d > 5*time.Second {
			t.Fatalf("the trickling client was cut off after %v, want about 400ms", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a body trickled a byte every 50ms held the connection for 10s (ReadTimeout 400ms)")
	}
	if ran != 1 { // the health request only: the guard reads a body whole before the handler
		t.Fatalf("handlers ran %d times, want 1 (the trickled request must never reach its handler)", ran)
	}
}
