package sqs

import (
	"errors"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/adaptertest"
)

// FuzzCodec: a message the contract accepts is either refused by encode
// (too large for SQS, or a header name SQS refuses) or survives encode and
// decode unchanged, with and without a dead-letter reason added by
// withReason; decoding any body and attributes (a forged cb-meta included)
// never panics.
func FuzzCodec(f *testing.F) {
	f.Add("id-1", "k", "x-h", "v", []byte("body"), "i=a&k=b&b=64&e=x,y", "reason", "aGk=")
	f.Add("", "", "e", "", []byte{}, "b=0", "", "")
	f.Add("é", "k/ü", "bin", "\x01\xff", []byte{0, 1, 0xff}, "%zz", "😀", "not base64")
	f.Add("i", "", "AWS.x", "v", []byte("😀"), "b=64&r=%FF", "\xff\xfe", "-")
	f.Fuzz(func(t *testing.T, id, key, hname, hval string, body []byte, meta, reason, rawBody string) {
		if m, ok := adaptertest.FuzzMessage(id, key, hname, hval, body); ok {
			w, err := encode("fuzz", m, capabilities())
			switch {
			case err == nil:
				if !validText(w.body) || w.body == "" {
					t.Fatalf("wire body %q is not non-empty SQS text", w.body)
				}
				d, err := decode("fuzz", w.body, w.sqsAttrs())
				if err != nil || !adaptertest.SameMessage(m, d.msg) || d.reason != "" {
					t.Fatalf("round trip: %+v -> %+v reason %q, %v", m, d.msg, d.reason, err)
				}
				d, err = decode("fuzz", w.body, withReason(w.sqsAttrs(), reason))
				if err != nil || !adaptertest.SameMessage(m, d.msg) {
					t.Fatalf("round trip with a reason: %+v -> %+v, %v", m, d.msg, err)
				}
				if len(reason) <= maxReason && d.reason != reason {
					t.Fatalf("reason %q came back as %q", reason, d.reason)
				}
			case errors.Is(err, adapters.ErrTooLarge):
			case hname != "" && checkHeaderName("fuzz", hname) != nil:
			default:
				t.Fatalf("encode %+v: %v", m, err)
			}
		}
		attrs := map[string]types.MessageAttributeValue{
			metaAttr: {DataType: aws.String("String"), StringValue: aws.String(meta)},
			hname:    {DataType: aws.String("Binary"), BinaryValue: []byte(hval)},
			"s":      {DataType: aws.String("String"), StringValue: aws.String(hval)},
			"nil":    {DataType: aws.String("Number")},
		}
		_, _ = decode("fuzz", rawBody, attrs)
		_, _ = decode("fuzz", rawBody, withReason(attrs, reason))
		_, _ = decode("fuzz", rawBody, nil)
	})
}
