package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/buildbridge/buildbridge/api"
	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/realtime"
	"github.com/buildbridge/buildbridge/realtime/natsbroker"
	"github.com/buildbridge/buildbridge/sinks/pusher"
)

func init() { mounts = append(mounts, mountRealtime) }

// mountRealtime starts the embedded Pusher-protocol server, serves it at
// /app/{key} and /apps/{id}/…, signs channel subscriptions for users, and
// makes it the pusher sink's default destination.
func mountRealtime(ctx context.Context, h *hub) error {
	rc := h.cfg.Realtime
	secret, err := persistentSecret(h.cfg.Data, "realtime.secret", rc.Secret, func() (string, error) {
		var b [24]byte
		_, err := rand.Read(b[:])
		return hex.EncodeToString(b[:]), err
	})
	if err != nil {
		return fmt.Errorf("setting realtime.secret: %w", err)
	}
	keyText, err := persistentSecret(h.cfg.Data, "realtime.master_key", rc.EncryptionMasterKey, func() (string, error) {
		var b [32]byte
		_, err := rand.Read(b[:])
		return base64.StdEncoding.EncodeToString(b[:]), err
	})
	if err != nil {
		return fmt.Errorf("setting realtime.encryption_master_key: %w", err)
	}
	masterKey, err := base64.StdEncoding.DecodeString(keyText)
	if err != nil || len(masterKey) != 32 {
		return errors.New("setting realtime.encryption_master_key: must be base64 of exactly 32 bytes")
	}
	var origins []string
	for _, o := range strings.Split(rc.AllowedOrigins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			origins = append(origins, o)
		}
	}
	// With an external NATS, nodes form one realtime cluster: events
	// cross nodes, and each node keeps a view of the others' channels,
	// presence members and per-user subscription counts, so that channel
	// queries, presence and the limits hold cluster-wide (eventually
	// consistent; see realtime.ClusterConfig). A single node keeps none.
	var broker realtime.Broker
	var brokerConn *nats.Conn
	if h.cfg.NATSURL != "" {
		brokerConn, err = nats.Connect(h.cfg.NATSURL, nats.Name("buildbridge-realtime"), nats.MaxReconnects(-1))
		if err != nil {
			return fmt.Errorf("realtime cluster (setting nats_url): %w", err)
		}
		broker, err = natsbroker.New(natsbroker.Config{Conn: brokerConn, SubjectPrefix: h.cfg.NATSNamespace + ".realtime.", Logger: h.log})
		if err != nil {
			brokerConn.Close()
			return fmt.Errorf("realtime cluster: %w", err)
		}
	}
	limits := &channelLimits{h: h}
	srv, err := realtime.New(realtime.Config{
		Broker: broker,
		Apps: []realtime.App{{ID: rc.AppID, Key: rc.Key, Secret: secret, Cluster: rc.Cluster,
			EnableClientEvents: rc.ClientEvents, EnableSubscriptionCount: true, AllowedOrigins: originHosts(origins)}},
		Logger: h.log.With("component", "realtime"),
		Hooks:  realtime.Hooks{Authorize: limits.authorize},
	})
	if err != nil {
		return fmt.Errorf("realtime: %w", err)
	}
	limits.srv = srv
	h.rt = srv
	h.mux.Handle("/app/", srv.Handler())
	h.mux.Handle("/apps/", srv.Handler())
	host, port := wsEndpoint(h.cfg.BaseURL)
	if err := h.api.EnableChannels(api.ChannelConfig{AppID: rc.AppID, Key: rc.Key, Secret: secret, Cluster: rc.Cluster,
		WSHost: host, WSPort: port, TLS: strings.HasPrefix(h.cfg.BaseURL, "https:"), MaxChannels: rc.MaxChannels,
		EncryptionMasterKey: masterKey, Subscriptions: limits, AllowedOrigins: origins}); err != nil {
		return err
	}
	pusher.UseEmbedded(srv, rc.AppID, masterKey)
	// Live logs go straight to the owner's channel: they are many, small
	// and worthless once the build is over, so they skip the durable
	// delivery path; a client that missed some reads GET …/log?offset=.
	h.onLog = func(p builds.Project, b builds.Build, off int64, chunk []byte) {
		for _, raw := range event.BuildLog(p, b, off, chunk, time.Now()) {
			if err := srv.Publish(context.Background(), rc.AppID, []string{event.UserChannel(p.OwnerID)}, event.TypeBuildLog, string(raw), ""); err != nil {
				h.log.Debug("publish build log", "build_id", b.ID, "err", err)
			}
		}
	}
	h.onShutdown = append(h.onShutdown, func(ctx context.Context) {
		pusher.UseEmbedded(nil, "", nil)
		if err := srv.Shutdown(ctx); err != nil {
			h.log.Warn("realtime shutdown", "err", err)
		}
		if brokerConn != nil {
			brokerConn.Close()
		}
	})
	return nil
}

// channelLimits attributes sockets to users and holds each user to their
// open-channel limit, both at the auth endpoint and in the server itself
// (a client could have several subscriptions signed before using them).
type channelLimits struct {
	h   *hub
	srv *realtime.Server
}

func (l *channelLimits) BindSocket(appID, socketID, userID string) {
	if err := l.srv.BindSocket(appID, socketID, userID); err != nil {
		l.h.log.Debug("bind socket", "socket_id", socketID, "err", err)
	}
}

func (l *channelLimits) UserSubscriptions(appID, userID string) int {
	return l.srv.UserSubscriptions(appID, userID)
}

func (l *channelLimits) authorize(ctx context.Context, req realtime.SubscribeRequest) error {
	if req.UserID == "" {
		return nil // signed outside the auth endpoint, by someone holding the secret
	}
	id, err := strconv.ParseInt(req.UserID, 10, 64)
	if err != nil {
		return fmt.Errorf("unknown user %q", req.UserID)
	}
	u, err := l.h.store.UserByID(ctx, id)
	if err != nil {
		return fmt.Errorf("unknown user %d", id)
	}
	if req.Channel == api.SystemChannel && !u.Admin {
		return fmt.Errorf("only admins may subscribe to %s", api.SystemChannel)
	}
	max := l.h.cfg.Realtime.MaxChannels
	if u.MaxChannels > 0 {
		max = u.MaxChannels
	}
	if n := l.srv.UserSubscriptions(req.AppID, req.UserID); n >= max {
		return fmt.Errorf("open-channel limit reached: %d of %d channels open", n, max)
	}
	return nil
}

// wsEndpoint is the host and port clients reach the WebSocket server at,
// from the hub's public URL.
func wsEndpoint(base string) (string, int) {
	u, err := url.Parse(base)
	if err != nil {
		return "127.0.0.1", 8080
	}
	host, portText, err := net.SplitHostPort(u.Host)
	if err != nil {
		host, portText = u.Host, "80"
		if u.Scheme == "https" {
			portText = "443"
		}
	}
	port, _ := strconv.Atoi(portText)
	return host, port
}

// originHosts turns origins (https://app.example.com) into the host
// patterns the realtime server matches.
func originHosts(origins []string) []string {
	var out []string
	for _, o := range origins {
		if u, err := url.Parse(o); err == nil && u.Host != "" {
			out = append(out, u.Host)
		} else {
			out = append(out, o)
		}
	}
	return out
}

// persistentSecret returns the configured value, or one kept in the data
// directory, made by gen on first use, readable only by the owner.
func persistentSecret(dir, name, configured string, gen func() (string, error)) (string, error) {
	if configured != "" {
		return configured, nil
	}
	path := filepath.Join(dir, name)
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	} else if !os.IsNotExist(err) {
		return "", err
	}
	v, err := gen()
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(path, []byte(v+"\n"), 0o600); err != nil {
		return "", err
	}
	return v, nil
}
