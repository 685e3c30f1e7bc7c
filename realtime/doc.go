// Package realtime is a Pusher-protocol (version 7) server: the WebSocket
// endpoint that pusher-js and the other official client libraries connect
// to, and the Pusher HTTP API (events, batch_events, channels, users) that
// pusher-http-go and the other server libraries publish through.
//
// One Server serves any number of apps (key, secret, id). Channels are
// public, private- (signed), presence- (signed, with members) and
// private-encrypted- (signed; the server passes the ciphertext through).
// Users may sign in (pusher:signin) and receive #server-to-user-<id>
// events. Client events (client-*) are relayed on private and presence
// channels when the app allows them, rate limited per connection.
//
// Publishing goes through a Broker so that several Servers on several
// nodes form one cluster: an event published on any node (through
// Publish, the HTTP API, or a client event) reaches the subscribers on
// every node, and so do presence member_added/member_removed, user
// terminations and socket bindings. The default Broker is in-process;
// package natsbroker carries messages over NATS core pub/sub. The
// subscription counts of bound users (Server.UserSubscriptions) are
// shared between nodes; the rest of the channel state (subscribers,
// presence member lists, channel queries, webhooks) is each node's own.
//
// Memory per connection is kept small on purpose: the upgrade handler
// returns once the WebSocket is established, so the only goroutine an idle
// connection holds is its read loop; its buffers are small and its send
// queue is allocated only while something waits to be written. A writer
// goroutine exists only while a connection has frames queued.
package realtime
