package main

import (
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// cliTokenFile is --admin-token-file of the CLI commands that call a node's
// API.
var cliTokenFile string

// addAdminTokenFlag gives cmd --admin-token-file; the token comes from it,
// else from env CLUSTERBUS_ADMIN_TOKEN, as for the node.
func addAdminTokenFlag(cmd *cobra.Command) {
	cmd.Flags().StringVar(&cliTokenFile, "admin-token-file", "", "file holding the admin API token (or env CLUSTERBUS_ADMIN_TOKEN)")
}

// cliToken is the admin token the CLI sends, "" for none.
func cliToken() (string, error) {
	if cliTokenFile != "" {
		return readTokenFile(cliTokenFile)
	}
	return strings.TrimSpace(os.Getenv("CLUSTERBUS_ADMIN_TOKEN")), nil
}

// bearer adds the admin token to every request of the CLI.
type bearer struct{ next http.RoundTripper }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	tok, err := cliToken()
	if err != nil {
		return nil, err
	}
	if tok != "" && r.Header.Get("Authorization") == "" {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+tok)
	}
	return b.next.RoundTrip(r)
}

var httpClient = &http.Client{Timeout: 10 * time.Second, Transport: bearer{http.DefaultTransport}}
