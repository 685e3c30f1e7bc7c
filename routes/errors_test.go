package routes

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files of TestErrorsGolden")

// TestErrorsGolden loads every broken file in testdata/errors and
// compares the error output with its .golden file (go test -update
// rewrites them).
func TestErrorsGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/errors/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test files: %v", err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		t.Run(name, func(t *testing.T) {
			opts := testOptions()
			_, err := Load(f, opts)
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Load accepted the file or failed oddly: %v", err)
			}
			got := err.Error() + "\n"
			golden := strings.TrimSuffix(f, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("errors differ from %s:\n--- got\n%s--- want\n%s", golden, got, want)
			}
			for _, e := range errs {
				if e.File != f {
					t.Errorf("error without the file name: %v", e)
				}
			}
		})
	}
}
