package sources

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"unicode/utf8"

	gojson "github.com/goccy/go-json"

	"github.com/buildbridge/buildbridge/builds"
)

// Error is an HTTP error answer, written as the API writes its errors:
// {"error":{"code","message"}}.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Errorf makes an Error.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// WriteJSON writes v as a JSON response with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	raw, err := json.Marshal(v)
	if err != nil {
		status, raw = http.StatusInternalServerError, []byte(`{"error":{"code":"internal","message":"encoding the response failed"}}`)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	w.Write(append(raw, '\n'))
}

// WriteError writes e as the JSON error response.
func WriteError(w http.ResponseWriter, e *Error) {
	WriteJSON(w, e.Status, map[string]*Error{"error": e})
}

// ReadBody reads a request body of at most limit bytes; a larger one is a
// 413 Error.
func ReadBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, *Error) {
	if r.ContentLength > limit {
		return nil, Errorf(http.StatusRequestEntityTooLarge, "body_too_large", "request body is larger than %d bytes", limit)
	}
	var body []byte
	var err error
	if n := r.ContentLength; n >= 0 {
		// The announced size: one allocation, and a body longer than it
		// announced is cut off by the server, not read on.
		body = make([]byte, n)
		_, err = io.ReadFull(r.Body, body)
	} else {
		body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	}
	var large *http.MaxBytesError
	switch {
	case errors.As(err, &large):
		return nil, Errorf(http.StatusRequestEntityTooLarge, "body_too_large", "request body is larger than %d bytes", limit)
	case err != nil:
		return nil, Errorf(http.StatusBadRequest, "unreadable_body", "reading the request body: %v", err)
	}
	return body, nil
}

// DecodeJSON decodes one JSON value into v; the Error names what failed
// and where.
func DecodeJSON(body []byte, v any) *Error {
	// Forge payloads are mostly what nobody reads (the repository object
	// in full, the sender, every commit), and encoding/json walks each
	// byte twice, once to validate and once to decode: about 31 µs for a
	// 5 KB push, 12 µs of it validating. go-json decodes in under 6 µs
	// but skips leniently, so the standard validator decides what is
	// JSON, and bodies that are not valid UTF-8 (encoding/json repairs
	// them, go-json keeps the bytes) or that go-json refuses take the
	// standard decoder, which also words the error. FuzzDecodeJSONAgrees
	// (sources/forge) checks that both paths agree.
	if utf8.Valid(body) && json.Valid(body) {
		if gojson.Unmarshal(body, v) == nil {
			return nil
		}
		// Whatever go-json filled in goes; the standard decoder decides.
		if rv := reflect.ValueOf(v); rv.Kind() == reflect.Pointer && !rv.IsNil() {
			rv.Elem().SetZero()
		}
	}
	err := json.Unmarshal(body, v)
	if err == nil {
		return nil
	}
	var (
		syn *json.SyntaxError
		typ *json.UnmarshalTypeError
	)
	switch {
	case len(body) == 0:
		return Errorf(http.StatusBadRequest, "invalid_json", "request body is empty; a JSON object is required")
	case errors.As(err, &syn):
		return Errorf(http.StatusBadRequest, "invalid_json", "malformed JSON at byte %d: %s", syn.Offset, syn.Error())
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "(the body)"
		}
		return Errorf(http.StatusBadRequest, "invalid_field", "field %q must be %s, not %s", field, typ.Type.String(), typ.Value)
	}
	return Errorf(http.StatusBadRequest, "invalid_json", "invalid JSON: %s", err.Error())
}

// BuildJSON is a queued build in a source's answer.
type BuildJSON struct {
	ID     int64  `json:"id"`
	Number int64  `json:"number"`
	Ref    string `json:"ref"`
	Branch string `json:"branch,omitempty"`
	SHA    string `json:"sha"`
}

// ResultJSON is a source's answer to an ingested push.
type ResultJSON struct {
	Duplicate  bool        `json:"duplicate"`
	Builds     []BuildJSON `json:"builds"`
	Skipped    []Skip      `json:"skipped"`
	Superseded []int64     `json:"superseded,omitempty"`
}

// JSON is the answer a source gives for r.
func (r Result) JSON() ResultJSON {
	out := ResultJSON{Duplicate: r.Duplicate, Builds: []BuildJSON{}, Skipped: r.Skipped}
	if out.Skipped == nil {
		out.Skipped = []Skip{}
	}
	for _, b := range r.Builds {
		out.Builds = append(out.Builds, showBuild(b))
	}
	for _, b := range r.Superseded {
		out.Superseded = append(out.Superseded, b.ID)
	}
	return out
}

func showBuild(b builds.Build) BuildJSON {
	return BuildJSON{ID: b.ID, Number: b.Number, Ref: b.Ref, Branch: b.Branch, SHA: b.SHA}
}
