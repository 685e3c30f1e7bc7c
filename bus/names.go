package bus

import (
	"fmt"
	"net/url"
	"strings"
)

// maxNameLen keeps stream and consumer names well under JetStream's limits
// (they become file names on the server).
const maxNameLen = 64

func nameChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// validToken reports whether s is a non-empty run of letters, digits, '-'
// and '_': safe as a subject token, a stream name and a file name.
func validToken(s string) bool {
	if s == "" || len(s) > maxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !nameChar(s[i]) {
			return false
		}
	}
	return true
}

func validNamespace(ns string) bool {
	// A leading '_' is kept for the bus's own deliver subjects.
	return validToken(ns) && ns[0] != '_' && ns[0] != '-'
}

// validTopic accepts dot-separated tokens ("build.transition",
// "build-state-changed"); wildcards, spaces and empty tokens are refused.
func validTopic(topic string) error {
	if topic == "" {
		return fmt.Errorf("empty topic")
	}
	if len(topic) > 2*maxNameLen {
		return fmt.Errorf("topic %.20q…: longer than %d characters", topic, 2*maxNameLen)
	}
	for tok := range strings.SplitSeq(topic, ".") {
		if !validToken(tok) {
			return fmt.Errorf("topic %q: want dot-separated tokens of letters, digits, '-' and '_'", topic)
		}
	}
	return nil
}

func validDurable(durable string) error {
	if !validToken(durable) {
		return fmt.Errorf("durable name %q: want 1 to %d letters, digits, '-' and '_'", durable, maxNameLen)
	}
	return nil
}

// streamName maps a topic to a stream name: stream names cannot hold dots.
// Two topics differing only by '.' against '_' would share a name;
// EnsureTopic detects and refuses that.
func streamName(ns, topic string) string {
	return ns + "_" + strings.ReplaceAll(topic, ".", "_")
}

// deliverSubject is where the server pushes a durable consumer's messages.
// It starts with "_bb_deliver", which no namespace can, so it never falls
// inside a stream's subjects.
func deliverSubject(stream, durable string) string {
	return "_bb_deliver." + stream + "." + durable
}

// redactURL hides a password in a NATS URL for logs and errors.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	return u.Redacted()
}
