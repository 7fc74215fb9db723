// Package traced wraps any adapters.Broker so that W3C trace context
// travels with every message: Publish and Enqueue run in a producer span
// ("send DESTINATION", messaging semantic conventions) and add its
// traceparent (and tracestate) to the message headers; a received item gets
// a consumer span ("receive QUEUE") whose parent is the sender's span, and
// Context gives a handler the sender's context to continue the trace.
//
// Order of decoration: wrap the signing decorator, traced(signed(broker)),
// so that the trace headers are covered by the signature and a forged
// traceparent is dropped with the rest of a forged message.
//
// When the context carries no span (tracing off, or a heartbeat) nothing is
// added: no header, no cost beyond a context lookup. Broadcast topics are
// propagated but get no receive span (heartbeats would drown the traces).
package traced
