package main

import (
	"context"

	"github.com/buildbridge/buildbridge/sinks/email"
	"github.com/buildbridge/buildbridge/sinks/slack"
)

// The slack and email sink types are implemented by their packages,
// imported here; they keep state in the store (a build's Slack message,
// held mail), given once the hub has one. Sinks look it up when they
// deliver, so the rules can make them before.
func init() { mounts = append(mounts, mountSinkStores) }

func mountSinkStores(_ context.Context, h *hub) error {
	slack.UseStore(h.store)
	email.UseStore(h.store)
	return nil
}
