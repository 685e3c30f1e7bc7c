// Package mailtest is a real SMTP server for tests (emersion/go-smtp) on
// loopback: it receives mail, optionally over STARTTLS or implicit TLS
// and with AUTH PLAIN, keeps every message with its envelope, answers
// scripted failures (a 451 at RCPT, a 550 at DATA, …), and parses
// messages back into their headers and MIME parts.
package mailtest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Config configures a Server.
type Config struct {
	// TLS, when set, offers STARTTLS with it; with Implicit, the listener
	// speaks TLS from the first byte (port 465 style).
	TLS      *tls.Config
	Implicit bool
	// Username and Password, when set, make AUTH PLAIN required.
	Username, Password string
}

// Server is a running SMTP server.
type Server struct {
	// Host and Port are where it listens (127.0.0.1 and a free port).
	Host string
	Port int

	cfg Config
	srv *smtp.Server
	ln  net.Listener

	mu       sync.Mutex
	messages []Message
	failures []Failure
	attempts int
	notify   chan struct{}
}

// Message is one mail received.
type Message struct {
	From string
	To   []string
	Data []byte
	// TLS reports whether the mail came over an encrypted connection, and
	// User who authenticated ("" without AUTH).
	TLS  bool
	User string
}

// Failure is a scripted refusal of one transaction, at Stage "MAIL",
// "RCPT" or "DATA", with an SMTP reply code and text.
type Failure struct {
	Stage   string
	Code    int
	Message string
}

// NewServer starts a server; Close stops it.
func NewServer(cfg Config) (*Server, error) {
	s := &Server{cfg: cfg, notify: make(chan struct{}, 1)}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		_, isTLS := c.TLSConnectionState()
		return &session{s: s, conn: c, tls: isTLS}, nil
	}))
	s.srv.Domain = "mail.test"
	s.srv.AllowInsecureAuth = cfg.TLS == nil
	s.srv.ReadTimeout, s.srv.WriteTimeout = 10*time.Second, 10*time.Second
	s.srv.MaxMessageBytes = 10 << 20
	s.srv.ErrorLog = log.New(io.Discard, "", 0)
	var err error
	if cfg.Implicit {
		if cfg.TLS == nil {
			return nil, errors.New("mailtest: Implicit needs TLS")
		}
		s.ln, err = tls.Listen("tcp", "127.0.0.1:0", cfg.TLS)
	} else {
		s.srv.TLSConfig = cfg.TLS
		s.ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		return nil, err
	}
	addr := s.ln.Addr().(*net.TCPAddr)
	s.Host, s.Port = "127.0.0.1", addr.Port
	go s.srv.Serve(s.ln)
	return s, nil
}

// Close stops the server.
func (s *Server) Close() error { return s.srv.Close() }

// Fail makes the next transactions fail, one failure each, in order.
func (s *Server) Fail(f ...Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures = append(s.failures, f...)
}

// Messages returns the mail received so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// Transactions counts the transactions started (MAIL FROM), failed or not.
func (s *Server) Transactions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts
}

// Wait waits until n messages arrived and returns them.
func (s *Server) Wait(n int, within time.Duration) ([]Message, error) {
	deadline := time.After(within)
	for {
		if m := s.Messages(); len(m) >= n {
			return m, nil
		}
		select {
		case <-s.notify:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			return s.Messages(), fmt.Errorf("mailtest: %d messages within %s, want %d", len(s.Messages()), within, n)
		}
	}
}

type session struct {
	s    *Server
	conn *smtp.Conn
	tls  bool
	user string
	fail *Failure
	from string
	to   []string
}

func (se *session) AuthMechanisms() []string {
	if se.s.cfg.Username == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (se *session) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, username, password string) error {
		if username != se.s.cfg.Username || password != se.s.cfg.Password {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
		}
		se.user = username
		return nil
	}), nil
}

func (se *session) failAt(stage string) error {
	if se.fail == nil || se.fail.Stage != stage {
		return nil
	}
	f := se.fail
	se.fail = nil
	ec, msg := smtp.EnhancedCode{f.Code / 100, 0, 0}, f.Message
	// A message that starts with an enhanced code ("4.7.1 …") gives it.
	if code, rest, ok := strings.Cut(msg, " "); ok {
		var a, b, c int
		if n, _ := fmt.Sscanf(code, "%d.%d.%d", &a, &b, &c); n == 3 {
			ec, msg = smtp.EnhancedCode{a, b, c}, rest
		}
	}
	return &smtp.SMTPError{Code: f.Code, EnhancedCode: ec, Message: msg}
}

func (se *session) Mail(from string, _ *smtp.MailOptions) error {
	if se.s.cfg.Username != "" && se.user == "" {
		return smtp.ErrAuthRequired
	}
	se.s.mu.Lock()
	se.s.attempts++
	if len(se.s.failures) > 0 {
		f := se.s.failures[0]
		se.s.failures = se.s.failures[1:]
		se.fail = &f
	}
	se.s.mu.Unlock()
	if err := se.failAt("MAIL"); err != nil {
		return err
	}
	se.from = from
	return nil
}

func (se *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if err := se.failAt("RCPT"); err != nil {
		return err
	}
	se.to = append(se.to, to)
	return nil
}

func (se *session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if err := se.failAt("DATA"); err != nil {
		return err
	}
	_, isTLS := se.conn.TLSConnectionState()
	m := Message{From: se.from, To: append([]string(nil), se.to...), Data: data, TLS: isTLS || se.tls, User: se.user}
	se.s.mu.Lock()
	se.s.messages = append(se.s.messages, m)
	se.s.mu.Unlock()
	select {
	case se.s.notify <- struct{}{}:
	default:
	}
	return nil
}

func (se *session) Reset()        { se.from, se.to, se.fail = "", nil, nil }
func (se *session) Logout() error { return nil }

// Parsed is a message read back: its headers and its text and HTML
// parts, decoded.
type Parsed struct {
	Header mail.Header
	// ContentType is the top-level media type (multipart/alternative, …).
	ContentType string
	Text, HTML  string
	// Parts counts the leaf parts.
	Parts int
}

// Parse reads a message back as a mail client does.
func (m Message) Parse() (*Parsed, error) {
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		return nil, fmt.Errorf("mailtest: not a message: %w", err)
	}
	p := &Parsed{Header: msg.Header}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil {
		return nil, fmt.Errorf("mailtest: Content-Type: %w", err)
	}
	p.ContentType = mt
	if err := p.walk(mt, params, msg.Header.Get("Content-Transfer-Encoding"), msg.Body); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Parsed) walk(mt string, params map[string]string, cte string, body io.Reader) error {
	if strings.HasPrefix(mt, "multipart/") {
		mr := multipart.NewReader(body, params["boundary"])
		for {
			part, err := mr.NextRawPart()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("mailtest: %s: %w", mt, err)
			}
			pmt, pparams, err := mime.ParseMediaType(part.Header.Get("Content-Type"))
			if err != nil {
				return fmt.Errorf("mailtest: part Content-Type: %w", err)
			}
			if err := p.walk(pmt, pparams, part.Header.Get("Content-Transfer-Encoding"), part); err != nil {
				return err
			}
		}
	}
	var r io.Reader = body
	switch strings.ToLower(cte) {
	case "quoted-printable":
		r = quotedprintable.NewReader(body)
	case "base64":
		r = newBase64Reader(body)
	}
	raw, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("mailtest: %s body: %w", mt, err)
	}
	p.Parts++
	switch mt {
	case "text/plain":
		p.Text += string(raw)
	case "text/html":
		p.HTML += string(raw)
	}
	return nil
}

// Subject is the decoded Subject header.
func (p *Parsed) Subject() string {
	s, err := new(mime.WordDecoder).DecodeHeader(p.Header.Get("Subject"))
	if err != nil {
		return p.Header.Get("Subject")
	}
	return s
}

// NewTLS makes a self-signed certificate for 127.0.0.1 and localhost:
// the server's TLS configuration and the pool a client trusts it with.
func NewTLS() (*tls.Config, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "mailtest"},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:        true, BasicConstraintsValid: true,
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}, pool, nil
}

// Addr is host:port.
func (s *Server) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// newBase64Reader decodes base64 that is split into lines.
func newBase64Reader(r io.Reader) io.Reader {
	return base64.NewDecoder(base64.StdEncoding, &lineSkipper{r: r})
}

// lineSkipper drops CR and LF.
type lineSkipper struct{ r io.Reader }

func (l *lineSkipper) Read(p []byte) (int, error) {
	for {
		n, err := l.r.Read(p)
		j := 0
		for _, c := range p[:n] {
			if c != '\r' && c != '\n' {
				p[j] = c
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}
