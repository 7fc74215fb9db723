package sqs

import (
	"encoding/base64"
	"net/url"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	snstypes "github.com/aws/aws-sdk-go-v2/service/sns/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/clusterbus/clusterbus/adapters"
)

// metaAttr is the one message attribute the adapter uses itself. Its String
// value is URL-query encoded: i=message ID, k=key, b=body encoding ("64" for
// base64, "0" for an empty body), e=comma-separated names of headers whose
// value is empty (SQS refuses empty attribute values), r=dead-letter reason.
const metaAttr = "cb-meta"

// maxReason bounds the dead-letter reason carried in the metadata.
const maxReason = 1024

// wire is a Message as SQS or SNS carries it.
type wire struct {
	body  string
	attrs map[string]attr
}

type attr struct {
	dataType string // "String" or "Binary"
	s        string
	b        []byte
}

// size is the size SQS counts against its limit: the body plus each
// attribute's name, data type and value.
func (w wire) size() int {
	n := len(w.body)
	for k, a := range w.attrs {
		n += len(k) + len(a.dataType) + len(a.s) + len(a.b)
	}
	return n
}

// validText reports whether s is made only of the characters SQS accepts
// in bodies and string attributes: #x9 | #xA | #xD | #x20 to #xD7FF |
// #xE000 to #xFFFD. SQS documents #x10000 to #x10FFFF as valid too, but
// emulators (fauxqs) refuse them, so text with such characters (emoji) is
// sent base64-encoded, which every server takes.
func validText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		switch {
		case r == 0x9 || r == 0xA || r == 0xD:
		case r >= 0x20 && r <= 0xD7FF:
		case r >= 0xE000 && r <= 0xFFFD:
		default:
			return false
		}
	}
	return true
}

// checkHeaderName refuses names that SQS and SNS refuse as attribute names
// but adapters.HeaderNamePattern lets through.
func checkHeaderName(op, k string) error {
	l := strings.ToLower(k)
	if strings.HasPrefix(l, "aws.") || strings.HasPrefix(l, "amazon.") || strings.Contains(k, "..") || strings.HasSuffix(k, ".") {
		return adapters.Errorf(adapters.ErrInvalidArgument, op,
			"header name %q: SQS refuses attribute names that start with \"AWS.\" or \"Amazon.\", contain \"..\" or end with \".\"", k)
	}
	return nil
}

// encode turns m into its wire form and checks it against SQS's limits.
// reason, if not empty, is stored as the dead-letter reason.
func encode(op string, m adapters.Message, caps adapters.Capabilities) (wire, error) {
	if err := adapters.ValidateMessage(op, m, caps); err != nil {
		return wire{}, err
	}
	meta := url.Values{}
	meta.Set("i", m.ID)
	if m.Key != "" {
		meta.Set("k", m.Key)
	}
	w := wire{attrs: make(map[string]attr, len(m.Headers)+1)}
	switch body := string(m.Body); {
	case len(body) == 0:
		w.body = "-" // SQS and SNS refuse empty bodies
		meta.Set("b", "0")
	case validText(body):
		w.body = body
	default:
		w.body = base64.StdEncoding.EncodeToString(m.Body)
		meta.Set("b", "64")
	}
	var empty []string
	for k, v := range m.Headers {
		if err := checkHeaderName(op, k); err != nil {
			return wire{}, err
		}
		switch {
		case v == "":
			empty = append(empty, k)
		case validText(v):
			w.attrs[k] = attr{dataType: "String", s: v}
		default:
			w.attrs[k] = attr{dataType: "Binary", b: []byte(v)}
		}
	}
	if len(empty) > 0 {
		sort.Strings(empty)
		meta.Set("e", strings.Join(empty, ","))
	}
	w.attrs[metaAttr] = attr{dataType: "String", s: meta.Encode()}
	if n := w.size(); n > WireLimit {
		return wire{}, adapters.Errorf(adapters.ErrTooLarge, op,
			"%d bytes as sent to SQS (body%s plus attributes), limit %d", n, encodingNote(meta), WireLimit)
	}
	if len(w.attrs) > AttributeLimit {
		return wire{}, adapters.Errorf(adapters.ErrTooLarge, op, "%d message attributes, SQS allows %d (one is the adapter's own)", len(w.attrs), AttributeLimit)
	}
	return w, nil
}

func encodingNote(meta url.Values) string {
	if meta.Get("b") == "64" {
		return " base64-encoded because it is not valid SQS text"
	}
	return ""
}

// withReason returns a copy of the received attributes with the
// dead-letter reason set in the metadata, for an explicit dead-letter.
func withReason(attrs map[string]types.MessageAttributeValue, reason string) map[string]types.MessageAttributeValue {
	if len(reason) > maxReason {
		reason = reason[:maxReason]
		for !utf8.ValidString(reason) {
			reason = reason[:len(reason)-1]
		}
	}
	out := make(map[string]types.MessageAttributeValue, len(attrs)+1)
	for k, v := range attrs {
		out[k] = v
	}
	meta := url.Values{}
	if a, ok := attrs[metaAttr]; ok && a.StringValue != nil {
		meta, _ = url.ParseQuery(*a.StringValue)
	}
	meta.Set("r", reason)
	out[metaAttr] = types.MessageAttributeValue{DataType: aws.String("String"), StringValue: aws.String(meta.Encode())}
	return out
}

// sqsAttrs converts w's attributes for SendMessage.
func (w wire) sqsAttrs() map[string]types.MessageAttributeValue {
	out := make(map[string]types.MessageAttributeValue, len(w.attrs))
	for k, a := range w.attrs {
		v := types.MessageAttributeValue{DataType: aws.String(a.dataType)}
		if a.dataType == "Binary" {
			v.BinaryValue = a.b
		} else {
			v.StringValue = aws.String(a.s)
		}
		out[k] = v
	}
	return out
}

// snsAttrs converts w's attributes for Publish.
func (w wire) snsAttrs() map[string]snstypes.MessageAttributeValue {
	out := make(map[string]snstypes.MessageAttributeValue, len(w.attrs))
	for k, a := range w.attrs {
		v := snstypes.MessageAttributeValue{DataType: aws.String(a.dataType)}
		if a.dataType == "Binary" {
			v.BinaryValue = a.b
		} else {
			v.StringValue = aws.String(a.s)
		}
		out[k] = v
	}
	return out
}

// decoded is a received SQS message turned back into a Message.
type decoded struct {
	msg    adapters.Message
	reason string // dead-letter reason, "" if none
}

// decode turns a received SQS message back into the Message that was sent.
// Messages not sent by this adapter come through with their body as is and
// their string attributes as headers.
func decode(op string, body string, attrs map[string]types.MessageAttributeValue) (decoded, error) {
	var d decoded
	meta := url.Values{}
	if a, ok := attrs[metaAttr]; ok && a.StringValue != nil {
		var err error
		meta, err = url.ParseQuery(*a.StringValue)
		if err != nil {
			return d, adapters.Errorf(adapters.ErrInvalidArgument, op, "attribute %s: %v", metaAttr, err)
		}
	}
	d.msg.ID = meta.Get("i")
	d.msg.Key = meta.Get("k")
	d.reason = meta.Get("r")
	switch meta.Get("b") {
	case "0":
		d.msg.Body = []byte{}
	case "64":
		b, err := base64.StdEncoding.DecodeString(body)
		if err != nil {
			return d, adapters.Errorf(adapters.ErrInvalidArgument, op, "base64 body: %v", err)
		}
		d.msg.Body = b
	default:
		d.msg.Body = []byte(body)
	}
	for k, a := range attrs {
		if k == metaAttr {
			continue
		}
		if d.msg.Headers == nil {
			d.msg.Headers = map[string]string{}
		}
		switch {
		case a.StringValue != nil:
			d.msg.Headers[k] = *a.StringValue
		case a.BinaryValue != nil:
			d.msg.Headers[k] = string(a.BinaryValue)
		}
	}
	if e := meta.Get("e"); e != "" {
		if d.msg.Headers == nil {
			d.msg.Headers = map[string]string{}
		}
		for _, k := range strings.Split(e, ",") {
			d.msg.Headers[k] = ""
		}
	}
	return d, nil
}
