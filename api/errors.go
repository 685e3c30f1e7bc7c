package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/store"
)

// Error is the body of every error response: {"error":{"code","message"}}.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

func errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// fail writes err as a JSON error, choosing the status from its kind.
func (a *API) fail(c *gin.Context, err error) {
	var e *Error
	switch {
	case errors.As(err, &e):
	case errors.Is(err, store.ErrNotFound):
		e = errorf(http.StatusNotFound, "not_found", "%s", err.Error())
	case errors.Is(err, store.ErrConflict):
		e = errorf(http.StatusConflict, "conflict", "%s", err.Error())
	case errors.Is(err, builds.ErrTransition):
		e = errorf(http.StatusConflict, "invalid_transition", "%s", err.Error())
	default:
		a.cfg.Logger.Error("request failed", "method", c.Request.Method, "path", c.FullPath(), "err", err)
		e = errorf(http.StatusInternalServerError, "internal", "internal error; the server log has the details")
	}
	c.AbortWithStatusJSON(e.Status, gin.H{"error": e})
}

// decode reads a JSON body into v: bounded in size, unknown fields refused,
// and every error naming what was wrong.
func (a *API) decode(c *gin.Context, v any) error {
	r := http.MaxBytesReader(c.Writer, c.Request.Body, a.cfg.MaxBodyBytes)
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err, a.cfg.MaxBodyBytes)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errorf(http.StatusBadRequest, "invalid_json", "request body must hold one JSON object and nothing after it")
	}
	return nil
}

func jsonError(err error, limit int64) *Error {
	var (
		syn   *json.SyntaxError
		typ   *json.UnmarshalTypeError
		large *http.MaxBytesError
	)
	switch {
	case errors.As(err, &large):
		return errorf(http.StatusRequestEntityTooLarge, "body_too_large", "request body is larger than %d bytes", limit)
	case errors.As(err, &syn):
		return errorf(http.StatusBadRequest, "invalid_json", "malformed JSON at byte %d: %s", syn.Offset, syn.Error())
	case errors.As(err, &typ):
		return errorf(http.StatusBadRequest, "invalid_field", "field %q must be %s, not %s", typ.Field, typ.Type.String(), typ.Value)
	case errors.Is(err, io.EOF):
		return errorf(http.StatusBadRequest, "invalid_json", "request body is empty; a JSON object is required")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errorf(http.StatusBadRequest, "invalid_json", "request body ends in the middle of the JSON")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return errorf(http.StatusBadRequest, "unknown_field", "unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return errorf(http.StatusBadRequest, "invalid_json", "invalid JSON: %s", err.Error())
}
