package event

import (
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/buildbridge/buildbridge/builds"
)

// LogChunk is the Data of a build-log event: a piece of a build's log
// starting at byte Offset.
type LogChunk struct {
	Offset int64  `json:"offset"`
	Text   string `json:"text"`
}

// MaxLogEvent bounds one build-log event as sent (Pusher's limit on one
// event's data is 10 KiB; the rest is headroom for the frame).
const MaxLogEvent = 9 << 10

// BuildLog splits a stored log chunk into build-log events of at most
// MaxLogEvent bytes of JSON each, cut on UTF-8 boundaries. Their ids are
// stable (build and offset), so a client can drop repeats.
func BuildLog(p builds.Project, b builds.Build, offset int64, chunk []byte, now time.Time) [][]byte {
	var out [][]byte
	for len(chunk) > 0 {
		n := min(len(chunk), 6<<10)
		for {
			for n > 0 && n < len(chunk) && !utf8.RuneStart(chunk[n]) {
				n--
			}
			if n == 0 { // no rune start in reach: cut anyway
				n = min(len(chunk), 1<<10)
			}
			raw := encodeLog(p, b, offset, chunk[:n], now)
			if len(raw) <= MaxLogEvent || n <= 64 {
				out = append(out, raw)
				break
			}
			n /= 2 // escapes made it too long
		}
		chunk, offset = chunk[n:], offset+int64(n)
	}
	return out
}

func encodeLog(p builds.Project, b builds.Build, offset int64, text []byte, now time.Time) []byte {
	data, _ := json.Marshal(LogChunk{Offset: offset, Text: string(text)})
	raw, _ := json.Marshal(Envelope{
		ID:      "log_" + strconv.FormatInt(b.ID, 10) + "_" + strconv.FormatInt(offset, 10),
		Type:    TypeBuildLog,
		Time:    now,
		Build:   &Build{ID: b.ID, Number: b.Number, State: b.State, Ref: b.Ref, Branch: b.Branch, SHA: b.SHA},
		Job:     &Job{ID: p.ID, Name: p.Name},
		Project: &Project{ID: p.ID, Name: p.Name, OwnerID: p.OwnerID},
		Data:    data,
	})
	return raw
}
