// Package adminhttp is the HTTP front of a clusterbus node: the server (with
// read, write and idle timeouts, optional TLS, an optional separate admin
// listener) and the Guard middleware that every request passes through,
// whatever registered the route, so endpoints added later are covered
// without doing anything.
//
// # What Guard enforces
//
//   - /ha/health, /livez and /readyz are always open (load balancers and
//     orchestrators call them without credentials).
//   - Read requests (GET, HEAD) are open, unless Config.ProtectReads: then
//     they need what a mutating request needs.
//   - Every other method (POST, PUT, PATCH, DELETE, ...) is mutating. With a
//     token configured it needs "Authorization: Bearer <token>", compared in
//     constant time (401 otherwise). Without a token it is served only to
//     loopback clients (403 otherwise) unless Config.AllowRemoteWithoutToken
//     says the operator chose to trust the network.
//   - A mutating request must have Content-Type application/json (415
//     otherwise), so that a page in a browser cannot post to the node with a
//     simple cross-site form (a JSON request from another origin needs a
//     CORS preflight, which the node never grants).
//   - A request body larger than Config.MaxBody is answered 413 before the
//     handler runs.
//   - With Config.AdminOnly (the main listener when a separate admin
//     listener is configured) mutating requests get 404 there.
//
// # What it does not do
//
// It authenticates the caller as "holds the admin token", nothing finer:
// there are no users or roles. Without TLS the token crosses the network in
// clear; use --tls-cert/--tls-key, or a separate admin listener bound to a
// private address.
package adminhttp
