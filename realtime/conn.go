package realtime

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// Buffer sizes of an upgraded connection. net/http hands a hijacked
// connection 4 KiB read and write buffers; they would be most of an idle
// connection's memory. Reads need little: Pusher messages are small and
// bufio reads large payloads directly. The write buffer only carries the
// WebSocket library's own control frames (close), which must fit whole so
// that each goes out in one write: data frames are written directly.
const (
	connReadBufSize  = 512
	connWriteBufSize = 256
)

// maxSubscriptionsPerConn bounds the channels one connection may hold, so
// that one client cannot grow the server's state without limit.
const maxSubscriptionsPerConn = 1000

// conn is one client connection. Its read loop is the only goroutine it
// always holds; a writer goroutine runs only while frames are queued.
//
// Writing: data frames are framed once per event and written straight to
// the raw connection by the writer goroutine, several at a time with
// writev; the WebSocket library writes only control frames: the reply to
// a client's close frame, and the close handshake. WebSocket pings are
// answered through the queue (OnPingReceived), so no two goroutines write
// at once except for a close reply, which goes out in one write.
//
// Closing: closeWith marks the connection closing (nothing more is
// queued), the writer sends what is queued, then wakes the read loop
// (a read deadline in the past), which runs the close handshake itself.
// The handshake thus never reads concurrently with the read loop.
type conn struct {
	srv *Server
	app *app
	ws  *websocket.Conn
	nc  net.Conn        // the raw connection
	rc  syscall.RawConn // nc's descriptor, for non-blocking writes; may be nil
	br  *bufio.Reader   // the WebSocket library's read buffer, which we own
	id  string          // socket_id
	// live is set before the read loop starts; a connection being
	// refused is never live.
	live bool

	lastSeen atomic.Int64 // unix nanos of the last message received
	pingSent atomic.Int64 // unix nanos of an unanswered pusher:ping, or 0
	// writeStart is when the current write began (time.Now, unix nanos),
	// or 0: the sweeper drops connections stuck in a write.
	writeStart atomic.Int64

	// Guarded by app.mu.
	subs  []*channel
	user  string // signed in with pusher:signin
	owner string // bound with Server.BindSocket

	// Used by the read loop only.
	rateSec int64
	rateN   int

	mu         sync.Mutex // guards the fields below
	queue      [][]byte   // complete WebSocket frames
	writing    bool       // the write token is held (writer goroutine or an inline write)
	closing    bool       // nothing more is queued
	closeReady bool       // the queue is flushed: the read loop may close
	closeCode  websocket.StatusCode
	closeMsg   string
	// writers counts the writer goroutine and inline writes. Add happens
	// under mu, and once closing is set only while the count is already
	// positive, so finish's Wait sees them all.
	writers sync.WaitGroup
}

// send queues a JSON message for the client.
func (c *conn) send(payload []byte) { c.sendFrame(textFrame(payload)) }

func (c *conn) sendError(code int, msg string) { c.send(errorFrame(code, msg)) }

// sendFrame hands a complete WebSocket frame to the connection without
// blocking. When nothing is pending it writes the frame at once with a
// non-blocking write, which is the common case and costs no goroutine;
// whatever the socket does not take is queued for a writer goroutine. A
// connection whose queue is full is closed with 4200: a slow reader must
// not hold up publishers. frame may be shared and is never modified.
func (c *conn) sendFrame(frame []byte) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	if c.writing || len(c.queue) > 0 || c.rc == nil {
		c.enqueueLocked(frame)
		c.mu.Unlock()
		return
	}
	c.writing = true // the write token: nobody else writes meanwhile
	c.writers.Add(1) // finish waits for inline writes too
	c.mu.Unlock()

	n, err := tryWrite(c.rc, frame)

	c.mu.Lock()
	defer c.writers.Done()
	defer c.mu.Unlock()
	c.writing = false
	switch {
	case err != nil:
		c.brokenLocked()
	case n < len(frame):
		// The rest goes first, ahead of what others queued meanwhile.
		c.queue = append([][]byte{frame[n:]}, c.queue...)
		c.startWriterLocked()
	case len(c.queue) > 0 || c.closing:
		c.startWriterLocked()
	}
}

// enqueueLocked queues frame for the writer goroutine.
func (c *conn) enqueueLocked(frame []byte) {
	if len(c.queue) >= c.srv.cfg.SendQueueSize {
		c.queue = nil
		c.startCloseLocked(CodeReconnect, "slow consumer: send queue full")
		return
	}
	c.queue = append(c.queue, frame)
	c.startWriterLocked()
}

// brokenLocked ends a connection whose write failed: no close handshake,
// the read loop just ends.
func (c *conn) brokenLocked() {
	_ = c.nc.Close()
	c.queue = nil
	c.startCloseLocked(websocket.StatusGoingAway, "")
	c.closeCode, c.closeMsg = websocket.StatusGoingAway, ""
}

// onPing answers a WebSocket ping through the queue; returning false
// stops the library from writing the pong itself.
func (c *conn) onPing(_ context.Context, payload []byte) bool {
	if !c.live {
		return true // a refused connection: the library answers
	}
	// A WebSocket ping is activity too.
	c.lastSeen.Store(c.srv.cfg.Now().UnixNano())
	c.pingSent.Store(0)
	c.sendFrame(wsFrame(opPong, payload))
	return false
}

// closeWith sends the queued frames, then closes the connection with code.
func (c *conn) closeWith(code int, reason string) {
	c.mu.Lock()
	c.startCloseLocked(websocket.StatusCode(code), reason)
	c.mu.Unlock()
}

func (c *conn) startCloseLocked(code websocket.StatusCode, reason string) {
	if c.closing {
		return
	}
	c.closing, c.closeCode, c.closeMsg = true, code, reason
	c.startWriterLocked()
}

func (c *conn) startWriterLocked() {
	if c.writing || c.closeReady {
		return
	}
	c.writing = true
	c.writers.Add(1)
	go c.writeLoop()
}

// writeLoop writes queued frames until the queue is empty; once the
// connection is closing and flushed, it hands the close to the read loop.
func (c *conn) writeLoop() {
	defer c.writers.Done()
	var batch [][]byte
	for {
		c.mu.Lock()
		if len(c.queue) == 0 {
			c.writing = false
			c.queue = nil // an idle connection keeps no queue array
			if !c.closing {
				c.mu.Unlock()
				return
			}
			c.closeReady = true
			c.mu.Unlock()
			// Wake the read loop, wherever it waits.
			_ = c.nc.SetReadDeadline(time.Now())
			return
		}
		batch, c.queue = c.queue, batch[:0]
		c.mu.Unlock()

		// The sweeper closes the connection if this write outlasts
		// WriteTimeout (a stalled reader); cheaper than setting a deadline
		// twice per batch.
		c.writeStart.Store(time.Now().UnixNano())
		bufs := net.Buffers(batch)
		_, err := bufs.WriteTo(c.nc)
		c.writeStart.Store(0)
		clear(batch)
		if err != nil {
			c.mu.Lock()
			c.brokenLocked()
			c.mu.Unlock()
		}
		if cap(batch) > 16 {
			batch = nil // do not keep a burst's backing array
		}
	}
}

// readLoop waits for one client message and handles it, then continues
// on a new goroutine and returns. Handling a message (JSON, HMAC, the
// WebSocket library's read path) grows a goroutine's stack; the runtime
// shrinks stacks only while less than a quarter is used, so a goroutine
// that once grew keeps 4 KiB or more. Waiting on a fresh goroutine, on a
// shallow stack (a Peek on the read buffer), keeps an idle connection's
// stack at the 2 KiB minimum, for one goroutine start per message.
func (c *conn) readLoop() {
	if c.waitMessage() && c.readMessage() {
		go c.readLoop()
		return
	}
	c.finish()
	c.srv.wg.Done()
}

// waitMessage blocks until data arrives; false means the connection is
// over, after the close handshake if one was asked for.
func (c *conn) waitMessage() bool {
	if _, err := c.br.Peek(1); err == nil {
		return true
	}
	c.mu.Lock()
	ready, code, msg := c.closeReady, c.closeCode, c.closeMsg
	c.mu.Unlock()
	if ready && code != websocket.StatusGoingAway {
		c.closeHandshake(code, msg)
	}
	return false
}

// readMessage reads and handles one message; false ends the connection.
func (c *conn) readMessage() bool {
	_, r, err := c.ws.Reader(context.Background())
	if err != nil {
		return false
	}
	limit := int64(c.srv.cfg.MaxMessageSize)
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return false
	}
	c.lastSeen.Store(c.srv.cfg.Now().UnixNano())
	c.pingSent.Store(0)
	if int64(len(data)) > limit {
		n, err := io.Copy(io.Discard, r)
		if err != nil {
			return false
		}
		c.sendError(CodeBadMessage, "message too large: "+itoa(int64(len(data))+n)+
			" bytes, the limit is "+itoa(limit))
		return true
	}
	c.handle(data)
	return true
}

// closeHandshake sends the close frame and waits for the client's, both
// bounded by the WebSocket library's timeouts.
func (c *conn) closeHandshake(code websocket.StatusCode, msg string) {
	_ = c.nc.SetReadDeadline(time.Time{})
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout))
	_ = c.ws.Close(code, truncate(msg, 120))
}

// finish unregisters the connection, waits for its writer and drops the
// raw connection.
func (c *conn) finish() {
	c.mu.Lock()
	c.queue = nil
	c.startCloseLocked(websocket.StatusGoingAway, "")
	c.mu.Unlock()
	c.app.unregister(c)
	c.writers.Wait()
	_ = c.ws.CloseNow()
	_ = c.nc.Close()
}

// handle acts on one client message.
func (c *conn) handle(data []byte) {
	var m inMessage
	if err := json.Unmarshal(data, &m); err != nil {
		c.sendError(CodeBadMessage, "invalid JSON: "+err.Error())
		return
	}
	switch m.Event {
	case "pusher:ping":
		c.sendFrame(pongFrame)
	case "pusher:pong":
		// Activity was recorded on receipt.
	case "pusher:subscribe":
		c.subscribe(m.Data)
	case "pusher:unsubscribe":
		var d subscribeData
		if err := decodeData(m.Data, &d); err != nil || d.Channel == "" {
			c.sendError(CodeBadMessage, "pusher:unsubscribe needs data.channel")
			return
		}
		c.app.unsubscribe(c, d.Channel)
	case "pusher:signin":
		c.signin(m.Data)
	case "":
		c.sendError(CodeBadMessage, "message has no event")
	default:
		if strings.HasPrefix(m.Event, prefixClientEvent) {
			c.clientEvent(&m)
			return
		}
		c.sendError(CodeBadMessage, "unsupported event "+quote(m.Event))
	}
}

func (c *conn) subscribe(raw json.RawMessage) {
	var d subscribeData
	if err := decodeData(raw, &d); err != nil || d.Channel == "" {
		c.sendError(CodeBadMessage, "pusher:subscribe needs data.channel")
		return
	}
	a := c.app
	kind := kindOf(d.Channel)
	if kind == kindServerToUser {
		a.subscribeServerToUser(c, d.Channel)
		return
	}
	if !validChannelName(d.Channel) {
		c.send(subscriptionErrorFrame(d.Channel, "InvalidChannel",
			"invalid channel name: letters, digits and _-=@,.; up to 200 characters", 400))
		return
	}
	var member presenceMember
	if kind.signed() {
		msg := c.id + ":" + d.Channel
		if kind == kindPresence {
			msg += ":" + d.ChannelData
		}
		if d.Auth == "" || !checkAuth(&a.cfg, d.Auth, msg) {
			c.send(subscriptionErrorFrame(d.Channel, "AuthError",
				"invalid signature for socket "+c.id+" and channel "+d.Channel, 401))
			return
		}
		if kind == kindPresence {
			var ok bool
			if member, ok = parseChannelData(d.ChannelData); !ok {
				c.send(subscriptionErrorFrame(d.Channel, "AuthError",
					"presence channel_data must be JSON with a user_id", 400))
				return
			}
		}
		if h := c.srv.cfg.Hooks.Authorize; h != nil {
			req := SubscribeRequest{AppID: a.cfg.ID, SocketID: c.id, Channel: d.Channel,
				UserID: a.ownerOf(c), ChannelData: d.ChannelData}
			ctx, cancel := context.WithTimeout(context.Background(), DefaultAuthorizeTimeout)
			err := h(ctx, req)
			cancel()
			if err != nil {
				c.send(subscriptionErrorFrame(d.Channel, "AuthError", err.Error(), 403))
				return
			}
		}
	}
	a.subscribe(c, d.Channel, kind, member)
}

func (c *conn) signin(raw json.RawMessage) {
	var d signinData
	if err := decodeData(raw, &d); err != nil || d.UserData == "" || d.Auth == "" {
		c.sendError(CodeBadMessage, "pusher:signin needs data.auth and data.user_data")
		return
	}
	if !checkAuth(&c.app.cfg, d.Auth, c.id+"::user::"+d.UserData) {
		c.sendError(CodeUnauthorized, "invalid signin signature for socket "+c.id)
		return
	}
	var ud struct {
		ID json.RawMessage `json:"id"`
	}
	var id string
	if json.Unmarshal([]byte(d.UserData), &ud) != nil || json.Unmarshal(ud.ID, &id) != nil || !validUserID(id) {
		c.sendError(CodeUnauthorized, "user_data must be JSON with a string id")
		return
	}
	c.app.signin(c, id, d.UserData)
}

func (c *conn) clientEvent(m *inMessage) {
	a := c.app
	if !a.cfg.EnableClientEvents {
		c.sendError(CodeBadMessage, "client events are not enabled for this app")
		return
	}
	kind := kindOf(m.Channel)
	if kind != kindPrivate && kind != kindPresence {
		c.sendError(CodeBadMessage, "client events are only allowed on private and presence channels")
		return
	}
	if !validEventName(m.Event) {
		c.sendError(CodeBadMessage, "invalid event name")
		return
	}
	userID, ok := a.subscribedAs(c, m.Channel)
	if !ok {
		c.sendError(CodeBadMessage, "not subscribed to channel "+quote(m.Channel))
		return
	}
	sec := c.srv.cfg.Now().Unix()
	if sec != c.rateSec {
		c.rateSec, c.rateN = sec, 0
	}
	c.rateN++
	if c.rateN > a.cfg.ClientEventsPerSecond {
		c.sendError(CodeRateLimited, "client event rejected: more than "+
			itoa(int64(a.cfg.ClientEventsPerSecond))+" per second")
		return
	}
	msg := Message{Kind: KindEvent, AppID: a.cfg.ID, Channels: []string{m.Channel},
		Event: m.Event, Data: dataString(m.Data), ExcludeSocketID: c.id}
	if kind == kindPresence {
		msg.UserID = userID
	}
	c.srv.broadcast(msg)
}

// smallBufferHijacker gives the WebSocket library small buffers instead
// of net/http's 4 KiB ones, and keeps the raw connection.
type smallBufferHijacker struct {
	http.ResponseWriter
	nc net.Conn
	rc syscall.RawConn
	br *bufio.Reader
}

func (h *smallBufferHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	// The controller follows Unwrap, through middleware that wraps the
	// writer.
	nc, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, fmt.Errorf("realtime: hijack: %w", err)
	}
	var r io.Reader = nc
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		r = io.MultiReader(bytes.NewReader(bytes.Clone(b)), nc)
	}
	if err := brw.Writer.Flush(); err != nil {
		nc.Close()
		return nil, nil, err
	}
	h.nc = nc
	if sc, ok := nc.(syscall.Conn); ok && canTryWrite {
		h.rc, _ = sc.SyscallConn()
	}
	h.br = bufio.NewReaderSize(r, connReadBufSize)
	return nc, bufio.NewReadWriter(h.br, bufio.NewWriterSize(nc, connWriteBufSize)), nil
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (h *smallBufferHijacker) Unwrap() http.ResponseWriter { return h.ResponseWriter }

func quote(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return string(appendJSONString(nil, s))
}
