// Package sbtest starts the Azure Service Bus test server of
// adapters/azservicebus/testdata/sbserver (an AMQP 1.0 server on Node.js
// and rhea that speaks the subset of Service Bus the adapter uses, plus an
// HTTP admin endpoint for entity management). The azservicebus adapter's
// tests and the multi-process integration tests share it; the adapter
// itself never imports it.
//
//	s, err := sbtest.Start(sbtest.Options{})
//	if err != nil {
//		t.Skip(err) // or t.Fatal under CI=true
//	}
//	defer s.Stop()
//	b, err := adapters.Open(ctx, s.URL())
//
// # What you get
//
// A server on 127.0.0.1 (AMQP and admin ports free ones unless given),
// its connection string and azservicebus:// URL. Start runs `npm ci` in
// the server directory first if node_modules is missing. The server keeps
// its state in a file: Restart (SIGTERM, then a start on the same ports)
// keeps queues, topics and messages; Crash (SIGKILL, then a start with an
// empty state) loses them. It exits when its standard input closes, so a
// test binary that dies leaves no server behind.
//
// # What it is not
//
// It is not Azure Service Bus nor Microsoft's emulator: it implements what
// the adapter's conformance suite exercises, and nothing is checked
// against the real service here. Start returns an error saying why when
// Node.js or npm is missing or npm ci fails; callers skip with that reason
// unless CI=true, where they fail.
package sbtest
