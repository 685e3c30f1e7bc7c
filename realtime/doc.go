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
// every node, and so do user terminations and socket bindings. The
// default Broker is in-process and serves one Server; package natsbroker
// carries messages over NATS core pub/sub. With a Broker, each node also
// keeps a view of what the others hold (see ClusterConfig): presence
// members and member_added/member_removed, channel queries, the
// subscription_count event, the presence member cap and the subscription
// counts of bound users (Server.UserSubscriptions) count every node,
// eventually consistently. Server webhooks and App.MaxConnections stay
// each node's own. A single node keeps no view and sends nothing for it.
//
// Memory per connection is kept small on purpose: the upgrade handler
// returns once the WebSocket is established, so the only goroutine an idle
// connection holds is its read loop; its buffers are small and its send
// queue is allocated only while something waits to be written. A writer
// goroutine exists only while a connection has frames queued.
package realtime
