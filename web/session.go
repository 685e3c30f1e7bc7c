package web

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/buildbridge/buildbridge/api"
	"github.com/buildbridge/buildbridge/store"
)

// CSRFHeader carries the session's CSRF token on state-changing requests
// made with the session cookie.
const CSRFHeader = "X-CSRF-Token"

// csrfToken derives the session's CSRF token from its secret: the server
// needs to store nothing more, and a page on another origin, which cannot
// read the cookie or GET /session, cannot know it.
func csrfToken(secret string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("buildbridge csrf v1"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// SessionUser authenticates a request by its session cookie, for the API
// (it implements api.Sessions). A request without the cookie is not this
// method's business (ok false, nil error). A state-changing request must
// also carry the session's CSRF token in the X-CSRF-Token header and must
// not come from another origin.
func (h *Handler) SessionUser(r *http.Request) (store.User, bool, error) {
	c, err := r.Cookie(h.cookie)
	if err != nil || c.Value == "" {
		return store.User{}, false, nil
	}
	u, _, err := h.cfg.Store.SessionUser(r.Context(), c.Value)
	if errors.Is(err, store.ErrBadSession) {
		return store.User{}, false, api.NewError(http.StatusUnauthorized, "session_expired", "your session has expired or was signed out; sign in again")
	}
	if err != nil {
		return store.User{}, false, err
	}
	if !safeMethod(r.Method) {
		if err := h.xorigin.Check(r); err != nil {
			return store.User{}, false, api.NewError(http.StatusForbidden, "csrf_failed", "cross-origin request refused")
		}
		got := r.Header.Get(CSRFHeader)
		if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(csrfToken(c.Value))) != 1 {
			return store.User{}, false, api.NewError(http.StatusForbidden, "csrf_failed",
				"a request made with the session cookie must carry the session's CSRF token in the %s header", CSRFHeader)
		}
	}
	return u, true, nil
}

// sessionJSON is what GET and POST /session answer.
type sessionJSON struct {
	User      store.User `json:"user"`
	CSRFToken string     `json:"csrf_token"`
	ExpiresAt time.Time  `json:"expires_at"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

// getSession tells the page who is signed in and gives it the CSRF token.
func (h *Handler) getSession(w http.ResponseWriter, r *http.Request) {
	c, err := r.Cookie(h.cookie)
	if err != nil || c.Value == "" {
		writeError(w, http.StatusUnauthorized, "unauthorized", "not signed in")
		return
	}
	u, ss, err := h.cfg.Store.SessionUser(r.Context(), c.Value)
	if errors.Is(err, store.ErrBadSession) {
		h.clearCookie(w)
		writeError(w, http.StatusUnauthorized, "session_expired", "your session has expired or was signed out; sign in again")
		return
	}
	if err != nil {
		h.cfg.Logger.Error("read session", "err", err)
		writeError(w, http.StatusInternalServerError, "internal", "internal error; the server log has the details")
		return
	}
	writeJSON(w, http.StatusOK, sessionJSON{User: u, CSRFToken: csrfToken(c.Value), ExpiresAt: ss.ExpiresAt})
}

// signIn exchanges an API token for a session: JSON {"token"} from the
// page, or a form field "token" from a plain form (answered with a
// redirect to the dashboard).
func (h *Handler) signIn(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	form := mt == "application/x-www-form-urlencoded"
	var token string
	switch mt {
	case "application/json":
		var in struct {
			Token string `json:"token"`
		}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			writeError(w, http.StatusBadRequest, "invalid_json", "the body must be JSON {\"token\": \"bb_…\"}")
			return
		}
		if _, err := dec.Token(); err != io.EOF {
			writeError(w, http.StatusBadRequest, "invalid_json", "the body must hold one JSON object and nothing after it")
			return
		}
		token = in.Token
	case "application/x-www-form-urlencoded":
		if err := r.ParseForm(); err != nil {
			writeError(w, http.StatusBadRequest, "invalid_form", "cannot read the form")
			return
		}
		token = r.PostForm.Get("token")
	default:
		writeError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "send JSON {\"token\"} or a form with a token field")
		return
	}
	token = strings.TrimSpace(token)
	if token == "" {
		writeError(w, http.StatusBadRequest, "invalid_field", "field \"token\" is required: an API token (bb_…)")
		return
	}
	u, t, err := h.cfg.Store.Authenticate(r.Context(), token)
	if errors.Is(err, store.ErrBadToken) {
		if form {
			http.Redirect(w, r, "/signin?error=bad_token", http.StatusSeeOther)
			return
		}
		writeError(w, http.StatusUnauthorized, "unauthorized", "invalid or revoked API token")
		return
	}
	if err != nil {
		h.cfg.Logger.Error("sign in", "err", err)
		writeError(w, http.StatusInternalServerError, "internal", "internal error; the server log has the details")
		return
	}
	secret, ss, err := h.cfg.Store.CreateSession(r.Context(), u.ID, t.ID, h.cfg.SessionTTL)
	if err != nil {
		h.cfg.Logger.Error("sign in", "user_id", u.ID, "err", err)
		writeError(w, http.StatusInternalServerError, "internal", "internal error; the server log has the details")
		return
	}
	h.cfg.Logger.Info("signed in", "user", u.Name, "token_id", t.ID, "session_id", ss.ID)
	http.SetCookie(w, &http.Cookie{Name: h.cookie, Value: secret, Path: "/", Expires: ss.ExpiresAt,
		MaxAge: int(time.Until(ss.ExpiresAt).Seconds()), HttpOnly: true, Secure: h.secure, SameSite: http.SameSiteLaxMode})
	if form {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	writeJSON(w, http.StatusOK, sessionJSON{User: u, CSRFToken: csrfToken(secret), ExpiresAt: ss.ExpiresAt})
}

// signOut ends the session. It needs the CSRF token, so another site
// cannot sign a user out either.
func (h *Handler) signOut(w http.ResponseWriter, r *http.Request) {
	c, err := r.Cookie(h.cookie)
	if err != nil || c.Value == "" {
		h.clearCookie(w)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	got := r.Header.Get(CSRFHeader)
	if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(csrfToken(c.Value))) != 1 {
		writeError(w, http.StatusForbidden, "csrf_failed", "sign-out must carry the session's CSRF token in the "+CSRFHeader+" header")
		return
	}
	if err := h.cfg.Store.DeleteSession(r.Context(), c.Value); err != nil {
		h.cfg.Logger.Error("sign out", "err", err)
		writeError(w, http.StatusInternalServerError, "internal", "internal error; the server log has the details")
		return
	}
	h.clearCookie(w)
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) clearCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: h.cookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		Secure: h.secure, SameSite: http.SameSiteLaxMode})
}
