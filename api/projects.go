package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/store"
)

// projectJSON is a project as the API shows it.
type projectJSON struct {
	builds.Project
	Timeout string `json:"timeout"`
}

func showProject(p builds.Project) projectJSON {
	if p.Steps == nil {
		p.Steps = []builds.Step{}
	}
	t := ""
	if p.Timeout > 0 {
		t = p.Timeout.String()
	}
	return projectJSON{Project: p, Timeout: t}
}

// projectInput is the body of POST and PATCH /projects; nil fields are
// left unchanged by PATCH.
type projectInput struct {
	Name          *string          `json:"name"`
	Repo          *string          `json:"repo"`
	DefaultBranch *string          `json:"default_branch"`
	Steps         *[]builds.Step   `json:"steps"`
	Settings      *builds.Settings `json:"settings"`
	// Timeout is a Go duration ("10m") or a number of seconds.
	Timeout json.RawMessage `json:"timeout"`
}

func parseTimeout(raw json.RawMessage) (time.Duration, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return 0, errorf(http.StatusBadRequest, "invalid_field", "field \"timeout\": %q is not a duration like \"90s\" or \"10m\"", s)
		}
		return d, nil
	}
	var secs float64
	if err := json.Unmarshal(raw, &secs); err != nil || secs < 0 {
		return 0, errorf(http.StatusBadRequest, "invalid_field", "field \"timeout\" must be a duration string (\"10m\") or a number of seconds")
	}
	return time.Duration(secs * float64(time.Second)), nil
}

func (in projectInput) apply(p *builds.Project) error {
	if in.Repo != nil {
		p.Repo = strings.TrimSpace(*in.Repo)
	}
	if in.DefaultBranch != nil {
		p.DefaultBranch = strings.TrimSpace(*in.DefaultBranch)
	}
	if in.Steps != nil {
		p.Steps = *in.Steps
	}
	if in.Settings != nil {
		for _, globs := range [][]string{in.Settings.Branches.Include, in.Settings.Branches.Exclude} {
			for _, g := range globs {
				if _, err := path.Match(g, ""); err != nil || g == "" {
					return errorf(http.StatusBadRequest, "invalid_field", "field \"settings.branches\": %q is not a valid glob", g)
				}
			}
		}
		p.Settings = *in.Settings
	}
	if in.Timeout != nil {
		d, err := parseTimeout(in.Timeout)
		if err != nil {
			return err
		}
		p.Timeout = d
	}
	switch {
	case p.Repo == "":
		return errorf(http.StatusBadRequest, "invalid_field", "field \"repo\" is required: a repository path or URL")
	case strings.HasPrefix(p.Repo, "-"):
		return errorf(http.StatusBadRequest, "invalid_field", "field \"repo\" must not start with '-'")
	case p.DefaultBranch == "" || strings.HasPrefix(p.DefaultBranch, "-"):
		return errorf(http.StatusBadRequest, "invalid_field", "field \"default_branch\" must be a branch name")
	case p.Timeout > 24*time.Hour:
		return errorf(http.StatusBadRequest, "invalid_field", "field \"timeout\" must be at most 24h")
	}
	for i, s := range p.Steps {
		if strings.TrimSpace(s.Run) == "" {
			return errorf(http.StatusBadRequest, "invalid_field", "field \"steps[%d].run\" is required", i)
		}
		if p.Steps[i].Name == "" {
			p.Steps[i].Name = "step " + strconv.Itoa(i+1)
		}
	}
	return nil
}

func (a *API) createProject(c *gin.Context) {
	var in projectInput
	if err := a.decode(c, &in); err != nil {
		a.fail(c, err)
		return
	}
	if in.Name == nil {
		a.fail(c, errorf(http.StatusBadRequest, "invalid_field", "field \"name\" is required"))
		return
	}
	if err := store.ValidProjectName(*in.Name); err != nil {
		a.fail(c, errorf(http.StatusBadRequest, "invalid_field", "field \"name\": %s", err))
		return
	}
	p := builds.Project{Name: *in.Name, OwnerID: CurrentUser(c).ID, DefaultBranch: "main"}
	if err := in.apply(&p); err != nil {
		a.fail(c, err)
		return
	}
	p, err := a.cfg.Store.CreateProject(c.Request.Context(), p)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.Header("Location", "/api/v1/projects/"+p.Name)
	c.JSON(http.StatusCreated, showProject(p))
}

func (a *API) listProjects(c *gin.Context) {
	u := CurrentUser(c)
	owner := u.ID
	if u.Admin {
		owner = 0
	}
	list, err := a.cfg.Store.ListProjects(c.Request.Context(), owner)
	if err != nil {
		a.fail(c, err)
		return
	}
	out := make([]projectJSON, len(list))
	for i, p := range list {
		out[i] = showProject(p)
	}
	c.JSON(http.StatusOK, gin.H{"projects": out})
}

func (a *API) getProject(c *gin.Context) {
	if p, ok := a.project(c); ok {
		c.JSON(http.StatusOK, showProject(p))
	}
}

func (a *API) patchProject(c *gin.Context) {
	p, ok := a.project(c)
	if !ok {
		return
	}
	var in projectInput
	if err := a.decode(c, &in); err != nil {
		a.fail(c, err)
		return
	}
	if in.Name != nil && *in.Name != p.Name {
		a.fail(c, errorf(http.StatusBadRequest, "invalid_field", "field \"name\" cannot be changed"))
		return
	}
	if err := in.apply(&p); err != nil {
		a.fail(c, err)
		return
	}
	p, err := a.cfg.Store.UpdateProject(c.Request.Context(), p)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, showProject(p))
}

func (a *API) deleteProject(c *gin.Context) {
	p, ok := a.project(c)
	if !ok {
		return
	}
	if err := a.cfg.Store.DeleteProject(c.Request.Context(), p.ID); err != nil {
		a.fail(c, err)
		return
	}
	c.Status(http.StatusNoContent)
}

func (a *API) listTokens(c *gin.Context) {
	list, err := a.cfg.Store.ListTokens(c.Request.Context(), CurrentUser(c).ID)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"tokens": list})
}

func (a *API) createToken(c *gin.Context) {
	var in struct {
		Name string `json:"name"`
	}
	if err := a.decode(c, &in); err != nil {
		a.fail(c, err)
		return
	}
	if len(in.Name) > 100 {
		a.fail(c, errorf(http.StatusBadRequest, "invalid_field", "field \"name\" must be at most 100 characters"))
		return
	}
	plain, t, err := a.cfg.Store.CreateToken(c.Request.Context(), CurrentUser(c).ID, in.Name)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusCreated, gin.H{"token": plain, "info": t})
}

func (a *API) revokeToken(c *gin.Context) {
	id, err := strconv.ParseInt(c.Param("id"), 10, 64)
	if err != nil {
		a.fail(c, errorf(http.StatusBadRequest, "invalid_id", "token id %q must be an integer", c.Param("id")))
		return
	}
	if err := a.cfg.Store.RevokeToken(c.Request.Context(), CurrentUser(c).ID, id); err != nil {
		a.fail(c, fmt.Errorf("revoke: %w", err))
		return
	}
	c.Status(http.StatusNoContent)
}
