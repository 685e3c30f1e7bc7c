package queue

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/store"
)

// logWriter buffers a build's output and appends it to the store in
// chunks, at most every flush interval, so a chatty step costs a few
// writes a second rather than one per line.
type logWriter struct {
	store *store.DB
	build builds.Build
	onLog func(builds.Build, int64, []byte)
	log   *slog.Logger

	mu     sync.Mutex
	buf    []byte
	stop   chan struct{}
	done   chan struct{}
	closed bool
}

const logChunk = 64 << 10

func newLogWriter(s *store.DB, b builds.Build, every time.Duration, onLog func(builds.Build, int64, []byte), log *slog.Logger) *logWriter {
	w := &logWriter{store: s, build: b, onLog: onLog, log: log, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				w.flush()
				return
			case <-t.C:
				w.flush()
			}
		}
	}()
	return w
}

// Write buffers p; it never fails, so a slow store cannot fail a build.
func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf = append(w.buf, p...)
	big := len(w.buf) >= logChunk
	w.mu.Unlock()
	if big {
		w.flush()
	}
	return len(p), nil
}

func (w *logWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(w.buf) > 0 {
		n := min(len(w.buf), logChunk)
		chunk := append([]byte(nil), w.buf[:n]...)
		size, err := w.store.AppendLog(context.Background(), w.build.ID, chunk)
		if err != nil {
			w.log.Error("store build log", "err", err)
			return
		}
		w.buf = w.buf[n:]
		if w.onLog != nil {
			w.onLog(w.build, size-int64(n), chunk)
		}
	}
	w.buf = nil
}

// Close writes what is left and stops the flusher.
func (w *logWriter) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	w.mu.Unlock()
	close(w.stop)
	<-w.done
	return nil
}
