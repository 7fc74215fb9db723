// Package console serves the operator's console: one page at "/" that
// shows the cluster live and acts on it.
//
// The page is plain HTML, CSS and JavaScript embedded in the binary (no
// CDN, no build step). It reads GET /api/console/events, a server-sent
// event stream of the snapshot (the same document as GET /api/console):
// members with their HTTP address, state and reason, version, uptime, last
// heartbeat and clock skew; the lead term history; lead duties with their
// last run and next slot; queue counts (package queuestats; where the
// broker cannot tell, the page says so); recent flow executions, each
// with its steps (GET /api/flows/{id}); dead-lettered executions with
// their reason; and alerts (not serving and why, broker disconnected,
// members not active, clock skew, rejected coordination messages,
// subscription gaps, dead letters, cache-clear rate). One producer
// builds the snapshot every 250ms while at least one page is open and
// pushes it to every open page only when it changed, so the cost does not
// grow with the number of pages beyond the writes.
//
// Actions are POSTs with JSON bodies: replay a dead-lettered execution
// (POST /api/executions/{id}/replay, package flows), clear a cache region
// (POST /api/cache/clear, package bus), take a member out of service
// (POST /api/members/{id}/drain: the local node drains; for another member
// the request, with its Authorization header, is forwarded to the HTTP
// address that member announces in its heartbeat) and, on a member shown
// unreachable, down it (POST /api/cluster/down {"node": ID}, package bus:
// it leaves the membership at once; the page shows the node's refusal of
// a live or unknown member). The page keeps an admin
// token the operator enters in sessionStorage and sends it as
// "Authorization: Bearer <token>" with every action; it never stores it
// elsewhere.
package console
