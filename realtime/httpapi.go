package realtime

import (
	"crypto/md5"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// maxAPIBody bounds an HTTP API request body: a full batch of 10 events
// of 10 KiB each, escaped, fits.
const maxAPIBody = 256 << 10

// authTimestampWindow is how far auth_timestamp may be from now.
const authTimestampWindow = 600 * time.Second

// apiError is an HTTP API failure: a status and a message for the caller.
type apiError struct {
	Status  int
	Code    string
	Message string
}

func (e *apiError) Error() string { return e.Message }

func unauthorized(msg string) *apiError {
	return &apiError{Status: http.StatusUnauthorized, Code: "unauthorized", Message: msg}
}

func badRequest(msg string) *apiError {
	return &apiError{Status: http.StatusBadRequest, Code: "bad_request", Message: msg}
}

func (s *Server) apiRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /apps/{app_id}/events", s.api(s.apiEvents))
	mux.HandleFunc("POST /apps/{app_id}/batch_events", s.api(s.apiBatchEvents))
	mux.HandleFunc("GET /apps/{app_id}/channels", s.api(s.apiChannels))
	mux.HandleFunc("GET /apps/{app_id}/channels/{channel_name}", s.api(s.apiChannel))
	mux.HandleFunc("GET /apps/{app_id}/channels/{channel_name}/users", s.api(s.apiChannelUsers))
	mux.HandleFunc("POST /apps/{app_id}/users/{user_id}/terminate_connections", s.api(s.apiTerminate))
}

type apiRequest struct {
	app   *app
	r     *http.Request
	query map[string]string
	body  []byte
}

type apiHandler func(req *apiRequest) (any, *apiError)

// api wraps a handler with app lookup, body limits and signature checks.
func (s *Server) api(h apiHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a := s.byID[r.PathValue("app_id")]
		if a == nil {
			writeAPIError(w, &apiError{Status: http.StatusNotFound, Code: "not_found", Message: "unknown app id"})
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxAPIBody+1))
		if err != nil {
			writeAPIError(w, badRequest("reading body: "+err.Error()))
			return
		}
		if len(body) > maxAPIBody {
			writeAPIError(w, &apiError{Status: http.StatusRequestEntityTooLarge, Code: "too_large",
				Message: "request body over " + itoa(maxAPIBody) + " bytes"})
			return
		}
		q, aerr := verifyRequest(&a.cfg, r.Method, r.URL.Path, r.URL.RawQuery, body, s.cfg.Now())
		if aerr != nil {
			writeAPIError(w, aerr)
			return
		}
		resp, aerr := h(&apiRequest{app: a, r: r, query: q, body: body})
		if aerr != nil {
			writeAPIError(w, aerr)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(resp)
	}
}

func writeAPIError(w http.ResponseWriter, e *apiError) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": e.Code, "message": e.Message}})
}

// verifyRequest checks the Pusher signature of an HTTP API request and
// returns its query parameters. The signature is hex(HMAC-SHA256(secret,
// METHOD\nPATH\nQUERY)) where QUERY is every parameter but auth_signature,
// with lower-cased keys, sorted, joined as k=v with &.
func verifyRequest(a *App, method, path, rawQuery string, body []byte, now time.Time) (map[string]string, *apiError) {
	q := make(map[string]string)
	for part := range strings.SplitSeq(rawQuery, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		k, err1 := url.QueryUnescape(k)
		v, err2 := url.QueryUnescape(v)
		if err1 != nil || err2 != nil {
			return nil, badRequest("malformed query string")
		}
		k = strings.ToLower(k)
		if _, dup := q[k]; dup {
			return nil, badRequest("query parameter " + quote(k) + " given twice")
		}
		q[k] = v
	}
	for _, k := range []string{"auth_key", "auth_timestamp", "auth_version", "auth_signature"} {
		if q[k] == "" {
			return nil, unauthorized("missing " + k)
		}
	}
	if subtle.ConstantTimeCompare([]byte(q["auth_key"]), []byte(a.Key)) != 1 {
		return nil, unauthorized("unknown auth_key")
	}
	if q["auth_version"] != "1.0" {
		return nil, unauthorized("unsupported auth_version " + quote(q["auth_version"]) + ", want 1.0")
	}
	ts, err := strconv.ParseInt(q["auth_timestamp"], 10, 64)
	if err != nil {
		return nil, unauthorized("auth_timestamp is not a number")
	}
	if d := now.Sub(time.Unix(ts, 0)); d > authTimestampWindow || d < -authTimestampWindow {
		return nil, unauthorized("auth_timestamp expired: it must be within 600 seconds of the server time " +
			itoa(now.Unix()))
	}
	if md, ok := q["body_md5"]; ok || len(body) > 0 {
		sum := md5.Sum(body)
		if subtle.ConstantTimeCompare([]byte(strings.ToLower(md)), []byte(hex.EncodeToString(sum[:]))) != 1 {
			return nil, unauthorized("body_md5 does not match the body")
		}
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		if k != "auth_signature" {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var sb strings.Builder
	sb.WriteString(method)
	sb.WriteByte('\n')
	sb.WriteString(path)
	sb.WriteByte('\n')
	for i, k := range keys {
		if i > 0 {
			sb.WriteByte('&')
		}
		sb.WriteString(k)
		sb.WriteByte('=')
		sb.WriteString(q[k])
	}
	if !checkSignature(a.Secret, sb.String(), q["auth_signature"]) {
		return nil, unauthorized("invalid signature: expected HMAC-SHA256 hex digest of " + quote(sb.String()))
	}
	return q, nil
}

// SignRequest returns the query string (auth parameters included) that
// signs an HTTP API request as the Pusher server libraries do. params may
// be nil; body is the request body (nil for GET).
func SignRequest(key, secret, method, path string, params map[string]string, body []byte, now time.Time) string {
	q := map[string]string{"auth_key": key, "auth_timestamp": itoa(now.Unix()), "auth_version": "1.0"}
	if len(body) > 0 {
		sum := md5.Sum(body)
		q["body_md5"] = hex.EncodeToString(sum[:])
	}
	for k, v := range params {
		q[strings.ToLower(k)] = v
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var toSign, out strings.Builder
	for i, k := range keys {
		if i > 0 {
			toSign.WriteByte('&')
			out.WriteByte('&')
		}
		toSign.WriteString(k + "=" + q[k])
		out.WriteString(url.QueryEscape(k) + "=" + url.QueryEscape(q[k]))
	}
	sig := sign(secret, method+"\n"+path+"\n"+toSign.String())
	return out.String() + "&auth_signature=" + sig
}

// eventBody is one event of POST events or batch_events.
type eventBody struct {
	Name     string          `json:"name"`
	Data     json.RawMessage `json:"data"`
	Channels []string        `json:"channels"`
	Channel  string          `json:"channel"`
	SocketID string          `json:"socket_id"`
	Info     string          `json:"info"`
}

// channelAttrs is the per-channel info of API responses.
type channelAttrs struct {
	UserCount         *int `json:"user_count,omitempty"`
	SubscriptionCount *int `json:"subscription_count,omitempty"`
}

// parseInfo splits an info parameter into its attributes.
func parseInfo(info string) (userCount, subCount bool, err *apiError) {
	if info == "" {
		return false, false, nil
	}
	for attr := range strings.SplitSeq(info, ",") {
		switch strings.TrimSpace(attr) {
		case "user_count":
			userCount = true
		case "subscription_count":
			subCount = true
		default:
			return false, false, badRequest("unknown info attribute " + quote(attr))
		}
	}
	return userCount, subCount, nil
}

func attrsOf(ci ChannelInfo, userCount, subCount bool) channelAttrs {
	var at channelAttrs
	if userCount && kindOf(ci.Name) == kindPresence {
		n := ci.UserCount
		at.UserCount = &n
	}
	if subCount {
		n := ci.SubscriptionCount
		at.SubscriptionCount = &n
	}
	return at
}

// checkEvent validates one event and returns it as a broker message.
func checkEvent(a *app, ev *eventBody) (Message, *apiError) {
	channels := ev.Channels
	if ev.Channel != "" {
		if len(channels) > 0 {
			return Message{}, badRequest("give channel or channels, not both")
		}
		channels = []string{ev.Channel}
	}
	var data string
	switch {
	case len(ev.Data) == 0 || string(ev.Data) == "null":
		return Message{}, badRequest("missing data")
	case ev.Data[0] == '"':
		if err := json.Unmarshal(ev.Data, &data); err != nil {
			return Message{}, badRequest("data: " + err.Error())
		}
	default:
		data = string(ev.Data) // lenient: a JSON value is relayed as its text
	}
	if len(data) > MaxEventDataSize {
		return Message{}, &apiError{Status: http.StatusRequestEntityTooLarge, Code: "too_large",
			Message: "event data is " + itoa(int64(len(data))) + " bytes, over the limit of " + itoa(MaxEventDataSize)}
	}
	if err := checkPublish(channels, ev.Name, data, ev.SocketID); err != nil {
		return Message{}, badRequest(strings.TrimPrefix(err.Error(), "realtime: "))
	}
	return Message{Kind: KindEvent, AppID: a.cfg.ID, Channels: channels, Event: ev.Name, Data: data,
		ExcludeSocketID: ev.SocketID}, nil
}

func (s *Server) publishMessage(req *apiRequest, m Message) *apiError {
	if s.closing.Load() {
		return &apiError{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "server shutting down"}
	}
	if err := s.broker.Publish(req.r.Context(), m); err != nil {
		s.log.Error("realtime: publish", "app", m.AppID, "event", m.Event, "err", err)
		return &apiError{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "publish failed"}
	}
	return nil
}

func (s *Server) apiEvents(req *apiRequest) (any, *apiError) {
	var ev eventBody
	if err := json.Unmarshal(req.body, &ev); err != nil {
		return nil, badRequest("invalid JSON body: " + err.Error())
	}
	uc, sc, aerr := parseInfo(ev.Info)
	if aerr != nil {
		return nil, aerr
	}
	m, aerr := checkEvent(req.app, &ev)
	if aerr != nil {
		return nil, aerr
	}
	if aerr := s.publishMessage(req, m); aerr != nil {
		return nil, aerr
	}
	if !uc && !sc {
		return struct{}{}, nil
	}
	out := make(map[string]channelAttrs, len(m.Channels))
	for _, ch := range m.Channels {
		out[ch] = attrsOf(req.app.channelInfo(ch), uc, sc)
	}
	return map[string]any{"channels": out}, nil
}

func (s *Server) apiBatchEvents(req *apiRequest) (any, *apiError) {
	var body struct {
		Batch []eventBody `json:"batch"`
	}
	if err := json.Unmarshal(req.body, &body); err != nil {
		return nil, badRequest("invalid JSON body: " + err.Error())
	}
	if len(body.Batch) == 0 {
		return nil, badRequest("batch is empty")
	}
	if len(body.Batch) > MaxBatchEvents {
		return nil, badRequest("batch has " + itoa(int64(len(body.Batch))) + " events, the limit is " + itoa(MaxBatchEvents))
	}
	msgs := make([]Message, len(body.Batch))
	anyInfo := false
	for i := range body.Batch {
		ev := &body.Batch[i]
		if ev.Channel == "" || len(ev.Channels) > 0 {
			return nil, badRequest("batch[" + itoa(int64(i)) + "]: each event needs exactly one channel")
		}
		if _, _, aerr := parseInfo(ev.Info); aerr != nil {
			return nil, aerr
		}
		anyInfo = anyInfo || ev.Info != ""
		m, aerr := checkEvent(req.app, ev)
		if aerr != nil {
			aerr.Message = "batch[" + itoa(int64(i)) + "]: " + aerr.Message
			return nil, aerr
		}
		msgs[i] = m
	}
	for _, m := range msgs {
		if aerr := s.publishMessage(req, m); aerr != nil {
			return nil, aerr
		}
	}
	if !anyInfo {
		return struct{}{}, nil
	}
	out := make([]channelAttrs, len(msgs))
	for i, m := range msgs {
		uc, sc, _ := parseInfo(body.Batch[i].Info)
		out[i] = attrsOf(req.app.channelInfo(m.Channels[0]), uc, sc)
	}
	return map[string]any{"batch": out}, nil
}

func (s *Server) apiChannels(req *apiRequest) (any, *apiError) {
	prefix := req.query["filter_by_prefix"]
	uc, sc, aerr := parseInfo(req.query["info"])
	if aerr != nil {
		return nil, aerr
	}
	if uc && !strings.HasPrefix(prefix, prefixPresence) {
		return nil, badRequest("info=user_count needs filter_by_prefix=presence-")
	}
	out := make(map[string]channelAttrs)
	for _, ci := range req.app.channelList(prefix) {
		out[ci.Name] = attrsOf(ci, uc, sc)
	}
	return map[string]any{"channels": out}, nil
}

func (s *Server) apiChannel(req *apiRequest) (any, *apiError) {
	name := req.r.PathValue("channel_name")
	if !validChannelName(name) {
		return nil, badRequest("invalid channel name " + quote(name))
	}
	uc, sc, aerr := parseInfo(req.query["info"])
	if aerr != nil {
		return nil, aerr
	}
	if uc && kindOf(name) != kindPresence {
		return nil, badRequest("info=user_count is only for presence channels")
	}
	ci := req.app.channelInfo(name)
	at := attrsOf(ci, uc, sc)
	return struct {
		Occupied bool `json:"occupied"`
		channelAttrs
	}{ci.Occupied, at}, nil
}

func (s *Server) apiChannelUsers(req *apiRequest) (any, *apiError) {
	name := req.r.PathValue("channel_name")
	if !validChannelName(name) || kindOf(name) != kindPresence {
		return nil, badRequest("users can only be listed for presence channels")
	}
	type user struct {
		ID string `json:"id"`
	}
	ids := req.app.presenceUsers(name)
	users := make([]user, len(ids))
	for i, id := range ids {
		users[i] = user{id}
	}
	return map[string]any{"users": users}, nil
}

func (s *Server) apiTerminate(req *apiRequest) (any, *apiError) {
	id := req.r.PathValue("user_id")
	if !validUserID(id) {
		return nil, badRequest("invalid user id")
	}
	m := Message{Kind: KindTerminateUser, AppID: req.app.cfg.ID, UserID: id}
	if aerr := s.publishMessage(req, m); aerr != nil {
		return nil, aerr
	}
	return struct{}{}, nil
}
