// Package usagebench holds the benchmarks of the API metering and rate
// limit path (package usage): see README.md for how to run them and the
// figures.
package usagebench
