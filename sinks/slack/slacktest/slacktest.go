// Package slacktest is a fake Slack for tests, on a loopback HTTP server:
// the Web API methods buildbridge calls (chat.postMessage, chat.update,
// users.lookupByEmail, users.info), incoming webhooks and response URLs.
// It checks every request the way Slack does (the bot token, in the
// Authorization header or the token form field; the channel; the Block
// Kit structure and its limits) and answers as Slack answers, including
// its error codes, so a test sees what a real workspace would do. Tests
// script failures (rate limits with Retry-After, error codes, 5xx) and
// read back the messages and every request.
package slacktest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Server is a fake Slack workspace.
type Server struct {
	// URL is the server's base URL (http://127.0.0.1:port).
	URL string
	// Token is the bot token the Web API accepts.
	Token string

	srv *httptest.Server

	mu        sync.Mutex
	channels  map[string]*Channel // by id
	users     map[string]User     // by id
	messages  map[string][]*Message
	hooks     map[string]string // webhook path id → channel id
	failures  map[string][]Failure
	requests  []Request
	responses []Response
	problems  []string
	clock     int64
}

// Channel is a channel of the workspace.
type Channel struct {
	ID, Name string
	// Member is whether the bot is in the channel (not_in_channel
	// otherwise); Archived channels refuse messages.
	Member, Archived bool
}

// User is a member of the workspace.
type User struct {
	ID, Name, Email string
}

// Message is a message as the workspace holds it.
type Message struct {
	Channel, TS, ThreadTS string
	Text                  string
	Blocks                []map[string]any
	Attachments           []map[string]any
	Username, IconEmoji   string
	// Edits counts the chat.update calls that changed it.
	Edits int
	// Via is chat.postMessage or webhook.
	Via string
}

// Request is one request the server answered.
type Request struct {
	// Method is the Web API method (chat.postMessage, …), "webhook" or
	// "respond" (a response URL).
	Method string
	Form   url.Values
	Body   []byte
	// Error is the error code answered ("" for ok), Status the HTTP status.
	Error  string
	Status int
	Time   time.Time
}

// Response is a message posted to a response URL.
type Response struct {
	ID              string
	ResponseType    string `json:"response_type"`
	Text            string `json:"text"`
	ReplaceOriginal bool   `json:"replace_original"`
	Blocks          []map[string]any
}

// Failure is a scripted answer: an HTTP status (429 with RetryAfter
// seconds sends Retry-After) or, with status 0, an ok:false error code.
type Failure struct {
	Status     int
	RetryAfter int
	Error      string
}

// NewServer starts a fake workspace accepting token. Close it when done.
func NewServer(token string) *Server {
	s := &Server{Token: token, channels: map[string]*Channel{}, users: map[string]User{},
		messages: map[string][]*Message{}, hooks: map[string]string{}, failures: map[string][]Failure{},
		clock: time.Now().Unix() * 1_000_000}
	mux := http.NewServeMux()
	mux.HandleFunc("/api/{method}", s.api)
	mux.HandleFunc("POST /hooks/{id...}", s.webhook)
	mux.HandleFunc("POST /respond/{id}", s.respond)
	s.srv = httptest.NewServer(mux)
	s.URL = s.srv.URL
	return s
}

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

// APIURL is the Web API base URL to configure (api_url).
func (s *Server) APIURL() string { return s.URL + "/api/" }

// AddChannel adds a channel and returns its id.
func (s *Server) AddChannel(name string, member bool) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := fmt.Sprintf("C%08d", len(s.channels)+1)
	s.channels[id] = &Channel{ID: id, Name: strings.TrimPrefix(name, "#"), Member: member}
	return id
}

// ArchiveChannel archives a channel.
func (s *Server) ArchiveChannel(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.channels[id]; c != nil {
		c.Archived = true
	}
}

// AddUser adds a workspace member.
func (s *Server) AddUser(u User) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users[u.ID] = u
}

// NewWebhook makes an incoming webhook posting to a channel and returns
// its URL.
func (s *Server) NewWebhook(channelID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := fmt.Sprintf("T0001/B%04d/%s", len(s.hooks)+1, strconv.FormatInt(s.clock, 36))
	s.hooks[id] = channelID
	return s.URL + "/hooks/" + id
}

// RemoveWebhooks removes every incoming webhook (they answer 404
// no_service, as a revoked hook does).
func (s *Server) RemoveWebhooks() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hooks = map[string]string{}
}

// ResponseURL is a response URL, as Slack puts in slash commands and
// interactions.
func (s *Server) ResponseURL(id string) string { return s.URL + "/respond/" + id }

// Fail makes the next calls of method ("chat.postMessage", "webhook", …)
// answer the failures, one each, in order.
func (s *Server) Fail(method string, f ...Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures[method] = append(s.failures[method], f...)
}

// Messages returns the messages of a channel, oldest first (copies).
func (s *Server) Messages(channelID string) []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Message, 0, len(s.messages[channelID]))
	for _, m := range s.messages[channelID] {
		out = append(out, *m)
	}
	return out
}

// Requests returns every request answered so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Count is the number of requests of a method answered with ok.
func (s *Server) Count(method string) int {
	n := 0
	for _, r := range s.Requests() {
		if r.Method == method && r.Error == "" && r.Status == http.StatusOK {
			n++
		}
	}
	return n
}

// Responses returns the messages posted to response URLs.
func (s *Server) Responses() []Response {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Response(nil), s.responses...)
}

// Problems lists what Slack would have refused or warned about, in
// requests the server answered: a test expects none unless it sent them
// on purpose.
func (s *Server) Problems() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.problems...)
}

func (s *Server) nextTS() string {
	s.clock += 100
	return fmt.Sprintf("%d.%06d", s.clock/1_000_000, s.clock%1_000_000)
}

// api serves /api/{method}.
func (s *Server) api(w http.ResponseWriter, r *http.Request) {
	method := r.PathValue("method")
	body, _ := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	req := Request{Method: method, Body: body, Status: http.StatusOK, Time: time.Now()}
	form, token, perr := parseRequest(r, body)
	req.Form = form
	s.mu.Lock()
	defer s.mu.Unlock()
	defer func() { s.requests = append(s.requests, req) }()

	if f, ok := s.popFailure(method); ok {
		req.Status, req.Error = s.fail(w, f)
		return
	}
	answer := func(code string, fields map[string]any) {
		req.Error = code
		writeAPI(w, code, fields)
	}
	if perr != "" {
		answer(perr, nil)
		return
	}
	switch {
	case token == "":
		answer("not_authed", nil)
		return
	case token != s.Token:
		answer("invalid_auth", nil)
		return
	}
	switch method {
	case "chat.postMessage":
		ch, code := s.channelFor(form.Get("channel"))
		if code != "" {
			answer(code, nil)
			return
		}
		m, code, details := s.message(form)
		if code != "" {
			answer(code, metadata(details))
			return
		}
		m.Channel, m.TS, m.ThreadTS, m.Via = ch.ID, s.nextTS(), form.Get("thread_ts"), method
		if m.ThreadTS != "" && s.find(ch.ID, m.ThreadTS) == nil {
			s.problems = append(s.problems, "chat.postMessage: thread_ts "+m.ThreadTS+" is no message of "+ch.ID)
		}
		s.messages[ch.ID] = append(s.messages[ch.ID], m)
		answer("", map[string]any{"channel": ch.ID, "ts": m.TS, "message": map[string]any{"text": m.Text, "ts": m.TS}})
	case "chat.update":
		id := form.Get("channel")
		ch := s.channels[id]
		if ch == nil {
			// chat.update takes a channel id, never a name.
			answer("channel_not_found", nil)
			return
		}
		old := s.find(id, form.Get("ts"))
		if old == nil {
			answer("message_not_found", nil)
			return
		}
		m, code, details := s.message(form)
		if code != "" {
			answer(code, metadata(details))
			return
		}
		old.Text, old.Blocks, old.Attachments = m.Text, m.Blocks, m.Attachments
		old.Edits++
		answer("", map[string]any{"channel": id, "ts": old.TS, "text": old.Text})
	case "users.lookupByEmail":
		email := strings.ToLower(form.Get("email"))
		for _, u := range s.users {
			if strings.ToLower(u.Email) == email && email != "" {
				answer("", map[string]any{"user": userJSON(u)})
				return
			}
		}
		answer("users_not_found", nil)
	case "users.info":
		u, ok := s.users[form.Get("user")]
		if !ok {
			answer("user_not_found", nil)
			return
		}
		answer("", map[string]any{"user": userJSON(u)})
	default:
		answer("unknown_method", nil)
	}
}

// metadata is the response_metadata Slack adds to a refused message.
func metadata(details []string) map[string]any {
	if len(details) == 0 {
		return nil
	}
	msgs := make([]string, len(details))
	for i, d := range details {
		msgs[i] = "[ERROR] " + d
	}
	return map[string]any{"response_metadata": map[string]any{"messages": msgs}}
}

func userJSON(u User) map[string]any {
	return map[string]any{"id": u.ID, "name": u.Name, "profile": map[string]any{"email": u.Email, "real_name": u.Name}}
}

// parseRequest reads the arguments and the token of a Web API call as
// Slack does: a form (token in the body or the Authorization header) or
// JSON (token in the header only).
func parseRequest(r *http.Request, body []byte) (url.Values, string, string) {
	token := ""
	if a := r.Header.Get("Authorization"); strings.HasPrefix(a, "Bearer ") {
		token = strings.TrimPrefix(a, "Bearer ")
	}
	ct := r.Header.Get("Content-Type")
	form := url.Values{}
	switch {
	case r.Method == http.MethodGet:
		form = r.URL.Query()
	case strings.HasPrefix(ct, "application/x-www-form-urlencoded"):
		var err error
		if form, err = url.ParseQuery(string(body)); err != nil {
			return form, token, "invalid_form_data"
		}
	case strings.HasPrefix(ct, "application/json"):
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			return form, token, "invalid_json"
		}
		for k, v := range m {
			switch x := v.(type) {
			case string:
				form.Set(k, x)
			default:
				raw, _ := json.Marshal(x)
				form.Set(k, string(raw))
			}
		}
		return form, token, ""
	default:
		return form, token, "invalid_form_data"
	}
	if token == "" {
		token = form.Get("token")
	}
	return form, token, ""
}

func writeAPI(w http.ResponseWriter, code string, fields map[string]any) {
	out := map[string]any{"ok": code == ""}
	if code != "" {
		out["error"] = code
	}
	for k, v := range fields {
		if v != nil {
			out[k] = v
		}
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	json.NewEncoder(w).Encode(out)
}

func (s *Server) popFailure(method string) (Failure, bool) {
	l := s.failures[method]
	if len(l) == 0 {
		return Failure{}, false
	}
	s.failures[method] = l[1:]
	return l[0], true
}

// fail writes a scripted failure.
func (s *Server) fail(w http.ResponseWriter, f Failure) (int, string) {
	if f.Status == 0 {
		writeAPI(w, f.Error, nil)
		return http.StatusOK, f.Error
	}
	if f.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(f.RetryAfter))
	}
	w.WriteHeader(f.Status)
	io.WriteString(w, f.Error)
	return f.Status, f.Error
}

// channelFor finds the channel of chat.postMessage: an id, or a name with
// or without #.
func (s *Server) channelFor(ref string) (*Channel, string) {
	var ch *Channel
	if c := s.channels[ref]; c != nil {
		ch = c
	} else {
		name := strings.TrimPrefix(ref, "#")
		for _, c := range s.channels {
			if c.Name == name && name != "" {
				ch = c
			}
		}
	}
	switch {
	case ch == nil:
		return nil, "channel_not_found"
	case ch.Archived:
		return nil, "is_archived"
	case !ch.Member:
		return nil, "not_in_channel"
	}
	return ch, ""
}

func (s *Server) find(channel, ts string) *Message {
	for _, m := range s.messages[channel] {
		if m.TS == ts {
			return m
		}
	}
	return nil
}

// message checks a message's text, blocks and attachments as Slack does.
func (s *Server) message(form url.Values) (*Message, string, []string) {
	m := &Message{Text: form.Get("text"), Username: form.Get("username"), IconEmoji: form.Get("icon_emoji")}
	var errs []string
	if raw := form.Get("blocks"); raw != "" {
		if err := json.Unmarshal([]byte(raw), &m.Blocks); err != nil {
			return nil, "invalid_blocks_format", []string{err.Error()}
		}
		errs = append(errs, CheckBlocks("blocks", m.Blocks)...)
	}
	if raw := form.Get("attachments"); raw != "" {
		if err := json.Unmarshal([]byte(raw), &m.Attachments); err != nil {
			return nil, "invalid_attachments", []string{err.Error()}
		}
		errs = append(errs, checkAttachments(m.Attachments)...)
	}
	if len(errs) > 0 {
		return nil, "invalid_blocks", errs
	}
	if m.Text == "" && len(m.Blocks) == 0 && len(m.Attachments) == 0 {
		return nil, "no_text", nil
	}
	if len([]rune(m.Text)) > 40000 {
		return nil, "msg_too_long", nil
	}
	if m.Text == "" && len(m.Blocks) > 0 {
		// Slack accepts it, but warns: notifications show nothing.
		s.problems = append(s.problems, "message with blocks and no text: missing_text_or_fallback")
	}
	for _, a := range m.Attachments {
		if a["fallback"] == nil && a["text"] == nil && m.Text == "" {
			s.problems = append(s.problems, "attachment without fallback or text and no message text: missing_text_or_fallback")
		}
	}
	return m, "", nil
}

func checkAttachments(list []map[string]any) []string {
	var errs []string
	if len(list) > 100 {
		errs = append(errs, "too_many_attachments")
	}
	for i, a := range list {
		p := fmt.Sprintf("attachments[%d]", i)
		if c, ok := a["color"].(string); ok && c != "" && !validColor(c) {
			errs = append(errs, p+".color: not a hex colour or good, warning, danger")
		}
		if b, ok := a["blocks"]; ok {
			raw, _ := json.Marshal(b)
			var blocks []map[string]any
			if err := json.Unmarshal(raw, &blocks); err != nil {
				errs = append(errs, p+".blocks: must be an array of objects")
				continue
			}
			errs = append(errs, CheckBlocks(p+".blocks", blocks)...)
		}
	}
	return errs
}

func validColor(c string) bool {
	switch c {
	case "good", "warning", "danger":
		return true
	}
	c = strings.TrimPrefix(c, "#")
	if len(c) != 6 && len(c) != 3 {
		return false
	}
	_, err := strconv.ParseUint(c, 16, 32)
	return err == nil
}

// CheckBlocks checks a list of Block Kit layout blocks against Slack's
// rules and limits, and returns every problem, each prefixed by where it
// is.
func CheckBlocks(path string, blocks []map[string]any) []string {
	var errs []string
	bad := func(p, format string, args ...any) { errs = append(errs, p+": "+fmt.Sprintf(format, args...)) }
	if len(blocks) > 50 {
		bad(path, "more than 50 blocks")
	}
	ids, actionIDs := map[string]bool{}, map[string]bool{}
	for i, b := range blocks {
		p := fmt.Sprintf("%s[%d]", path, i)
		if id, ok := b["block_id"].(string); ok {
			if id == "" || len(id) > 255 || ids[id] {
				bad(p, "block_id %q empty, too long or repeated", id)
			}
			ids[id] = true
		}
		switch typ, _ := b["type"].(string); typ {
		case "section":
			text, hasText := b["text"]
			fields, hasFields := b["fields"].([]any)
			if !hasText && !hasFields {
				bad(p, "a section needs text or fields")
			}
			if hasText {
				errs = append(errs, checkText(p+".text", text, 3000, false)...)
			}
			if len(fields) > 10 {
				bad(p+".fields", "more than 10 fields")
			}
			for j, f := range fields {
				errs = append(errs, checkText(fmt.Sprintf("%s.fields[%d]", p, j), f, 2000, false)...)
			}
			if acc, ok := b["accessory"].(map[string]any); ok {
				errs = append(errs, checkElement(p+".accessory", acc, actionIDs)...)
			}
		case "header":
			errs = append(errs, checkText(p+".text", b["text"], 150, true)...)
		case "divider":
		case "context":
			els, _ := b["elements"].([]any)
			if len(els) == 0 || len(els) > 10 {
				bad(p+".elements", "a context needs 1 to 10 elements, got %d", len(els))
			}
			for j, e := range els {
				em, _ := e.(map[string]any)
				if em["type"] == "image" {
					if em["image_url"] == nil || em["alt_text"] == nil {
						bad(fmt.Sprintf("%s.elements[%d]", p, j), "an image needs image_url and alt_text")
					}
					continue
				}
				errs = append(errs, checkText(fmt.Sprintf("%s.elements[%d]", p, j), e, 3000, false)...)
			}
		case "actions":
			els, _ := b["elements"].([]any)
			if len(els) == 0 || len(els) > 25 {
				bad(p+".elements", "actions need 1 to 25 elements, got %d", len(els))
			}
			for j, e := range els {
				em, _ := e.(map[string]any)
				errs = append(errs, checkElement(fmt.Sprintf("%s.elements[%d]", p, j), em, actionIDs)...)
			}
		case "image", "input", "rich_text", "markdown", "file", "video", "table":
		case "":
			bad(p, "block without a type")
		default:
			bad(p, "unknown block type %q", typ)
		}
	}
	return errs
}

func checkText(p string, v any, max int, plainOnly bool) []string {
	t, ok := v.(map[string]any)
	if !ok {
		return []string{p + ": must be a text object"}
	}
	typ, _ := t["type"].(string)
	text, _ := t["text"].(string)
	var errs []string
	switch {
	case typ != "plain_text" && typ != "mrkdwn":
		errs = append(errs, fmt.Sprintf("%s.type: %q is not plain_text or mrkdwn", p, typ))
	case plainOnly && typ != "plain_text":
		errs = append(errs, p+".type: must be plain_text")
	}
	if text == "" {
		errs = append(errs, p+".text: must not be empty")
	}
	if n := len([]rune(text)); n > max {
		errs = append(errs, fmt.Sprintf("%s.text: %d characters, more than %d", p, n, max))
	}
	return errs
}

func checkElement(p string, e map[string]any, actionIDs map[string]bool) []string {
	var errs []string
	typ, _ := e["type"].(string)
	if id, ok := e["action_id"].(string); ok {
		if id == "" || len(id) > 255 || actionIDs[id] {
			errs = append(errs, fmt.Sprintf("%s.action_id: %q empty, too long or repeated", p, id))
		}
		actionIDs[id] = true
	}
	switch typ {
	case "button":
		errs = append(errs, checkText(p+".text", e["text"], 75, true)...)
		if u, ok := e["url"].(string); ok {
			if len(u) > 3000 {
				errs = append(errs, p+".url: more than 3000 characters")
			}
			if pu, err := url.Parse(u); err != nil || pu.Host == "" || (pu.Scheme != "http" && pu.Scheme != "https") {
				errs = append(errs, fmt.Sprintf("%s.url: %q is not an http(s) URL", p, u))
			}
		}
		if v, ok := e["value"].(string); ok && len(v) > 2000 {
			errs = append(errs, p+".value: more than 2000 characters")
		}
		if st, ok := e["style"].(string); ok && st != "primary" && st != "danger" {
			errs = append(errs, fmt.Sprintf("%s.style: %q is not primary or danger", p, st))
		}
	case "static_select", "overflow", "datepicker", "image", "users_select", "conversations_select", "channels_select":
	default:
		errs = append(errs, fmt.Sprintf("%s: unknown element type %q", p, typ))
	}
	return errs
}

// webhook serves incoming webhooks: POST /hooks/T…/B…/….
func (s *Server) webhook(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	s.mu.Lock()
	defer s.mu.Unlock()
	req := Request{Method: "webhook", Body: body, Status: http.StatusOK, Time: time.Now()}
	defer func() { s.requests = append(s.requests, req) }()
	plain := func(status int, text string) {
		req.Status = status
		if status != http.StatusOK {
			req.Error = text
		}
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(status)
		io.WriteString(w, text)
	}
	if f, ok := s.popFailure("webhook"); ok {
		req.Status, req.Error = s.fail(w, f)
		return
	}
	chID, ok := s.hooks[r.PathValue("id")]
	if !ok {
		plain(http.StatusNotFound, "no_service")
		return
	}
	if !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		plain(http.StatusBadRequest, "invalid_payload")
		return
	}
	form, code := jsonForm(body)
	if code != "" {
		plain(http.StatusBadRequest, code)
		return
	}
	ch := s.channels[chID]
	if ch == nil {
		plain(http.StatusNotFound, "channel_not_found")
		return
	}
	if ch.Archived {
		plain(http.StatusGone, "channel_is_archived")
		return
	}
	m, code, _ := s.message(form)
	if code != "" {
		plain(http.StatusBadRequest, code)
		return
	}
	m.Channel, m.TS, m.Via = ch.ID, s.nextTS(), "webhook"
	s.messages[ch.ID] = append(s.messages[ch.ID], m)
	plain(http.StatusOK, "ok")
}

// jsonForm turns a JSON message into form values (blocks and
// attachments as JSON text), as Slack reads webhook payloads.
func jsonForm(body []byte) (url.Values, string) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, "invalid_payload"
	}
	form := url.Values{}
	for k, v := range m {
		var s string
		if json.Unmarshal(v, &s) == nil {
			form.Set(k, s)
			continue
		}
		form.Set(k, string(v))
	}
	return form, ""
}

// respond serves response URLs: a JSON message for the user who sent a
// command or clicked a button.
func (s *Server) respond(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	s.mu.Lock()
	defer s.mu.Unlock()
	req := Request{Method: "respond", Body: body, Status: http.StatusOK, Time: time.Now()}
	defer func() { s.requests = append(s.requests, req) }()
	var resp Response
	if err := json.Unmarshal(body, &resp); err != nil || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		req.Status, req.Error = http.StatusBadRequest, "invalid_payload"
		http.Error(w, "invalid_payload", http.StatusBadRequest)
		return
	}
	var raw struct {
		Blocks []map[string]any `json:"blocks"`
	}
	json.Unmarshal(body, &raw)
	resp.Blocks = raw.Blocks
	if resp.ResponseType != "" && resp.ResponseType != "ephemeral" && resp.ResponseType != "in_channel" {
		s.problems = append(s.problems, "respond: response_type "+resp.ResponseType)
	}
	if errs := CheckBlocks("blocks", resp.Blocks); len(errs) > 0 {
		s.problems = append(s.problems, errs...)
	}
	if resp.Text == "" && len(resp.Blocks) == 0 {
		req.Status, req.Error = http.StatusBadRequest, "no_text"
		http.Error(w, "no_text", http.StatusBadRequest)
		return
	}
	resp.ID = r.PathValue("id")
	s.responses = append(s.responses, resp)
	io.WriteString(w, "ok")
}

// Texts returns every text of a message (its text, and the text of its
// blocks and of its attachments' blocks), for assertions.
func (m Message) Texts() string {
	var parts []string
	if m.Text != "" {
		parts = append(parts, m.Text)
	}
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			keys := make([]string, 0, len(x))
			for k := range x {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				if t, ok := x[k].(string); ok && k == "text" {
					parts = append(parts, t)
					continue
				}
				walk(x[k])
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	for _, b := range m.Blocks {
		walk(b)
	}
	for _, a := range m.Attachments {
		walk(a)
	}
	return strings.Join(parts, "\n")
}

// Button returns the button of a message (in its blocks or its
// attachments' blocks) with that action id, or nil.
func (m Message) Button(actionID string) map[string]any {
	var found map[string]any
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if x["type"] == "button" && x["action_id"] == actionID && found == nil {
				found = x
			}
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	for _, b := range m.Blocks {
		walk(b)
	}
	for _, a := range m.Attachments {
		walk(a)
	}
	return found
}
