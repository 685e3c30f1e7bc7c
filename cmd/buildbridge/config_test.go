package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "bb.yaml")
	os.WriteFile(file, []byte("addr: 127.0.0.1:9000\nconcurrency: 3\nshutdown_grace: 5s\nrealtime:\n  max_channels: 4\n  key: filekey\n"), 0o600)
	env := map[string]string{"BUILDBRIDGE_CONCURRENCY": "5", "BUILDBRIDGE_REALTIME_KEY": "envkey"}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	addConfigFlags(fs)
	if err := fs.Parse([]string{"--config", file, "--realtime-key", "flagkey", "--data", dir}); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(fs, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Addr != "127.0.0.1:9000" || cfg.Concurrency != 5 || cfg.Realtime.Key != "flagkey" ||
		cfg.Realtime.MaxChannels != 4 || cfg.ShutdownGrace != 5*time.Second || cfg.Data != dir || cfg.OnRestart != "error" {
		t.Fatalf("precedence wrong: %+v", cfg)
	}
	if cfg.BaseURL != "http://127.0.0.1:9000" {
		t.Fatalf("base url %q", cfg.BaseURL)
	}
}

func TestConfigErrorsNameTheSetting(t *testing.T) {
	cases := []struct {
		file string
		env  map[string]string
		args []string
		want string
	}{
		{args: []string{"--concurrency", "0"}, want: "setting concurrency"},
		{args: []string{"--concurrency", "x"}, want: "flag --concurrency"},
		{env: map[string]string{"BUILDBRIDGE_SHUTDOWN_GRACE": "soon"}, want: "BUILDBRIDGE_SHUTDOWN_GRACE"},
		{args: []string{"--on-restart", "maybe"}, want: "setting on_restart"},
		{args: []string{"--addr", "nope"}, want: "setting addr"},
		{file: "adress: x\n", want: "field adress not found"},
		{args: []string{"--config", "missing.yaml"}, want: "config file"},
		{args: []string{"--base-url", "ftp://x"}, want: "setting base_url"},
		{file: "deliveries:\n  retention: 10m\n", want: "setting deliveries.retention"},
		{args: []string{"--artifact-retention", "10s"}, want: "setting artifact_retention"},
	}
	for _, c := range cases {
		dir := t.TempDir()
		args := c.args
		if c.file != "" {
			p := filepath.Join(dir, "c.yaml")
			os.WriteFile(p, []byte(c.file), 0o600)
			args = append(args, "--config", p)
		}
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		addConfigFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		_, err := loadConfig(fs, func(k string) string { return c.env[k] })
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("args %v env %v file %q: error %v, want it to mention %q", c.args, c.env, c.file, err, c.want)
		}
	}
}
