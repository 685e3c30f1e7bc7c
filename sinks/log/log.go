// Package log is the log sink: every delivery becomes one log record,
// written to the server's log or to stdout, stderr or a file. It is the
// sink to watch what the rules do, and the one every build has.
//
// Importing the package registers the sink type "log".
package log

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/buildbridge/buildbridge/sinks"
)

// Template is the default message of a log delivery.
const Template = `{{.Event.Type}}{{with .Project}} {{.Name}}{{end}}{{with .Build}} #{{.Number}} {{.Branch}} {{.Status}}{{end}}`

// Type is the log sink type.
var Type = sinks.Type{
	Name:        "log",
	Doc:         "one log record per delivery, in the server's log, on stdout or stderr, or in a file",
	ContentType: "text/plain; charset=utf-8",
	Settings: []sinks.Setting{
		{Name: "output", Kind: sinks.KindString,
			Doc: "empty: the server's log; stdout; stderr; or a file path (appended to)"},
		{Name: "format", Kind: sinks.KindEnum, Enum: []string{"text", "json"}, Default: "text",
			Doc: "record format on stdout, stderr or a file"},
		{Name: "level", Kind: sinks.KindEnum, Enum: []string{"debug", "info", "warn", "error"}, Default: "info",
			Override: true, Param: true, Doc: "record level"},
		{Name: "template", Kind: sinks.KindTemplate, Role: sinks.RoleBody, Override: true, Default: Template,
			Doc: "record message (a template)"},
	},
	New: New,
}

func init() { sinks.Register(Type) }

// Sink writes deliveries as log records.
type Sink struct {
	name   string
	logger *slog.Logger
	file   io.Closer

	mu     sync.RWMutex
	closed bool
}

// New makes a log sink from its configuration.
func New(c *sinks.Config) (sinks.Sink, error) {
	s := &Sink{name: c.Name}
	var w io.Writer
	switch out := c.Text("output"); out {
	case "":
		s.logger = slog.Default()
		return s, nil
	case "stdout":
		w = os.Stdout
	case "stderr":
		w = os.Stderr
	default:
		f, err := os.OpenFile(out, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("log sink output: %w", err)
		}
		w, s.file = f, f
	}
	opts := &slog.HandlerOptions{Level: slog.LevelDebug}
	if c.Text("format") == "json" {
		s.logger = slog.New(slog.NewJSONHandler(w, opts))
	} else {
		s.logger = slog.New(slog.NewTextHandler(w, opts))
	}
	return s, nil
}

// ErrClosed is returned by Deliver after Close.
var ErrClosed = errors.New("log sink closed")

// Deliver writes one record: the rendered message, with the event, route
// and sink as attributes.
func (s *Sink) Deliver(ctx context.Context, d sinks.Delivery) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(d.Params["level"])); err != nil {
		level = slog.LevelInfo
	}
	s.logger.LogAttrs(ctx, level, string(d.Body),
		slog.String("sink", d.Sink),
		slog.String("route", d.Route),
		slog.String("event_id", d.EventID),
		slog.String("event_type", d.Event.Type),
	)
	return nil
}

// Close closes the output file, if any.
func (s *Sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.file != nil {
		return s.file.Close()
	}
	return nil
}
