package api

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gin-gonic/gin"

	"github.com/buildbridge/buildbridge/sinks/delivery"
	"github.com/buildbridge/buildbridge/store"
)

// DeliveryService is what the delivery endpoints need from the delivery
// engine (*delivery.Engine); reads go to the store.
type DeliveryService interface {
	Redeliver(ctx context.Context, id int64) (store.SinkDelivery, error)
	Recover(ctx context.Context, sink string, since time.Time, ownerID int64) ([]store.SinkDelivery, error)
	DisableEndpoint(ctx context.Context, sink, target, reason string) error
	EnableEndpoint(ctx context.Context, sink, target string) error
}

// EnableDeliveries adds the delivery log and its actions to /api/v1.
// Users see and redeliver the deliveries of their own projects' events;
// admins see all, including system events, and enable and disable
// endpoints.
//
//	GET  /deliveries                      filters: sink, target, status, event, type, since, until; cursor, limit
//	GET  /deliveries/:id                  the delivery, its message and its attempts
//	POST /deliveries/:id/redeliver        attempt again now, with a new round of retries
//	POST /sinks/:name/recover             {"since"}: redeliver what failed since then
//	GET  /endpoints, /sinks/:name/endpoints   endpoint health (admins)
//	POST /sinks/:name/endpoints/disable   {"target","reason"} (admins)
//	POST /sinks/:name/endpoints/enable    {"target"} (admins)
func (a *API) EnableDeliveries(d DeliveryService) error {
	if d == nil {
		return errors.New("api: EnableDeliveries needs a DeliveryService")
	}
	h := &deliveryHandlers{a: a, d: d}
	a.Group.GET("/deliveries", h.list)
	a.Group.GET("/deliveries/:id", h.show)
	a.Group.POST("/deliveries/:id/redeliver", h.redeliver)
	a.Group.POST("/sinks/:name/recover", h.recover)
	a.Group.GET("/endpoints", h.endpoints)
	a.Group.GET("/sinks/:name/endpoints", h.endpoints)
	a.Group.POST("/sinks/:name/endpoints/disable", h.setEndpoint(false))
	a.Group.POST("/sinks/:name/endpoints/enable", h.setEndpoint(true))
	return nil
}

type deliveryHandlers struct {
	a *API
	d DeliveryService
}

// parseTime reads an RFC 3339 time, or a duration meaning that long ago.
func parseTime(v string, now time.Time) (time.Time, bool) {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, true
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return now.Add(-d), true
	}
	return time.Time{}, false
}

func (h *deliveryHandlers) list(c *gin.Context) {
	u := CurrentUser(c)
	f := store.SinkDeliveryFilter{Sink: c.Query("sink"), Target: c.Query("target"), Status: c.Query("status"),
		EventID: c.Query("event"), EventType: c.Query("type"), Limit: 50}
	switch f.Status {
	case "", store.DeliveryPending, store.DeliverySucceeded, store.DeliveryFailed:
	default:
		h.a.fail(c, errorf(http.StatusBadRequest, "invalid_query", "status %q must be pending, succeeded or failed", f.Status))
		return
	}
	now := time.Now()
	for name, dst := range map[string]*time.Time{"since": &f.Since, "until": &f.Until} {
		if v := c.Query(name); v != "" {
			t, ok := parseTime(v, now)
			if !ok {
				h.a.fail(c, errorf(http.StatusBadRequest, "invalid_query", "%s %q must be an RFC 3339 time or a duration like 24h (ago)", name, v))
				return
			}
			*dst = t
		}
	}
	if v := c.Query("cursor"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			h.a.fail(c, errorf(http.StatusBadRequest, "invalid_query", "cursor %q is not a cursor this API returned", v))
			return
		}
		f.Before = n
	}
	if v := c.Query("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 500 {
			h.a.fail(c, errorf(http.StatusBadRequest, "invalid_query", "limit %q must be between 1 and 500", v))
			return
		}
		f.Limit = n
	}
	if v := c.Query("owner"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			h.a.fail(c, errorf(http.StatusBadRequest, "invalid_query", "owner %q must be a user id", v))
			return
		}
		if !u.Admin && n != u.ID {
			h.a.fail(c, errorf(http.StatusForbidden, "forbidden", "only admins see other users' deliveries"))
			return
		}
		f.OwnerID = n
	}
	if !u.Admin {
		f.OwnerID = u.ID
	}
	list, err := h.a.cfg.Store.ListSinkDeliveries(c.Request.Context(), f)
	if err != nil {
		h.a.fail(c, err)
		return
	}
	resp := gin.H{"deliveries": list, "next_cursor": nil}
	if len(list) == f.Limit {
		resp["next_cursor"] = strconv.FormatInt(list[len(list)-1].ID, 10)
	}
	c.JSON(http.StatusOK, resp)
}

// delivery loads a delivery the caller may see; another user's is not
// found.
func (h *deliveryHandlers) delivery(c *gin.Context) (store.SinkDelivery, bool) {
	id, err := strconv.ParseInt(c.Param("id"), 10, 64)
	if err != nil || id <= 0 {
		h.a.fail(c, errorf(http.StatusBadRequest, "invalid_id", "delivery id %q must be a positive integer", c.Param("id")))
		return store.SinkDelivery{}, false
	}
	d, err := h.a.cfg.Store.SinkDelivery(c.Request.Context(), id)
	if u := CurrentUser(c); err == nil && !u.Admin && d.OwnerID != u.ID {
		err = store.ErrNotFound
	}
	if errors.Is(err, store.ErrNotFound) {
		err = errorf(http.StatusNotFound, "not_found", "delivery %d not found", id)
	}
	if err != nil {
		h.a.fail(c, err)
		return d, false
	}
	return d, true
}

// messageJSON is what a delivery sends.
type messageJSON struct {
	Route       string            `json:"route"`
	Subject     string            `json:"subject,omitempty"`
	ContentType string            `json:"content_type,omitempty"`
	Params      map[string]string `json:"params,omitempty"`
	Body        *string           `json:"body,omitempty"`
	BodyBytes   []byte            `json:"body_base64,omitempty"`
}

func (h *deliveryHandlers) show(c *gin.Context) {
	d, ok := h.delivery(c)
	if !ok {
		return
	}
	atts, err := h.a.cfg.Store.SinkAttempts(c.Request.Context(), d.ID)
	if err != nil {
		h.a.fail(c, err)
		return
	}
	resp := gin.H{"delivery": d, "attempts": atts}
	if m, err := delivery.Message(d); err == nil {
		msg := messageJSON{Route: m.Route, Subject: m.Subject, ContentType: m.ContentType, Params: m.Params}
		if utf8.Valid(m.Body) {
			s := string(m.Body)
			msg.Body = &s
		} else {
			msg.BodyBytes = m.Body
		}
		resp["message"] = msg
	} else {
		h.a.cfg.Logger.Warn("delivery message unreadable", "delivery", d.ID, "err", err)
	}
	c.JSON(http.StatusOK, resp)
}

func (h *deliveryHandlers) redeliver(c *gin.Context) {
	d, ok := h.delivery(c)
	if !ok {
		return
	}
	d, err := h.d.Redeliver(c.Request.Context(), d.ID)
	if errors.Is(err, delivery.ErrEndpointDisabled) {
		err = errorf(http.StatusConflict, "endpoint_disabled", "%s", err.Error())
	}
	if err != nil {
		h.a.fail(c, err)
		return
	}
	c.JSON(http.StatusAccepted, gin.H{"delivery": d})
}

func (h *deliveryHandlers) recover(c *gin.Context) {
	var in struct {
		Since string `json:"since"`
	}
	if err := h.a.decode(c, &in); err != nil {
		h.a.fail(c, err)
		return
	}
	since, ok := parseTime(in.Since, time.Now())
	if in.Since == "" || !ok {
		h.a.fail(c, errorf(http.StatusBadRequest, "invalid_field", "field \"since\" must be an RFC 3339 time or a duration like 24h (ago)"))
		return
	}
	u := CurrentUser(c)
	owner := u.ID
	if u.Admin {
		owner = 0
	}
	list, err := h.d.Recover(c.Request.Context(), c.Param("name"), since, owner)
	if err != nil {
		h.a.fail(c, err)
		return
	}
	ids := make([]int64, len(list))
	for i, d := range list {
		ids[i] = d.ID
	}
	c.JSON(http.StatusAccepted, gin.H{"sink": c.Param("name"), "since": since.UTC(), "redelivered": len(list), "ids": ids})
}

func (h *deliveryHandlers) admin(c *gin.Context) bool {
	if !CurrentUser(c).Admin {
		h.a.fail(c, errorf(http.StatusForbidden, "forbidden", "only admins manage endpoints"))
		return false
	}
	return true
}

func (h *deliveryHandlers) endpoints(c *gin.Context) {
	if !h.admin(c) {
		return
	}
	list, err := h.a.cfg.Store.SinkEndpoints(c.Request.Context(), c.Param("name"))
	if err != nil {
		h.a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"endpoints": list})
}

func (h *deliveryHandlers) setEndpoint(enable bool) gin.HandlerFunc {
	return func(c *gin.Context) {
		if !h.admin(c) {
			return
		}
		var in struct {
			Target string `json:"target"`
			Reason string `json:"reason"`
		}
		if err := h.a.decode(c, &in); err != nil {
			h.a.fail(c, err)
			return
		}
		if strings.TrimSpace(in.Target) == "" {
			h.a.fail(c, errorf(http.StatusBadRequest, "invalid_field", "field \"target\" is required (the delivery's target)"))
			return
		}
		sink := c.Param("name")
		var err error
		if enable {
			err = h.d.EnableEndpoint(c.Request.Context(), sink, in.Target)
		} else {
			reason := "disabled by " + CurrentUser(c).Name
			if r := strings.TrimSpace(in.Reason); r != "" {
				reason += ": " + r
			}
			err = h.d.DisableEndpoint(c.Request.Context(), sink, in.Target, reason)
		}
		if err != nil {
			h.a.fail(c, err)
			return
		}
		c.JSON(http.StatusOK, gin.H{"sink": sink, "target": in.Target, "enabled": enable})
	}
}
