package main

import (
	"database/sql"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestArtifactRetention runs a server whose artifacts expire a minute
// after their build finished: a build's artifact is served, then, once
// the build is made two minutes older, its record and its files go.
func TestArtifactRetention(t *testing.T) {
	data := t.TempDir()
	token := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--data", data))
	addr := freeAddr(t)
	logs := newEventLog()
	p := startServer(t, data, addr, logs, "--artifact-retention", "1m")
	c := client{base: "http://" + addr, token: token}
	repo := newTestRepo(t)
	repo.commit(t, "main", "work", map[string]string{
		".buildbridge.yml": "steps:\n  - name: build\n    run: mkdir -p out && echo kept > out/a.txt\nartifacts: [\"out/*.txt\"]\n",
	})
	c.mustCall(t, 201, "POST", "/api/v1/projects", map[string]any{"name": "app", "repo": repo.bare})
	id := triggerBuild(t, c)
	logs.waitFinished(t, id, 30*time.Second)
	listURL := fmt.Sprintf("/api/v1/builds/%d/artifacts", id)
	if l, _ := c.mustCall(t, 200, "GET", listURL, nil)["artifacts"].([]any); len(l) != 1 {
		t.Fatalf("artifacts of the new build: %v", l)
	}
	dir := filepath.Join(data, "artifacts", fmt.Sprint(id))
	if _, err := os.Stat(filepath.Join(dir, "out", "a.txt")); err != nil {
		t.Fatalf("artifact file: %v", err)
	}

	// The build finished two minutes ago, as far as the store knows.
	db, err := sql.Open("sqlite", filepath.Join(data, "buildbridge.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE builds SET finished_at = finished_at - 120000 WHERE id = ?`, id); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second) // the server looks every 6s
	for {
		l, _ := c.mustCall(t, 200, "GET", listURL, nil)["artifacts"].([]any)
		_, statErr := os.Stat(dir)
		if len(l) == 0 && os.IsNotExist(statErr) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the retention: %d artifacts listed, directory: %v", len(l), statErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	req, _ := http.NewRequest("GET", c.base+listURL+"/out/a.txt", nil)
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("download of a deleted artifact: %d, want 404", resp.StatusCode)
	}
	if !strings.Contains(p.log(), "old artifacts deleted") {
		t.Fatal("no log line for the deletion")
	}
}
