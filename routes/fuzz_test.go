package routes

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzParse feeds arbitrary files to the loader: it must return the rules
// or located errors, never panic, and rules it accepts must match every
// sample event without panicking.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/errors/*.yaml")
	seeds = append(seeds, examplePath)
	for _, s := range seeds {
		if b, err := os.ReadFile(s); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(testSinks + "routes:\n  - name: r\n    match: {branch: 'a/**', if: 'build.number > 1'}\n    to: [l, s]\n"))
	f.Add([]byte("x-a: &a {type: log}\nsinks: {l: *a}\nroutes: [{name: r, to: l, match: {<<: {event: '*'}}}]\n"))
	events := sampleEvents(KnownEvents)
	f.Fuzz(func(t *testing.T, data []byte) {
		opts := Options{
			LookupEnv: func(k string) (string, bool) { v, ok := testEnv[k]; return v, ok },
			// The fuzzer must not read files of the machine.
			ReadFile: func(string) ([]byte, error) { return nil, os.ErrNotExist },
			Logger:   slog.New(slog.DiscardHandler),
		}
		var r *Rules
		var err error
		done := make(chan struct{})
		go func() {
			defer close(done)
			r, err = Parse("f.yaml", data, opts)
		}()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			t.Fatalf("Parse took over 3s on %d bytes", len(data))
		}
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error is not Errors: %v", err)
			}
			for _, e := range errs {
				if !strings.HasPrefix(e.Error(), "f.yaml") || e.Message == "" {
					t.Fatalf("badly formed error %q", e.Error())
				}
			}
			return
		}
		_ = r.Summary()
		for _, ev := range events {
			r.Match(ev)
			r.Explain(ev)
		}
	})
}
