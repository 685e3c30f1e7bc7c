//go:build !linux

package main

import "errors"

// The raw clients need Linux (epoll, io_uring); elsewhere use -client goroutines.

func runEpollWorker(workerConfig) error {
	return errors.New("-client epoll needs Linux; use -client goroutines")
}

func runUringWorker(workerConfig) error {
	return errors.New("-client uring needs Linux; use -client goroutines")
}
