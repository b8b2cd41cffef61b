// Live job events: one WebSocket subscribed to the tenant's topic. When the
// socket drops it reconnects with exponential backoff (plus jitter, so a
// restarted server is not hit by every tab at once) and, once subscribed
// again, calls `onSync` so the page refetches what it missed.

const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 30_000;
// A socket that opens but is not subscribed within this time is given up.
const SUBSCRIBE_TIMEOUT_MS = 10_000;
// A connection that stayed up this long starts the backoff over when it
// drops; shorter ones keep growing it (a server that accepts and then
// closes at once is not hammered).
const STABLE_MS = 10_000;

export class LiveFeed {
  /**
   * handlers: onEvent(event), onSync(), onState(state, detail) where state is
   * 'connecting' | 'live' | 'waiting' | 'stopped', and onDenied() when the
   * socket never opens (the token may be refused).
   */
  constructor(token, handlers) {
    this.token = token;
    this.h = handlers;
    this.ws = null;
    this.failures = 0;
    this.timer = null;
    this.stopped = false;
    this.onOnline = () => this.reconnectNow();
    this.onVisible = () => {
      if (document.visibilityState === 'visible') this.reconnectNow();
    };
    window.addEventListener('online', this.onOnline);
    document.addEventListener('visibilitychange', this.onVisible);
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    window.removeEventListener('online', this.onOnline);
    document.removeEventListener('visibilitychange', this.onVisible);
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.onmessage = null;
      this.ws.close(1000, 'signed out');
      this.ws = null;
    }
    this.h.onState('stopped');
  }

  /** Skips the remaining backoff (the browser came back online, say). */
  reconnectNow() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.timer);
    this.connect();
  }

  connect() {
    this.timer = null;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = `${scheme}//${location.host}/v1/ws?token=${encodeURIComponent(this.token)}`;
    this.h.onState('connecting');
    let opened = false;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch {
      this.scheduleRetry(false);
      return;
    }
    this.ws = ws;
    let liveSince = 0;
    const giveUp = setTimeout(() => ws.close(4000, 'no subscription'), SUBSCRIBE_TIMEOUT_MS);
    ws.onopen = () => {
      opened = true;
      ws.send(JSON.stringify({ op: 'subscribe', topic: 'tenant' }));
    };
    ws.onmessage = (msg) => {
      let data;
      try {
        data = JSON.parse(msg.data);
      } catch {
        return;
      }
      if (data.type === 'subscribed' && data.topic === 'tenant') {
        clearTimeout(giveUp);
        liveSince = Date.now();
        this.h.onState('live');
        // Whatever happened while we were away: refetch the list.
        this.h.onSync();
      } else if (data.type === 'lagged') {
        // Events were dropped for us: the list is the source of truth.
        this.h.onSync();
      } else if (data.type === 'error') {
        console.warn('murmur live feed:', data.code, data.detail);
      } else if (data.job_id && typeof data.seq === 'number') {
        this.h.onEvent(data);
      }
    };
    ws.onclose = () => {
      clearTimeout(giveUp);
      if (this.ws === ws) this.ws = null;
      if (this.stopped) return;
      if (liveSince && Date.now() - liveSince >= STABLE_MS) this.failures = 0;
      this.scheduleRetry(opened);
    };
  }

  scheduleRetry(opened) {
    this.failures += 1;
    if (!opened && this.failures >= 2) this.h.onDenied?.();
    const exp = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** (this.failures - 1));
    const delay = Math.round(exp / 2 + Math.random() * (exp / 2));
    this.h.onState('waiting', delay);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }
}
