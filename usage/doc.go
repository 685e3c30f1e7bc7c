// Package usage meters the API as its users use it, and watches the hub
// as a whole for the operator.
//
// A Meter sees every authenticated API request twice: Begin, before the
// route's handlers, decides the token's rate limit (a fixed window that
// starts at the token's first request, RateLimit-* headers, 429 over the
// limit); End counts the answer per token, user and route. Both work on
// atomic counters in memory, in shards, with no allocation and no store
// write: Run adds the counts to the store every few seconds and once more
// when it stops, so a crash loses at most the last interval. Usage reads
// the stored counts together with those not stored yet.
//
// From the same counters the Meter reports each user's activity since
// the last report (api-usage events while the user is active, none while
// idle), and each token's crossing of 80% and 100% of its limit, once per
// window (usage-threshold events, routed by the rules).
//
// A System samples the figures of the whole hub every few seconds:
// request and error rates and latency percentiles from the Meter, builds,
// queue, deliveries and connections from the rest of the hub. An
// Evaluator holds the rules' alerts against each sample and raises
// system-alert events, and system-recovered once an alert stops holding.
package usage
