package api

import (
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/store"
)

// buildJSON is a build as the API shows it.
type buildJSON struct {
	builds.Build
	Project    string `json:"project"`
	DurationMS *int64 `json:"duration_ms"`
}

func showBuild(b builds.Build, p builds.Project) buildJSON {
	out := buildJSON{Build: b, Project: p.Name}
	if b.FinishedAt != nil && b.StartedAt != nil {
		d := b.Duration().Milliseconds()
		out.DurationMS = &d
	}
	return out
}

var hexSHA = regexp.MustCompile(`^[0-9a-fA-F]{4,64}$`)

// validRef refuses refs git would read as options or that hold characters
// git forbids in ref names.
func validRef(ref string) bool {
	if ref == "" || len(ref) > 255 || strings.HasPrefix(ref, "-") || strings.Contains(ref, "..") {
		return false
	}
	return !strings.ContainsAny(ref, " ~^:?*[\\\x00\x7f")
}

func (a *API) triggerBuild(c *gin.Context) {
	p, ok := a.project(c)
	if !ok {
		return
	}
	var in struct {
		Branch string `json:"branch"`
		Ref    string `json:"ref"`
		SHA    string `json:"sha"`
	}
	if c.Request.ContentLength != 0 {
		if err := a.decode(c, &in); err != nil {
			a.fail(c, err)
			return
		}
	}
	want := in.Branch
	switch {
	case in.SHA != "":
		if !hexSHA.MatchString(in.SHA) {
			a.fail(c, errorf(http.StatusBadRequest, "invalid_field", "field \"sha\" must be a hexadecimal commit id"))
			return
		}
		if in.Branch != "" {
			a.fail(c, errorf(http.StatusBadRequest, "invalid_field", "give either \"branch\" or \"ref\" with \"sha\", not both"))
			return
		}
		want = in.SHA
	case in.Ref != "":
		a.fail(c, errorf(http.StatusBadRequest, "invalid_field", "field \"sha\" is required with \"ref\""))
		return
	case want == "":
		want = p.DefaultBranch
	}
	for field, v := range map[string]string{"branch": in.Branch, "ref": in.Ref} {
		if v != "" && !validRef(v) {
			a.fail(c, errorf(http.StatusBadRequest, "invalid_field", "field %q: %q is not a valid git ref", field, v))
			return
		}
	}
	commit, err := a.cfg.Resolve(c.Request.Context(), p.Repo, want)
	if err != nil {
		code := "unresolvable_ref"
		if errors.Is(err, ErrRefNotFound) {
			code = "ref_not_found"
		}
		a.fail(c, errorf(http.StatusUnprocessableEntity, code, "%s", err.Error()))
		return
	}
	nb := store.NewBuild{ProjectID: p.ID, Ref: commit.Ref, Branch: commit.Branch, SHA: commit.SHA,
		Author: commit.Author, AuthorEmail: commit.AuthorEmail, Message: commit.Message, TriggeredBy: CurrentUser(c).ID}
	if in.Ref != "" {
		nb.Ref, nb.Branch = in.Ref, strings.TrimPrefix(in.Ref, "refs/heads/")
		if !strings.HasPrefix(in.Ref, "refs/heads/") {
			nb.Branch = ""
		}
	}
	if nb.Ref == "" && in.Branch == "" && in.SHA == "" {
		nb.Ref, nb.Branch = "refs/heads/"+want, want
	}
	a.queue(c, p, nb)
}

func (a *API) queue(c *gin.Context, p builds.Project, nb store.NewBuild) {
	b, err := a.cfg.Store.CreateBuild(c.Request.Context(), nb)
	if err != nil {
		a.fail(c, err)
		return
	}
	a.cfg.Scheduler.Wake()
	c.Header("Location", "/api/v1/builds/"+strconv.FormatInt(b.ID, 10))
	c.JSON(http.StatusCreated, showBuild(b, p))
}

func (a *API) listBuilds(c *gin.Context) {
	p, ok := a.project(c)
	if !ok {
		return
	}
	f := store.BuildFilter{ProjectID: p.ID, Branch: c.Query("branch"), State: builds.State(strings.ToUpper(c.Query("state")))}
	if f.State != "" && !f.State.Valid() {
		a.fail(c, errorf(http.StatusBadRequest, "invalid_query", "state %q must be QUEUED, STARTED or FINISHED", c.Query("state")))
		return
	}
	for name, dst := range map[string]*int64{"cursor": &f.Before} {
		if v := c.Query(name); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				a.fail(c, errorf(http.StatusBadRequest, "invalid_query", "%s %q must be a positive integer", name, v))
				return
			}
			*dst = n
		}
	}
	f.Limit = 50
	if v := c.Query("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 500 {
			a.fail(c, errorf(http.StatusBadRequest, "invalid_query", "limit %q must be between 1 and 500", v))
			return
		}
		f.Limit = n
	}
	list, err := a.cfg.Store.ListBuilds(c.Request.Context(), f)
	if err != nil {
		a.fail(c, err)
		return
	}
	out := make([]buildJSON, len(list))
	for i, b := range list {
		out[i] = showBuild(b, p)
	}
	resp := gin.H{"builds": out, "next_cursor": nil}
	if len(list) == f.Limit {
		resp["next_cursor"] = strconv.FormatInt(list[len(list)-1].ID, 10)
	}
	c.JSON(http.StatusOK, resp)
}

func (a *API) getBuild(c *gin.Context) {
	if b, p, ok := a.build(c); ok {
		c.JSON(http.StatusOK, showBuild(b, p))
	}
}

func (a *API) cancelBuild(c *gin.Context) {
	b, p, ok := a.build(c)
	if !ok {
		return
	}
	b, err := a.cfg.Store.RequestCancel(c.Request.Context(), b.ID, "canceled by "+CurrentUser(c).Name)
	if err != nil {
		a.fail(c, err)
		return
	}
	if b.State == builds.Started {
		a.cfg.Scheduler.Cancel(b.ID)
		c.JSON(http.StatusAccepted, showBuild(b, p))
		return
	}
	c.JSON(http.StatusOK, showBuild(b, p))
}

func (a *API) rebuild(c *gin.Context) {
	b, p, ok := a.build(c)
	if !ok {
		return
	}
	a.queue(c, p, store.NewBuild{ProjectID: p.ID, Ref: b.Ref, Branch: b.Branch, SHA: b.SHA, Author: b.Author,
		AuthorEmail: b.AuthorEmail, Message: b.Message, TriggeredBy: CurrentUser(c).ID})
}

const maxLogRead = 1 << 20

func (a *API) buildLog(c *gin.Context) {
	b, _, ok := a.build(c)
	if !ok {
		return
	}
	var off int64
	if v := c.Query("offset"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			a.fail(c, errorf(http.StatusBadRequest, "invalid_query", "offset %q must be a non-negative integer", v))
			return
		}
		off = n
	}
	data, size, err := a.cfg.Store.ReadLog(c.Request.Context(), b.ID, off, maxLogRead)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.Header("X-Log-Size", strconv.FormatInt(size, 10))
	c.Header("X-Log-Next-Offset", strconv.FormatInt(min(size, off+int64(len(data))), 10))
	c.Header("X-Build-State", string(b.State))
	c.Data(http.StatusOK, "text/plain; charset=utf-8", data)
}

func (a *API) buildEvents(c *gin.Context) {
	b, _, ok := a.build(c)
	if !ok {
		return
	}
	evs, err := a.cfg.Store.BuildEvents(c.Request.Context(), b.ID)
	if err != nil {
		a.fail(c, err)
		return
	}
	if evs == nil {
		evs = []store.BuildEvent{}
	}
	c.JSON(http.StatusOK, gin.H{"events": evs})
}

func (a *API) listArtifacts(c *gin.Context) {
	b, _, ok := a.build(c)
	if !ok {
		return
	}
	list, err := a.cfg.Store.Artifacts(c.Request.Context(), b.ID)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"artifacts": list})
}

// cleanArtifactPath accepts a relative slash path with no "..", "." or
// empty segments, so it can name only a file under the build's directory.
func cleanArtifactPath(p string) (string, bool) {
	p = strings.TrimPrefix(p, "/")
	if p == "" || len(p) > 1024 || strings.ContainsAny(p, "\\\x00") || path.Clean(p) != p || path.IsAbs(p) {
		return "", false
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." || seg == "." || seg == "" {
			return "", false
		}
	}
	return p, true
}

func (a *API) downloadArtifact(c *gin.Context) {
	b, _, ok := a.build(c)
	if !ok {
		return
	}
	rel, ok := cleanArtifactPath(c.Param("path"))
	if !ok {
		a.fail(c, errorf(http.StatusBadRequest, "invalid_path", "artifact path %q must be a relative path without \"..\"", strings.TrimPrefix(c.Param("path"), "/")))
		return
	}
	art, err := a.cfg.Store.ArtifactByPath(c.Request.Context(), b.ID, rel)
	if err != nil {
		a.fail(c, err)
		return
	}
	root := filepath.Join(a.cfg.ArtifactsDir, strconv.FormatInt(b.ID, 10))
	full := filepath.Join(root, filepath.FromSlash(art.Path))
	if !strings.HasPrefix(full, root+string(filepath.Separator)) {
		a.fail(c, errorf(http.StatusBadRequest, "invalid_path", "artifact path escapes the build directory"))
		return
	}
	// Open through os.Root so a symlink planted in the directory cannot
	// lead outside it either.
	r, err := os.OpenRoot(root)
	if errors.Is(err, fs.ErrNotExist) {
		// Uploaded to another node whose artifacts_dir this node does not share.
		a.fail(c, errorf(http.StatusNotFound, "not_found", "artifact %q is recorded but no file of build %d is in this node's artifacts directory (several nodes need one shared artifacts_dir)", art.Path, b.ID))
		return
	}
	if err != nil {
		a.fail(c, err)
		return
	}
	defer r.Close()
	f, err := r.Open(filepath.FromSlash(art.Path))
	if err != nil {
		a.fail(c, errorf(http.StatusNotFound, "not_found", "artifact %q is recorded but its file is gone", art.Path))
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		a.fail(c, errorf(http.StatusNotFound, "not_found", "artifact %q is not a regular file", art.Path))
		return
	}
	c.Header("Content-Disposition", `attachment; filename="`+strings.ReplaceAll(path.Base(art.Path), `"`, "")+`"`)
	c.Header("X-Content-SHA256", art.SHA256)
	c.Header("X-Content-Type-Options", "nosniff")
	// Served as a download, never rendered: an HTML artifact must not run
	// script on the dashboard's origin.
	c.Header("Content-Type", "application/octet-stream")
	http.ServeContent(c.Writer, c.Request, path.Base(art.Path), st.ModTime(), f)
}
