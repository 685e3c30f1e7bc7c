package main

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// wsConn is a minimal WebSocket client (RFC 6455): enough for the load
// tool to speak the Pusher protocol with little CPU and memory per
// connection, so that the figures measured are the server's.
type wsConn struct {
	nc  net.Conn
	br  *bufio.Reader
	buf []byte // reused payload buffer

	wmu sync.Mutex
}

// dialWS opens a WebSocket connection to a ws:// URL.
func dialWS(rawURL string, timeout time.Duration) (*wsConn, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "ws" {
		return nil, fmt.Errorf("want a ws:// URL, got %q", rawURL)
	}
	nc, err := net.DialTimeout("tcp", u.Host, timeout)
	if err != nil {
		return nil, err
	}
	_ = nc.SetDeadline(time.Now().Add(timeout))
	var k [16]byte
	_, _ = rand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	req := "GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
		"\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(nc, req); err != nil {
		nc.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(nc, 1024)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("handshake: %w", err)
	}
	resp.Body.Close()
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if resp.StatusCode != http.StatusSwitchingProtocols ||
		resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		nc.Close()
		return nil, fmt.Errorf("handshake refused: %s", resp.Status)
	}
	_ = nc.SetDeadline(time.Time{})
	return &wsConn{nc: nc, br: br}, nil
}

// errClosed is returned once the server sent a close frame.
var errClosed = errors.New("websocket closed by the server")

// readMessage returns the next data message; the slice is valid until the
// next call. Control frames are handled: pings answered, close reported.
func (c *wsConn) readMessage() ([]byte, error) {
	c.buf = c.buf[:0]
	for {
		var h [2]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return nil, err
		}
		fin, op := h[0]&0x80 != 0, h[0]&0x0f
		n := int64(h[1] & 0x7f)
		switch n {
		case 126:
			var e [2]byte
			if _, err := io.ReadFull(c.br, e[:]); err != nil {
				return nil, err
			}
			n = int64(binary.BigEndian.Uint16(e[:]))
		case 127:
			var e [8]byte
			if _, err := io.ReadFull(c.br, e[:]); err != nil {
				return nil, err
			}
			n = int64(binary.BigEndian.Uint64(e[:]))
		}
		if h[1]&0x80 != 0 || n > 1<<20 {
			return nil, errors.New("masked or oversized frame from the server")
		}
		start := len(c.buf)
		c.buf = append(c.buf, make([]byte, n)...)
		if _, err := io.ReadFull(c.br, c.buf[start:]); err != nil {
			return nil, err
		}
		switch op {
		case 0x8: // close
			_ = c.writeFrame(0x8, c.buf[start:])
			return nil, errClosed
		case 0x9: // ping
			payload := append([]byte(nil), c.buf[start:]...)
			c.buf = c.buf[:start]
			if err := c.writeFrame(0xA, payload); err != nil {
				return nil, err
			}
			continue
		case 0xA: // pong
			c.buf = c.buf[:start]
			continue
		}
		if fin {
			return c.buf, nil
		}
	}
}

// writeText sends a text message.
func (c *wsConn) writeText(p []byte) error { return c.writeFrame(0x1, p) }

// writeFrame writes one final, masked frame.
func (c *wsConn) writeFrame(op byte, p []byte) error {
	b := maskedFrame(op, p)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.nc.Write(b)
	return err
}

// maskedFrame is one final frame of opcode op with payload p, masked as a
// client must.
func maskedFrame(op byte, p []byte) []byte {
	b := make([]byte, 0, len(p)+14)
	b = append(b, 0x80|op)
	switch n := len(p); {
	case n <= 125:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	b = append(b, mask[:]...)
	for i, x := range p {
		b = append(b, x^mask[i&3])
	}
	return b
}

func (c *wsConn) Close() error { return c.nc.Close() }
