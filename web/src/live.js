// The live connection: pusher-js on the user's private channel. Every
// (re)subscription calls onSynced once, and events that arrive while the
// page is fetching its snapshot are held and replayed after it, so nothing
// is lost and nothing is polled.

import Pusher from 'pusher-js';

export class Live {
  // info is GET /api/v1/user/channel; csrf signs the channel auth calls.
  constructor(info, csrf, { onEvent, onSynced, onStatus }) {
    this.info = info;
    this.onEvent = onEvent;
    this.onSynced = onSynced;
    this.onStatus = onStatus;
    this.held = null; // events held while a sync runs
    this.everConnected = false;
    const secure = !!info.force_tls;
    this.pusher = new Pusher(info.key, {
      cluster: info.cluster || 'local',
      wsHost: info.ws_host || location.hostname,
      wsPort: info.ws_port,
      wssPort: info.ws_port,
      forceTLS: secure,
      enabledTransports: secure ? ['wss'] : ['ws'],
      disableStats: true,
      channelAuthorization: {
        endpoint: info.auth_endpoint,
        transport: 'ajax',
        headers: { 'X-CSRF-Token': csrf },
      },
    });
    this.pusher.connection.bind('state_change', ({ current }) => this.status(current));
    this.channel = this.pusher.subscribe(info.channel);
    this.channel.bind('pusher:subscription_succeeded', () => this.sync());
    this.channel.bind('pusher:subscription_error', (err) => {
      const why = err?.status === 403
        ? 'the server refused your live channel (too many open dashboards? close another tab)'
        : `live updates are unavailable (${err?.status || err?.type || 'error'})`;
      this.onStatus('error', why);
    });
    for (const type of ['build-state-changed', 'build-log']) {
      this.channel.bind(type, (data) => this.deliver(type, data));
    }
  }

  status(current) {
    if (current === 'connected') this.everConnected = true;
    this.onStatus(current, this.everConnected && current !== 'connected' ? 'reconnecting…' : '');
  }

  deliver(type, data) {
    if (!data || typeof data !== 'object') return;
    if (this.held) {
      this.held.push([type, data]);
      return;
    }
    this.onEvent(type, data);
  }

  // sync runs after every successful (re)subscription: the page fetches
  // what it shows once, then the held events are applied in order.
  async sync() {
    if (this.held) return; // one sync at a time; its hold covers both
    this.held = [];
    try {
      await this.onSynced();
    } catch (err) {
      this.onStatus('error', `could not load the current state: ${err.message}`);
    } finally {
      const held = this.held;
      this.held = null;
      held.sort((a, b) => (a[1].seq || 0) - (b[1].seq || 0));
      for (const [type, data] of held) this.onEvent(type, data);
    }
    this.onStatus('connected', '');
  }

  close() {
    this.pusher.disconnect();
  }
}
