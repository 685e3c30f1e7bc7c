package api

import (
	"github.com/gin-gonic/gin"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/store"
)

// These let feature packages that add routes to Group (sources, sinks,
// realtime) answer exactly as the core API does.

// Fail writes err as the JSON error response the API uses everywhere.
func (a *API) Fail(c *gin.Context, err error) { a.fail(c, err) }

// Decode reads a bounded JSON body into v, refusing unknown fields.
func (a *API) Decode(c *gin.Context, v any) error { return a.decode(c, v) }

// ProjectParam loads the project named by the route's :name parameter, if
// the caller may see it; otherwise it has answered 404 and returns false.
func (a *API) ProjectParam(c *gin.Context) (builds.Project, bool) { return a.project(c) }

// NewError makes an error that Fail answers with the given status and code.
func NewError(status int, code, format string, args ...any) error {
	return errorf(status, code, format, args...)
}

// Store returns the store the API serves.
func (a *API) Store() *store.DB { return a.cfg.Store }
