//go:build !linux

package main

import "errors"

// runEpollWorker needs Linux's epoll; elsewhere use -client goroutines.
func runEpollWorker(workerConfig) error {
	return errors.New("-client epoll needs Linux; use -client goroutines")
}
