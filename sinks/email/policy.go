package email

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	_ "time/tzdata" // quiet hours' time zones, whatever the host has

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/event"
)

// policy is how a delivery's mail is timed: its digest window, its quiet
// hours and which build statuses are urgent.
type policy struct {
	digest time.Duration
	quiet  *quietHours
	urgent map[builds.Status]bool
}

// defaultUrgent are the statuses sent during quiet hours when the urgent
// setting is not given.
var defaultUrgent = map[builds.Status]bool{builds.StatusBroken: true}

// maxDigest bounds the digest window.
const maxDigest = 7 * 24 * time.Hour

// parsePolicy reads the digest, quiet_hours, timezone and urgent
// parameters of a delivery.
func parsePolicy(p map[string]string) (policy, error) {
	pol := policy{urgent: defaultUrgent}
	if v := strings.TrimSpace(p["digest"]); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > maxDigest {
			return pol, fmt.Errorf("digest: %q is not a duration between 0s and %s", v, maxDigest)
		}
		pol.digest = d
	}
	if v := strings.TrimSpace(p["quiet_hours"]); v != "" {
		q, err := parseQuietHours(v, p["timezone"])
		if err != nil {
			return pol, err
		}
		pol.quiet = q
	} else if tz := strings.TrimSpace(p["timezone"]); tz != "" {
		if _, err := loadLocation(tz); err != nil {
			return pol, fmt.Errorf("timezone: %q is not a time zone like Europe/Paris", tz)
		}
	}
	if v := strings.TrimSpace(p["urgent"]); v != "" {
		pol.urgent = map[builds.Status]bool{}
		for _, s := range strings.Split(v, ",") {
			st := builds.Status(strings.TrimSpace(s))
			if !validStatus(st) {
				return pol, fmt.Errorf("urgent: %q is not a build status (%s)", st, statusNames())
			}
			pol.urgent[st] = true
		}
	}
	return pol, nil
}

func validStatus(s builds.Status) bool {
	for _, a := range builds.AllStatuses {
		if a == s {
			return true
		}
	}
	return false
}

func statusNames() string {
	names := make([]string, len(builds.AllStatuses))
	for i, s := range builds.AllStatuses {
		names[i] = string(s)
	}
	return strings.Join(names, ", ")
}

// isUrgent reports an event whose mail goes out during quiet hours.
func (p policy) isUrgent(ev *event.Envelope) bool {
	return ev.Build != nil && p.urgent[ev.Build.Status]
}

// holdUntil is when the mail of an event may go out, or zero for now: the
// end of the digest window, or of the quiet hours for mail that is not
// urgent, whichever is later.
func (p policy) holdUntil(now time.Time, ev *event.Envelope) time.Time {
	var until time.Time
	if p.digest > 0 {
		until = now.Add(p.digest)
	}
	if p.quiet != nil && !p.isUrgent(ev) {
		if end, ok := p.quiet.end(now); ok && end.After(until) {
			until = end
		}
	}
	return until
}

// locations caches time zones: routes check the parameters of every
// delivery whose recipients are templates.
var locations sync.Map // name → *time.Location

func loadLocation(name string) (*time.Location, error) {
	if l, ok := locations.Load(name); ok {
		return l.(*time.Location), nil
	}
	l, err := time.LoadLocation(name)
	if err != nil {
		return nil, err
	}
	locations.Store(name, l)
	return l, nil
}

// quietHours is a daily period, in minutes of the day of a time zone.
type quietHours struct {
	from, until int
	loc         *time.Location
}

// parseQuietHours reads "22:00-07:00" in time zone tz (default UTC).
func parseQuietHours(span, tz string) (*quietHours, error) {
	loc := time.UTC
	if tz = strings.TrimSpace(tz); tz != "" {
		var err error
		if loc, err = loadLocation(tz); err != nil {
			return nil, fmt.Errorf("timezone: %q is not a time zone like Europe/Paris", tz)
		}
	}
	a, b, ok := strings.Cut(span, "-")
	bad := fmt.Errorf("quiet_hours: %q is not a period like 22:00-07:00", span)
	if !ok {
		return nil, bad
	}
	start, err1 := minuteOfDay(a)
	end, err2 := minuteOfDay(b)
	if err1 != nil || err2 != nil || start == end {
		return nil, bad
	}
	return &quietHours{from: start, until: end, loc: loc}, nil
}

func minuteOfDay(s string) (int, error) {
	h, m, ok := strings.Cut(strings.TrimSpace(s), ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || err1 != nil || err2 != nil || hh < 0 || hh > 23 || mm < 0 || mm > 59 || len(m) != 2 {
		return 0, fmt.Errorf("%q is not HH:MM", s)
	}
	return hh*60 + mm, nil
}

// end returns the end of the quiet period t is in; ok is false when t is
// outside quiet hours.
func (q *quietHours) end(t time.Time) (time.Time, bool) {
	lt := t.In(q.loc)
	m := lt.Hour()*60 + lt.Minute()
	y, mo, d := lt.Date()
	at := func(day, minute int) time.Time { return time.Date(y, mo, d+day, minute/60, minute%60, 0, 0, q.loc) }
	if q.from < q.until {
		if m >= q.from && m < q.until {
			return at(0, q.until), true
		}
		return time.Time{}, false
	}
	// The period spans midnight.
	switch {
	case m >= q.from:
		return at(1, q.until), true
	case m < q.until:
		return at(0, q.until), true
	}
	return time.Time{}, false
}
