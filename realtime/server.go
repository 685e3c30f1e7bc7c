package realtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Errors returned by Server methods.
var (
	ErrUnknownApp      = errors.New("realtime: unknown app")
	ErrServerClosed    = errors.New("realtime: server closed")
	ErrInvalidChannel  = errors.New("realtime: invalid channel name")
	ErrInvalidEvent    = errors.New("realtime: invalid event name")
	ErrTooManyChannels = fmt.Errorf("realtime: more than %d channels", MaxPublishChannels)
	ErrDataTooLarge    = fmt.Errorf("realtime: event data over %d bytes", MaxEventDataSize)
	ErrInvalidSocket   = errors.New("realtime: invalid socket id")
	ErrInvalidUser     = errors.New("realtime: invalid user id")
)

// Server is a Pusher-protocol server. Create it with New, serve its
// Handler, and stop it with Shutdown.
type Server struct {
	cfg      Config
	node     string // this node's id in broker messages
	log      *slog.Logger
	byKey    map[string]*app
	byID     map[string]*app
	apps     []*app
	broker   Broker
	ownedMem *MemoryBroker // the default broker, closed by Shutdown
	// clustered is set when the broker may span nodes: the cluster view
	// is then kept (see ClusterConfig).
	clustered   bool
	clusterWake chan struct{} // wakes clusterLoop
	unsub       func() error
	webhooks    *webhookBatcher
	handler     http.Handler

	closing  atomic.Bool
	admitMu  sync.Mutex
	wg       sync.WaitGroup // read loops and refusals
	bg       sync.WaitGroup // sweeper, webhook batcher and cluster loop
	stop     chan struct{}
	shutdown sync.Once
}

// New validates cfg and returns a running Server.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, byKey: make(map[string]*app), byID: make(map[string]*app),
		stop: make(chan struct{}), clusterWake: make(chan struct{}, 1), node: strconv.FormatUint(rand.Uint64(), 36)}
	for _, ac := range cfg.Apps {
		ac.AllowedOrigins = append([]string(nil), ac.AllowedOrigins...)
		a := newApp(s, ac)
		s.byKey[ac.Key], s.byID[ac.ID] = a, a
		s.apps = append(s.apps, a)
	}
	s.broker = cfg.Broker
	s.clustered = s.broker != nil
	if s.broker == nil {
		s.ownedMem = NewMemoryBroker()
		s.broker = s.ownedMem
	}
	unsub, err := s.broker.Subscribe(s.receive)
	if err != nil {
		return nil, fmt.Errorf("realtime: subscribe to broker: %w", err)
	}
	s.unsub = unsub
	s.webhooks = newWebhookBatcher(s)
	s.handler = s.routes()
	s.bg.Add(2)
	go func() { defer s.bg.Done(); s.webhooks.run() }()
	go func() { defer s.bg.Done(); s.sweep() }()
	if s.clustered {
		s.bg.Add(1)
		go func() { defer s.bg.Done(); s.clusterLoop() }()
	}
	return s, nil
}

// Handler serves GET /app/{key} (the WebSocket endpoint) and the HTTP API
// under /apps/{app_id}/.
func (s *Server) Handler() http.Handler { return s.handler }

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /app/{key}", s.serveWebSocket)
	s.apiRoutes(mux)
	return mux
}

// serveWebSocket upgrades the request, checks the app and protocol, and
// starts the connection's read loop. It returns at once, so that net/http
// releases the request's buffers and goroutine.
func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	if s.closing.Load() {
		http.Error(w, "server shutting down", http.StatusServiceUnavailable)
		return
	}
	key := r.PathValue("key")
	a := s.byKey[key]
	c := &conn{srv: s, app: a}
	opts := &websocket.AcceptOptions{InsecureSkipVerify: true}
	if a != nil {
		opts.OnPingReceived = c.onPing
		if len(a.cfg.AllowedOrigins) > 0 {
			opts = &websocket.AcceptOptions{OriginPatterns: a.cfg.AllowedOrigins, OnPingReceived: c.onPing}
		}
	}
	hj := &smallBufferHijacker{ResponseWriter: w}
	ws, err := websocket.Accept(hj, r, opts)
	if err != nil {
		s.log.Debug("realtime: websocket upgrade refused", "remote", r.RemoteAddr, "err", err)
		return
	}
	ws.SetReadLimit(int64(8 * s.cfg.MaxMessageSize))

	code, msg := 0, ""
	q := r.URL.Query()
	switch p := q.Get("protocol"); {
	case a == nil:
		code, msg = CodeAppNotFound, "App key "+quote(key)+" does not exist"
	case p == "":
		code, msg = CodeNoProtocol, "No protocol version supplied"
	default:
		v, err := strconv.Atoi(p)
		switch {
		case err != nil:
			code, msg = CodeInvalidVersion, "Invalid version string format"
		case v != ProtocolVersion:
			code, msg = CodeUnsupportedProtocol, "Unsupported protocol version "+p+"; this server speaks 7"
		}
	}
	if code != 0 {
		s.refuse(ws, code, msg)
		return
	}

	c.ws, c.nc, c.rc, c.br = ws, hj.nc, hj.rc, hj.br
	c.lastSeen.Store(s.cfg.Now().UnixNano())
	for {
		c.id = newSocketID()
		if !a.hasSocket(c.id) {
			break
		}
	}
	if !s.admit() {
		s.refuse(ws, CodeReconnect, "server shutting down")
		return
	}
	if !a.register(c) {
		s.wg.Done()
		s.refuse(ws, CodeOverCapacity, "Over connection capacity")
		return
	}
	c.send(eventFrame("pusher:connection_established", "",
		`{"socket_id":"`+c.id+`","activity_timeout":`+itoa(int64(activitySeconds(s.cfg.ActivityTimeout)))+`}`, ""))
	if s.closing.Load() {
		// Shutdown may have listed the connections before this one.
		c.closeWith(CodeReconnect, "server shutting down")
	}
	c.live = true
	go c.readLoop()
}

// admit counts a new connection goroutine unless the server is closing.
// The lock orders every Add before Shutdown's Wait.
func (s *Server) admit() bool {
	s.admitMu.Lock()
	defer s.admitMu.Unlock()
	if s.closing.Load() {
		return false
	}
	s.wg.Add(1)
	return true
}

// refuse sends pusher:error and closes with the same code. It runs on
// the request's goroutine, which net/http owns; the close handshake is
// bounded by the WebSocket library's timeouts.
func (s *Server) refuse(ws *websocket.Conn, code int, msg string) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.WriteTimeout)
	defer cancel()
	if err := ws.Write(ctx, websocket.MessageText, errorFrame(code, msg)); err == nil {
		_ = ws.Close(websocket.StatusCode(code), truncate(msg, 120))
	}
	_ = ws.CloseNow()
}

func activitySeconds(d time.Duration) int {
	return max(1, int((d+time.Second-1)/time.Second))
}

func newSocketID() string {
	return strconv.FormatUint(rand.Uint64()%1e15, 10) + "." + strconv.FormatUint(rand.Uint64()%1e15, 10)
}

// sweep pings silent connections, closes those that never answer or are
// stuck in a write, and sends deferred subscription counts. One goroutine for all connections
// instead of a timer each.
func (s *Server) sweep() {
	every := min(s.cfg.ActivityTimeout, s.cfg.PongTimeout, s.cfg.WriteTimeout) / 4
	every = max(10*time.Millisecond, min(every, time.Second))
	t := time.NewTicker(every)
	defer t.Stop()
	activity, pong := s.cfg.ActivityTimeout.Nanoseconds(), s.cfg.PongTimeout.Nanoseconds()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		now := s.cfg.Now().UnixNano()
		wallNow, writeTimeout := time.Now().UnixNano(), s.cfg.WriteTimeout.Nanoseconds()
		for _, a := range s.apps {
			a.flushCounts()
			a.sweep(now, wallNow, activity, pong, writeTimeout)
		}
	}
}

// broadcast publishes m through the broker, logging a failure: it is used
// where no caller could act on the error.
func (s *Server) broadcast(m Message) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.broker.Publish(ctx, m); err != nil {
		s.log.Warn("realtime: broker publish failed", "app", m.AppID, "kind", m.Kind, "err", err)
	}
}

// receive handles a message from the broker.
func (s *Server) receive(m Message) {
	a := s.byID[m.AppID]
	if a == nil {
		return
	}
	switch m.Kind {
	case KindEvent:
		for _, ch := range m.Channels {
			a.fanout(ch, func() []byte { return textFrame(eventFrame(m.Event, ch, m.Data, m.UserID)) }, m.ExcludeSocketID)
		}
	case KindTerminateUser:
		a.terminateUser(m.UserID)
	case KindBindSocket:
		a.bind(m.SocketID, m.UserID)
	case KindCounts, KindMemberAdded, KindMemberRemoved, KindSnapshot, KindHeartbeat, KindHello, KindGoodbye:
		if s.clustered && m.Origin != "" && m.Origin != s.node && a.clusterReceive(m, time.Now()) {
			s.wakeCluster()
		}
	}
}

// Publish sends event with data to the subscribers of channels on every
// node, except the socket excludeSocketID (may be ""). Channel names may
// include #server-to-user-<id>. The same limits as the HTTP API apply.
func (s *Server) Publish(ctx context.Context, appID string, channels []string, event, data, excludeSocketID string) error {
	if s.closing.Load() {
		return ErrServerClosed
	}
	if s.byID[appID] == nil {
		return fmt.Errorf("%w: %q", ErrUnknownApp, appID)
	}
	if err := checkPublish(channels, event, data, excludeSocketID); err != nil {
		return err
	}
	m := Message{Kind: KindEvent, AppID: appID, Channels: channels, Event: event, Data: data,
		ExcludeSocketID: excludeSocketID}
	if err := s.broker.Publish(ctx, m); err != nil {
		return fmt.Errorf("realtime: publish %q: %w", event, err)
	}
	return nil
}

func checkPublish(channels []string, event, data, socketID string) error {
	if len(channels) == 0 {
		return fmt.Errorf("%w: no channel given", ErrInvalidChannel)
	}
	if len(channels) > MaxPublishChannels {
		return ErrTooManyChannels
	}
	for _, ch := range channels {
		if !validPublishChannel(ch) {
			return fmt.Errorf("%w: %s", ErrInvalidChannel, quote(ch))
		}
		if len(channels) > 1 && kindOf(ch) == kindEncrypted {
			return fmt.Errorf("%w: an encrypted channel must be published to alone", ErrInvalidChannel)
		}
	}
	if !validEventName(event) {
		return fmt.Errorf("%w: %s", ErrInvalidEvent, quote(event))
	}
	if len(data) > MaxEventDataSize {
		return ErrDataTooLarge
	}
	if socketID != "" && !validSocketID(socketID) {
		return fmt.Errorf("%w: %s", ErrInvalidSocket, quote(socketID))
	}
	return nil
}

// validSocketID matches \d+\.\d+.
func validSocketID(id string) bool {
	dot := -1
	for i := 0; i < len(id); i++ {
		switch b := id[i]; {
		case b == '.' && dot < 0 && i > 0:
			dot = i
		case b < '0' || b > '9':
			return false
		}
	}
	return dot > 0 && dot < len(id)-1 && len(id) <= 64
}

// TerminateUserConnections closes, on every node, the connections signed
// in (pusher:signin) as userID.
func (s *Server) TerminateUserConnections(ctx context.Context, appID, userID string) error {
	if s.byID[appID] == nil {
		return fmt.Errorf("%w: %q", ErrUnknownApp, appID)
	}
	if !validUserID(userID) {
		return ErrInvalidUser
	}
	return s.broker.Publish(ctx, Message{Kind: KindTerminateUser, AppID: appID, UserID: userID})
}

// BindSocket attributes the connection socketID to the host's user userID,
// so that Hooks.Authorize sees it and UserSubscriptions counts its
// subscriptions. The host's channel auth endpoint calls it when it signs
// for a user. A socket on another node is bound there through the broker.
func (s *Server) BindSocket(appID, socketID, userID string) error {
	a := s.byID[appID]
	if a == nil {
		return fmt.Errorf("%w: %q", ErrUnknownApp, appID)
	}
	if !validSocketID(socketID) {
		return fmt.Errorf("%w: %s", ErrInvalidSocket, quote(socketID))
	}
	if !validUserID(userID) {
		return ErrInvalidUser
	}
	if a.bind(socketID, userID) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.broker.Publish(ctx, Message{Kind: KindBindSocket, AppID: appID, SocketID: socketID, UserID: userID})
}

// UserSubscriptions counts the live subscriptions (any channel but
// #server-to-user) of the sockets bound to userID. With a Broker that
// spans nodes it includes the other nodes' counts, as they last reported
// them: changes travel within Cluster.FlushInterval (see ClusterConfig).
func (s *Server) UserSubscriptions(appID, userID string) int {
	a := s.byID[appID]
	if a == nil {
		return 0
	}
	return a.ownerSubscriptions(userID)
}

// ChannelInfo returns the state of one channel, on every node of a
// cluster as this node knows them (see ClusterConfig).
func (s *Server) ChannelInfo(appID, name string) (ChannelInfo, error) {
	a := s.byID[appID]
	if a == nil {
		return ChannelInfo{}, fmt.Errorf("%w: %q", ErrUnknownApp, appID)
	}
	return a.channelInfo(name), nil
}

// Channels lists the occupied channels of the app whose name starts with
// prefix, sorted by name, on every node of a cluster.
func (s *Server) Channels(appID, prefix string) ([]ChannelInfo, error) {
	a := s.byID[appID]
	if a == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownApp, appID)
	}
	return a.channelList(prefix), nil
}

// PresenceUsers lists the user ids present in a presence channel, on
// every node of a cluster.
func (s *Server) PresenceUsers(appID, name string) ([]string, error) {
	a := s.byID[appID]
	if a == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownApp, appID)
	}
	return a.presenceUsers(name), nil
}

// Stats are counters of this node.
type Stats struct {
	Connections int
	Channels    int
}

// Stats returns this node's connection and channel counts.
func (s *Server) Stats() Stats {
	var st Stats
	for _, a := range s.apps {
		a.mu.RLock()
		st.Connections += len(a.conns)
		st.Channels += len(a.channels)
		a.mu.RUnlock()
	}
	return st
}

// Shutdown refuses new connections, closes every connection with 4200
// (clients reconnect, to another node if there is one), flushes pending
// webhooks and waits for every goroutine of the server. If ctx ends
// first, the remaining connections are dropped without a close handshake
// and ctx's error is returned once they are gone.
func (s *Server) Shutdown(ctx context.Context) error {
	var err error
	s.shutdown.Do(func() {
		s.admitMu.Lock()
		s.closing.Store(true)
		s.admitMu.Unlock()
		if uerr := s.unsub(); uerr != nil {
			s.log.Warn("realtime: broker unsubscribe", "err", uerr)
		}
		for _, a := range s.apps {
			for _, c := range a.allConns() {
				c.closeWith(CodeReconnect, "server shutting down")
			}
		}
		done := make(chan struct{})
		go func() { s.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			err = ctx.Err()
			for _, a := range s.apps {
				for _, c := range a.allConns() {
					_ = c.nc.Close()
				}
			}
			<-done
		}
		close(s.stop)
		s.webhooks.close()
		s.bg.Wait()
		if s.clustered {
			// Tell the other nodes to forget this one now rather than
			// after Cluster.NodeTimeout; after the cluster loop, so that
			// no heartbeat follows.
			for _, a := range s.apps {
				a.mu.Lock()
				a.queueLocked(Message{Kind: KindGoodbye})
				a.mu.Unlock()
				a.flushOut()
			}
		}
		if s.ownedMem != nil {
			_ = s.ownedMem.Close()
		}
	})
	return err
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
