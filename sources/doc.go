// Package sources turns outside requests into build requests. Each source
// (sources/githook for git post-receive hooks, sources/forge for GitHub,
// GitLab and Gitea push webhooks) parses and authenticates its own
// requests into a Push; this package applies the project's settings to it
// (branch filters, tags, [skip ci], superseding) and commits the builds
// together with the delivery's id, so a redelivery builds nothing.
// Sources know nothing about sinks.
package sources
