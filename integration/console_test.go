package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chromiumPath finds Debian's chromium; without it the browser tests skip
// with the reason, or fail under CI=true (.ci/run installs it).
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is not installed (apt-get install -y chromium; .ci/run does it) and CI=true")
	}
	t.Skip("chromium is not installed (apt-get install -y chromium): the console's browser tests need it")
	return ""
}

// browser starts a headless Chromium with a fresh profile and returns a tab.
func browser(t *testing.T, path string) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
	}
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	if _, err := chromedp.Run(ctx, chromedp.Navigate("about:blank")); err != nil { // starts the browser
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// page is one console tab and where its screenshots go.
type page struct {
	t     *testing.T
	ctx   context.Context
	shots string
}

func evalJS[T any](p *page, js string) (T, error) {
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](js))
}

// waitFor polls the page until the JavaScript expression js is true.
func (p *page) waitFor(max time.Duration, what, js string) time.Duration {
	p.t.Helper()
	start := time.Now()
	for {
		ok, err := evalJS[bool](p, "!!("+js+")")
		if err == nil && ok {
			return time.Since(start)
		}
		if time.Since(start) > max {
			body, _ := evalJS[string](p, `document.querySelector("main").innerText`)
			p.shot("failed-" + strings.ReplaceAll(what, " ", "-"))
			p.t.Fatalf("the page did not show %s within %s (err %v); it shows:\n%s", what, max, err, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// shot saves a screenshot of the whole page (or, with viewport, of what
// the screen shows).
func (p *page) shot(name string, viewport ...bool) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 20*time.Second)
	defer cancel()
	act := chromedp.FullScreenshot(100)
	if len(viewport) > 0 && viewport[0] {
		act = chromedp.CaptureScreenshot()
	}
	buf, err := chromedp.Run(ctx, act)
	if err != nil {
		p.t.Errorf("screenshot %s: %v", name, err)
		return ""
	}
	path := filepath.Join(p.shots, name+".png")
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		p.t.Errorf("write %s: %v", path, err)
	}
	p.t.Logf("screenshot: %s", path)
	return path
}

func (p *page) click(js string) {
	p.t.Helper()
	ok, err := evalJS[bool](p, `(() => { const b = `+js+`; if (!b) return false; b.click(); return true })()`)
	if err != nil || !ok {
		p.t.Fatalf("click %s: %v (found %v)", js, err, ok)
	}
}

func submitFlow(t *testing.T, addr, flow string) string {
	t.Helper()
	resp, err := client.Post(addr+"/api/flows", "application/json", strings.NewReader(fmt.Sprintf(`{"flow": %q}`, flow)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct{ ID string }
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("submit %s: %s %v", flow, resp.Status, err)
	}
	return r.ID
}

// TestConsoleInChromium opens the console of a 3-node cluster of real
// clusterbus processes in headless Chromium and checks what an operator
// sees and does there. Screenshots go to a temp dir named in the log.
func TestConsoleInChromium(t *testing.T) {
	needBinary(t)
	chrome := chromiumPath(t)
	shots, err := os.MkdirTemp("", "clusterbus-console-screenshots-")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots are saved in %s", shots)

	// A payment service that fails until the test fixes it.
	var fixed atomic.Bool
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !fixed.Load() {
			http.Error(w, "payment provider unavailable", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte(`{"captured": true}`))
	}))
	t.Cleanup(svc.Close)
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("greet.yaml", "flow: greet\nversion: 1\nsteps:\n  - name: hello\n    wait: 20ms\n  - name: goodbye\n    wait: 20ms\n")
	write("charge.yaml", "flow: charge\nversion: 1\nsteps:\n  - name: reserve\n    wait: 20ms\n  - name: capture\n    http:\n      method: POST\n      url: "+svc.URL+"/capture\n      timeout: 2s\n")

	brokerURL := startNATSBroker(t)
	args := []string{"--flows.dir", dir, "--flows.max-attempts", "2"}
	n1 := startNode(t, brokerURL, "console", "n1", args...)
	n2 := startNode(t, brokerURL, "console", "n2", args...)
	n3 := startNode(t, brokerURL, "console", "n3", args...)
	waitUntil(t, 30*time.Second, "n1 sees n1 lead n1, n2, n3", func() bool { return n1.sees("n1", "n1", "n2", "n3") })

	p := &page{t: t, ctx: browser(t, chrome), shots: shots}
	if _, err := chromedp.Run(p.ctx, chromedp.EmulateViewport(1280, 800)); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(p.ctx, chromedp.Navigate(n1.addr+"/")); err != nil {
		t.Fatalf("open %s: %v", n1.addr, err)
	}
	row := func(id string) string { return `document.querySelector('#members tr[data-key="` + id + `"]')` }
	cellText := func(id string, col int) string {
		return fmt.Sprintf(`(%s?.cells[%d]?.textContent || "")`, row(id), col)
	}

	t.Run("ShowsThreeMembersAndTheLead", func(t *testing.T) {
		p.t = t
		p.waitFor(10*time.Second, "3 active members with n1 as the lead",
			`document.querySelectorAll("#members tbody tr").length === 3 && `+cellText("n1", 4)+` === "★ lead" && `+
				`["n1","n2","n3"].every(id => `+`document.querySelector('#members tr[data-key="'+id+'"]')?.cells[6].textContent === "active")`)
		if addr, err := evalJS[string](p, cellText("n2", 2)); err != nil || addr != n2.addr {
			t.Errorf("n2's HTTP address on the page: %q, want %q (%v)", addr, n2.addr, err)
		}
		p.waitFor(5*time.Second, "no alerts", `document.querySelector("#alerts li.ok")`)
		p.waitFor(5*time.Second, "no sideways scrolling at 1280x800", `document.documentElement.scrollWidth <= window.innerWidth + 1`)
		p.shot("1-three-nodes")
	})

	t.Run("UpdatesWithinTwoSecondsWhenANodeIsKilled", func(t *testing.T) {
		p.t = t
		n3.kill()
		killed := time.Now()
		var nodeSaw, pageSaw time.Duration
		for nodeSaw == 0 || pageSaw == 0 {
			if time.Since(killed) > 20*time.Second {
				t.Fatalf("after 20s: node saw n3 unreachable after %s, page after %s", nodeSaw, pageSaw)
			}
			if nodeSaw == 0 {
				if c, err := n1.cluster(); err == nil {
					for _, m := range c.Nodes {
						if m.ID == "n3" && m.State == "unreachable" {
							nodeSaw = time.Since(killed)
						}
					}
				}
			}
			if pageSaw == 0 {
				if s, err := evalJS[string](p, cellText("n3", 6)); err == nil && strings.HasPrefix(s, "unreachable") {
					pageSaw = time.Since(killed)
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("n3 killed: n1's view marked it unreachable after %s, the page showed it after %s (failure timeout %s)",
			nodeSaw.Round(time.Millisecond), pageSaw.Round(time.Millisecond), failureTimeout)
		if lag := pageSaw - nodeSaw; lag > 2*time.Second {
			t.Errorf("the page showed the kill %s after the node knew it; want within 2s", lag)
		}
		p.waitFor(5*time.Second, "an alert about n3", `[...document.querySelectorAll("#alerts li.error")].some(li => li.textContent.includes("n3") && li.textContent.includes("unreachable"))`)
		p.shot("2-after-kill")
	})

	t.Run("ShowsASubmittedExecutionFinishing", func(t *testing.T) {
		p.t = t
		id := submitFlow(t, n2.addr, "greet")
		ex := `document.querySelector('#executions tr[data-key="` + id + `"]')`
		p.waitFor(20*time.Second, "execution "+id+" completed", ex+`?.cells[2].textContent === "completed"`)
	})

	t.Run("ReplaysADeadLetteredExecution", func(t *testing.T) {
		p.t = t
		id := submitFlow(t, n1.addr, "charge")
		dead := `document.querySelector('#dead tr[data-key="` + id + `"]')`
		p.waitFor(60*time.Second, "execution "+id+" dead-lettered with its reason", dead+`?.cells[3].textContent.includes("503")`)
		p.click(dead + `.cells[0].querySelector("button")`)
		p.waitFor(10*time.Second, "the failed step with its node, attempt and error",
			`[...document.querySelectorAll("#steps tbody tr")].some(tr => tr.cells[1].textContent === "capture" && tr.cells[4].textContent === "dead-lettered" && /n[12]/.test(tr.cells[3].textContent) && tr.cells[2].textContent === "2" && tr.cells[6].textContent.includes("503"))`)
		p.shot("3-failed-step")
		fixed.Store(true)
		p.click(dead + `.cells[5].querySelector("button")`)
		ex := `document.querySelector('#executions tr[data-key="` + id + `"]')`
		p.waitFor(30*time.Second, "the replayed execution completed", ex+`?.cells[2].textContent === "completed" && !`+dead)
		msg, _ := evalJS[string](p, `document.getElementById("action-result").textContent`)
		t.Logf("action result: %s", msg)
	})

	t.Run("UsableAtPhoneWidth", func(t *testing.T) {
		p.t = t
		if _, err := chromedp.Run(p.ctx, chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile, chromedp.EmulateScale(2))); err != nil {
			t.Fatal(err)
		}
		p.waitFor(5*time.Second, "no sideways scrolling of the page itself", `document.documentElement.scrollWidth <= window.innerWidth + 1`)
		p.shot("4-phone", true)
	})
}
