package bridge

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"

	"github.com/buildbridge/buildbridge/event"
)

// LogConsumer returns a consumer that logs each event at Info with the
// message "build-state-changed" and the attributes event_id, seq,
// build_id, project, state, status and the whole envelope as JSON under
// event.
func LogConsumer(logger *slog.Logger) Consumer {
	if logger == nil {
		logger = slog.Default()
	}
	return func(ctx context.Context, ev event.Envelope) error {
		raw, err := json.Marshal(ev)
		if err != nil {
			return fmt.Errorf("encode event: %w", err)
		}
		attrs := make([]slog.Attr, 0, 7)
		attrs = append(attrs, slog.String("event_id", ev.ID), slog.Int64("seq", ev.Seq))
		if ev.Build != nil {
			attrs = append(attrs, slog.Int64("build_id", ev.Build.ID))
		}
		if ev.Project != nil {
			attrs = append(attrs, slog.String("project", ev.Project.Name))
		}
		if ev.Build != nil {
			attrs = append(attrs, slog.String("state", string(ev.Build.State)), slog.String("status", string(ev.Build.Status)))
		}
		// json.RawMessage: the JSON handler embeds it as an object, the
		// text handler prints it as a quoted string.
		attrs = append(attrs, slog.Any("event", json.RawMessage(raw)))
		logger.LogAttrs(ctx, slog.LevelInfo, "build-state-changed", attrs...)
		return nil
	}
}
