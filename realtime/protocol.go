package realtime

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Pusher protocol error codes. 4000-4099: the client must not reconnect
// with the same parameters; 4100-4199: reconnect after a back-off;
// 4200-4299: reconnect at once; 4300-4399: other errors.
const (
	CodeAppNotFound         = 4001
	CodeInvalidVersion      = 4006
	CodeUnsupportedProtocol = 4007
	CodeNoProtocol          = 4008
	CodeUnauthorized        = 4009
	CodeOverCapacity        = 4100
	CodeReconnect           = 4200
	CodePongTimeout         = 4201
	// CodeBadMessage is sent in pusher:error for a message the server
	// cannot act on (malformed JSON, unknown event, too large, refused
	// client event); the connection stays open.
	CodeBadMessage  = 4300
	CodeRateLimited = 4301
)

// ProtocolVersion is the only protocol version the server speaks.
const ProtocolVersion = 7

// Channel name prefixes.
const (
	prefixPrivate      = "private-"
	prefixPresence     = "presence-"
	prefixEncrypted    = "private-encrypted-"
	prefixServerToUser = "#server-to-user-"
	prefixClientEvent  = "client-"
)

type channelKind uint8

const (
	kindPublic channelKind = iota
	kindPrivate
	kindEncrypted
	kindPresence
	kindServerToUser
)

func kindOf(name string) channelKind {
	switch {
	case strings.HasPrefix(name, prefixEncrypted):
		return kindEncrypted
	case strings.HasPrefix(name, prefixPrivate):
		return kindPrivate
	case strings.HasPrefix(name, prefixPresence):
		return kindPresence
	case strings.HasPrefix(name, prefixServerToUser):
		return kindServerToUser
	}
	return kindPublic
}

// signed reports whether subscribing needs an auth signature.
func (k channelKind) signed() bool {
	return k == kindPrivate || k == kindEncrypted || k == kindPresence
}

// validChannelName reports whether name is a channel clients may
// subscribe to: letters, digits and _-=@,.; up to MaxNameLength.
func validChannelName(name string) bool {
	if name == "" || len(name) > MaxNameLength {
		return false
	}
	for i := 0; i < len(name); i++ {
		b := name[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' ||
			strings.IndexByte("_-=@,.;", b) >= 0) {
			return false
		}
	}
	return true
}

// validPublishChannel also accepts #server-to-user-<id>.
func validPublishChannel(name string) bool {
	if id, ok := strings.CutPrefix(name, prefixServerToUser); ok {
		return validUserID(id)
	}
	return validChannelName(name)
}

func validUserID(id string) bool {
	return id != "" && len(id) <= MaxNameLength && utf8.ValidString(id)
}

func validEventName(name string) bool {
	return name != "" && len(name) <= MaxNameLength && utf8.ValidString(name)
}

// sign returns hex(HMAC-SHA256(secret, msg)).
func sign(secret, msg string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(msg))
	return hex.EncodeToString(m.Sum(nil))
}

// checkSignature compares a hex signature with HMAC-SHA256(secret, msg)
// in constant time.
func checkSignature(secret, msg, sigHex string) bool {
	got, err := hex.DecodeString(sigHex)
	if err != nil || len(got) != sha256.Size {
		return false
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(msg))
	return hmac.Equal(m.Sum(nil), got)
}

// checkAuth verifies a client-supplied "key:signature" token for msg.
func checkAuth(a *App, auth, msg string) bool {
	key, sig, ok := strings.Cut(auth, ":")
	if !ok || !hmac.Equal([]byte(key), []byte(a.Key)) {
		return false
	}
	return checkSignature(a.Secret, msg, sig)
}

// ChannelAuth returns the auth token a client sends to subscribe socketID
// to a private, encrypted or presence channel (channelData is the
// presence channel_data, "" otherwise): key:hex(HMAC-SHA256(secret,
// socket_id:channel[:channel_data])). Auth endpoints of the host use it.
func ChannelAuth(key, secret, socketID, channel, channelData string) string {
	msg := socketID + ":" + channel
	if channelData != "" {
		msg += ":" + channelData
	}
	return key + ":" + sign(secret, msg)
}

// UserAuth returns the auth token of a pusher:signin for userData:
// key:hex(HMAC-SHA256(secret, socket_id::user::user_data)).
func UserAuth(key, secret, socketID, userData string) string {
	return key + ":" + sign(secret, socketID+"::user::"+userData)
}

// inMessage is one message received from a client.
type inMessage struct {
	Event   string          `json:"event"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
}

// subscribeData is the data of pusher:subscribe.
type subscribeData struct {
	Channel     string `json:"channel"`
	Auth        string `json:"auth"`
	ChannelData string `json:"channel_data"`
}

// signinData is the data of pusher:signin.
type signinData struct {
	Auth     string `json:"auth"`
	UserData string `json:"user_data"`
}

// decodeData decodes a message's data into v. Clients send data as an
// object or as a string holding JSON; both are accepted.
func decodeData(raw json.RawMessage, v any) error {
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return err
		}
		raw = json.RawMessage(s)
	}
	return json.Unmarshal(raw, v)
}

// dataString turns a client event's data into the string form events are
// relayed in: a JSON string is unquoted, anything else kept as JSON text.
func dataString(raw json.RawMessage) string {
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return s
		}
	}
	return string(raw)
}

// presenceMember is the parsed channel_data of a presence subscription.
type presenceMember struct {
	UserID   string
	UserInfo json.RawMessage
}

// parseChannelData reads user_id (a string or a number) and user_info.
func parseChannelData(s string) (presenceMember, bool) {
	var cd struct {
		UserID   json.RawMessage `json:"user_id"`
		UserInfo json.RawMessage `json:"user_info"`
	}
	if json.Unmarshal([]byte(s), &cd) != nil || len(cd.UserID) == 0 {
		return presenceMember{}, false
	}
	var id string
	switch cd.UserID[0] {
	case '"':
		if json.Unmarshal(cd.UserID, &id) != nil {
			return presenceMember{}, false
		}
	default:
		var n json.Number
		if json.Unmarshal(cd.UserID, &n) != nil {
			return presenceMember{}, false
		}
		id = n.String()
	}
	if !validUserID(id) {
		return presenceMember{}, false
	}
	info := cd.UserInfo
	if len(info) == 0 {
		info = json.RawMessage("null")
	}
	return presenceMember{UserID: id, UserInfo: info}, true
}

// Frame encoding. Frames are built once per published event and shared by
// every subscriber's send queue, so they must never be modified.

// eventFrame encodes {"event","channel","data"[,"user_id"]} with data as
// a JSON string, the form pusher-js expects.
func eventFrame(event, channel, data, userID string) []byte {
	b := make([]byte, 0, 40+len(event)+len(channel)+len(data)+len(data)/8+len(userID))
	b = append(b, `{"event":`...)
	b = appendJSONString(b, event)
	if channel != "" {
		b = append(b, `,"channel":`...)
		b = appendJSONString(b, channel)
	}
	b = append(b, `,"data":`...)
	b = appendJSONString(b, data)
	if userID != "" {
		b = append(b, `,"user_id":`...)
		b = appendJSONString(b, userID)
	}
	return append(b, '}')
}

// errorFrame encodes pusher:error; code 0 is sent as null.
func errorFrame(code int, message string) []byte {
	b := make([]byte, 0, 64+len(message))
	b = append(b, `{"event":"pusher:error","data":{"code":`...)
	if code == 0 {
		b = append(b, "null"...)
	} else {
		b = strconv.AppendInt(b, int64(code), 10)
	}
	b = append(b, `,"message":`...)
	b = appendJSONString(b, message)
	return append(b, "}}"...)
}

// subscriptionErrorFrame encodes pusher:subscription_error in the shape
// pusher-js itself emits for a failed authorization.
func subscriptionErrorFrame(channel, typ, message string, status int) []byte {
	data, _ := json.Marshal(struct {
		Type   string `json:"type"`
		Error  string `json:"error"`
		Status int    `json:"status"`
	}{typ, message, status})
	return eventFrame("pusher:subscription_error", channel, string(data), "")
}

// WebSocket frames. The server writes data frames to the connection
// itself: each event is framed once and the same bytes are written to
// every subscriber (see conn.writeLoop).
const (
	opText = 0x1
	opPong = 0xA
)

// wsFrame returns a final, unmasked server frame holding payload.
func wsFrame(op byte, payload []byte) []byte {
	n := len(payload)
	b := make([]byte, 0, n+10)
	b = append(b, 0x80|op)
	switch {
	case n <= 125:
		b = append(b, byte(n))
	case n <= 0xffff:
		b = append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127, byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32),
			byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(b, payload...)
}

// textFrame frames a JSON message.
func textFrame(payload []byte) []byte { return wsFrame(opText, payload) }

var (
	pingFrame = textFrame([]byte(`{"event":"pusher:ping","data":{}}`))
	pongFrame = textFrame([]byte(`{"event":"pusher:pong","data":{}}`))
)

// appendJSONString appends s as a JSON string, escaping like
// encoding/json without HTML escaping; invalid UTF-8 becomes U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		// U+2028 and U+2029 break JavaScript string literals.
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
