package routes

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/buildbridge/buildbridge/event"
)

// appendEnvelope appends the JSON of a build-state-changed envelope, the
// same bytes as json.Marshal(ev), an order of magnitude faster (the
// envelope is marshalled for every event: it is the user channel's
// payload). ok is false for what it does not encode (events with data,
// times json.Marshal refuses): the caller then uses json.Marshal.
func appendEnvelope(dst []byte, ev *event.Envelope) ([]byte, bool) {
	if len(ev.Data) > 0 || !jsonTimeOK(ev.Time) {
		return dst, false
	}
	dst = append(dst, `{"id":`...)
	dst = appendJSONString(dst, ev.ID)
	dst = append(dst, `,"type":`...)
	dst = appendJSONString(dst, ev.Type)
	dst = append(dst, `,"time":"`...)
	dst = ev.Time.AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","seq":`...)
	dst = strconv.AppendInt(dst, ev.Seq, 10)
	if b := ev.Build; b != nil {
		if !jsonTimePtrOK(b.StartedAt) || !jsonTimePtrOK(b.FinishedAt) {
			return dst, false
		}
		dst = append(dst, `,"build":{"id":`...)
		dst = strconv.AppendInt(dst, b.ID, 10)
		dst = append(dst, `,"number":`...)
		dst = strconv.AppendInt(dst, b.Number, 10)
		dst = append(dst, `,"state":`...)
		dst = appendJSONString(dst, string(b.State))
		dst = append(dst, `,"success":`...)
		if b.Success == nil {
			dst = append(dst, "null"...)
		} else {
			dst = strconv.AppendBool(dst, *b.Success)
		}
		for _, f := range [...]struct{ k, v string }{{"status", string(b.Status)}, {"ref", b.Ref},
			{"branch", b.Branch}, {"sha", b.SHA}, {"author", b.Author}, {"author_email", b.AuthorEmail},
			{"message", b.Message}, {"compare_url", b.CompareURL}, {"pusher", b.Pusher}, {"reason", b.Reason}, {"url", b.URL}} {
			if f.v == "" && (f.k == "reason" || f.k == "compare_url" || f.k == "pusher") {
				continue // omitempty
			}
			dst = append(dst, ',', '"')
			dst = append(dst, f.k...)
			dst = append(dst, '"', ':')
			dst = appendJSONString(dst, f.v)
		}
		dst = append(dst, `,"started_at":`...)
		dst = appendJSONTime(dst, b.StartedAt)
		dst = append(dst, `,"finished_at":`...)
		dst = appendJSONTime(dst, b.FinishedAt)
		dst = append(dst, `,"duration_ms":`...)
		dst = appendJSONInt(dst, b.DurationMS)
		dst = append(dst, `,"result":`...)
		if b.Result == "" {
			dst = append(dst, "null"...)
		} else {
			dst = appendJSONString(dst, string(b.Result))
		}
		dst = append(dst, '}')
	}
	if j := ev.Job; j != nil {
		dst = append(dst, `,"job":{"id":`...)
		dst = strconv.AppendInt(dst, j.ID, 10)
		dst = append(dst, `,"name":`...)
		dst = appendJSONString(dst, j.Name)
		dst = append(dst, '}')
	}
	if p := ev.Project; p != nil {
		dst = append(dst, `,"project":{"id":`...)
		dst = strconv.AppendInt(dst, p.ID, 10)
		dst = append(dst, `,"name":`...)
		dst = appendJSONString(dst, p.Name)
		dst = append(dst, `,"owner_id":`...)
		dst = strconv.AppendInt(dst, p.OwnerID, 10)
		dst = append(dst, '}')
	}
	if p := ev.Previous; p != nil {
		dst = append(dst, `,"previous":{"build_number":`...)
		dst = appendJSONInt(dst, p.BuildNumber)
		dst = append(dst, `,"result":`...)
		if p.Result == nil {
			dst = append(dst, "null"...)
		} else {
			dst = appendJSONString(dst, string(*p.Result))
		}
		dst = append(dst, '}')
	}
	return append(dst, '}'), true
}

// jsonTimeOK: time.Time.MarshalJSON refuses years outside [0,9999].
func jsonTimeOK(t time.Time) bool { y := t.Year(); return y >= 0 && y <= 9999 }

func jsonTimePtrOK(t *time.Time) bool { return t == nil || jsonTimeOK(*t) }

func appendJSONTime(dst []byte, t *time.Time) []byte {
	if t == nil {
		return append(dst, "null"...)
	}
	dst = append(dst, '"')
	dst = t.AppendFormat(dst, time.RFC3339Nano)
	return append(dst, '"')
}

func appendJSONInt(dst []byte, n *int64) []byte {
	if n == nil {
		return append(dst, "null"...)
	}
	return strconv.AppendInt(dst, *n, 10)
}

const hexDigits = "0123456789abcdef"

// appendJSONString quotes s as encoding/json does with HTML escaping.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// fastEnvelopeJSON is turned off if appendEnvelope ever disagrees with
// json.Marshal on the sample events (a field added to the envelope).
var fastEnvelopeJSON = func() bool {
	for _, ev := range allSamples {
		want, err := json.Marshal(ev)
		got, ok := appendEnvelope(nil, &ev)
		if ok && (err != nil || !bytes.Equal(got, want)) {
			return false
		}
	}
	return true
}()

// marshalEnvelope is json.Marshal(ev).
func marshalEnvelope(ev *event.Envelope) ([]byte, error) {
	if fastEnvelopeJSON {
		if out, ok := appendEnvelope(make([]byte, 0, 1024), ev); ok {
			return out, nil
		}
	}
	return json.Marshal(ev)
}
