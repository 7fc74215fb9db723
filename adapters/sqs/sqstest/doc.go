// Package sqstest starts fauxqs, an SQS/SNS emulator on Node.js pinned in
// adapters/sqs/testdata/fauxqs, for tests. The sqs adapter's tests and the
// multi-process integration tests share it; the adapter itself never
// imports it.
//
//	s, err := sqstest.Start(0)
//	if err != nil {
//		t.Skip(err) // or t.Fatal under CI=true
//	}
//	defer s.Stop()
//	for _, kv := range s.Env() { ... } // credentials for the AWS SDK
//	b, err := adapters.Open(ctx, s.URL())
//
// # What you get
//
// A fauxqs process listening on 127.0.0.1:PORT (a free port unless one is
// given) that answers /health, its sqs:// URL, and the environment the AWS
// SDK needs to sign requests (fauxqs accepts any credentials). Start runs
// `npm ci` in the fauxqs directory first if node_modules is missing. The
// process exits when its standard input closes, so a test binary that
// dies leaves no server behind.
//
// # What it is not
//
// fauxqs is not Amazon SQS: it keeps everything in memory (Restart loses
// every queue, topic and item), and it implements standard queues with
// SQS's at-least-once delivery. Start returns an error saying why when
// Node.js or npm is missing or npm ci fails; callers skip with that reason
// unless CI=true, where they fail.
package sqstest
