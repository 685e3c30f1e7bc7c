package builds

import "strconv"

// Env is the environment every step of build b of project p sees,
// whichever runner runs it (the embedded queue or a remote runner).
// buildURL, when not empty, is the prefix of the build's page; the build
// id is appended to it.
func Env(b Build, p Project, buildURL string) map[string]string {
	env := map[string]string{
		"BUILDBRIDGE_BUILD_ID":      strconv.FormatInt(b.ID, 10),
		"BUILDBRIDGE_BUILD_NUMBER":  strconv.FormatInt(b.Number, 10),
		"BUILDBRIDGE_PROJECT":       p.Name,
		"BUILDBRIDGE_REPO":          p.Repo,
		"BUILDBRIDGE_REF":           b.Ref,
		"BUILDBRIDGE_BRANCH":        b.Branch,
		"BUILDBRIDGE_SHA":           b.SHA,
		"BUILDBRIDGE_COMMIT_AUTHOR": b.Author,
	}
	if buildURL != "" {
		env["BUILDBRIDGE_BUILD_URL"] = buildURL + strconv.FormatInt(b.ID, 10)
	}
	return env
}
