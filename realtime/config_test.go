package realtime

import (
	"strings"
	"testing"
	"time"
)

func TestConfigValidateNamesTheField(t *testing.T) {
	ok := App{ID: "1", Key: "k", Secret: "s"}
	for _, tc := range []struct {
		name  string
		cfg   Config
		field string
	}{
		{"no apps", Config{}, "Apps"},
		{"no id", Config{Apps: []App{{Key: "k", Secret: "s"}}}, "Apps[0].ID"},
		{"no key", Config{Apps: []App{{ID: "1", Secret: "s"}}}, "Apps[0].Key"},
		{"no secret", Config{Apps: []App{{ID: "1", Key: "k"}}}, "Apps[0].Secret"},
		{"duplicate id", Config{Apps: []App{ok, {ID: "1", Key: "k2", Secret: "s"}}}, "Apps[1].ID"},
		{"duplicate key", Config{Apps: []App{ok, {ID: "2", Key: "k", Secret: "s"}}}, "Apps[1].Key"},
		{"bad id", Config{Apps: []App{{ID: "a.b", Key: "k", Secret: "s"}}}, "Apps[0].ID"},
		{"negative cap", Config{Apps: []App{{ID: "1", Key: "k", Secret: "s", MaxConnections: -1}}}, "Apps[0].MaxConnections"},
		{"bad webhook url", Config{Apps: []App{{ID: "1", Key: "k", Secret: "s", Webhook: WebhookConfig{URL: "ftp://x"}}}}, "Apps[0].Webhook.URL"},
		{"bad webhook event", Config{Apps: []App{{ID: "1", Key: "k", Secret: "s",
			Webhook: WebhookConfig{URL: "http://x", Events: []string{"nope"}}}}}, "Apps[0].Webhook.Events"},
		{"negative timeout", Config{Apps: []App{ok}, PongTimeout: -time.Second}, "PongTimeout"},
		{"negative member cap", Config{Apps: []App{{ID: "1", Key: "k", Secret: "s", MaxPresenceMembers: -1}}}, "Apps[0].MaxPresenceMembers"},
		{"negative flush", Config{Apps: []App{ok}, Cluster: ClusterConfig{FlushInterval: -time.Second}}, "Cluster.FlushInterval"},
		{"node timeout under heartbeat", Config{Apps: []App{ok},
			Cluster: ClusterConfig{HeartbeatInterval: 5 * time.Second, NodeTimeout: 5 * time.Second}}, "Cluster.NodeTimeout"},
	} {
		_, err := New(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: error %v, want one naming %s", tc.name, err, tc.field)
		}
	}
	s, err := New(Config{Apps: []App{ok}, Logger: newTestLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.ActivityTimeout != 120*time.Second || s.cfg.PongTimeout != 30*time.Second ||
		s.cfg.MaxMessageSize != 10<<10 || s.cfg.Apps[0].ClientEventsPerSecond != 10 ||
		s.cfg.Apps[0].MaxPresenceMembers != MaxPresenceMembers || s.cfg.Cluster.NodeTimeout != DefaultNodeTimeout {
		t.Errorf("defaults not applied: %+v", s.cfg)
	}
	if err := s.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
}
