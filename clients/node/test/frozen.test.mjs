// A lease whose renewals stop arriving: the server (or the network) goes quiet without
// closing anything, and only the client's own timer can tell the holder.
import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { Client, LeaseLost } from 'cachelock';
import { ADDR, TOKEN, aborted, unique } from './support.mjs';

/**
 * A TCP proxy in front of `upstream` (host:port) that can stop passing on the server's
 * bytes: it keeps them back, and closes nothing, as an instance frozen or a network gone
 * quiet would. The client's own bytes still go through. close() ends every connection.
 */
async function holdingProxy(upstream) {
  const colon = upstream.lastIndexOf(':');
  const host = upstream.slice(0, colon);
  const port = Number(upstream.slice(colon + 1));
  const sockets = new Set();
  const track = (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined); // a reset while closing is no failure of the test
  };
  let holding = false;
  const held = [];
  const server = net.createServer((downstream) => {
    const toServer = net.connect(port, host);
    track(downstream);
    track(toServer);
    downstream.on('data', (bytes) => toServer.write(bytes));
    toServer.on('data', (bytes) => (holding ? held.push(bytes) : downstream.write(bytes)));
    downstream.on('close', () => toServer.destroy());
    toServer.on('close', () => downstream.destroy());
  });
  await new Promise((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  return {
    addr: `127.0.0.1:${server.address().port}`,
    /** From now on, bytes from the server are kept back. */
    holdReplies() {
      holding = true;
    },
    /** Closes the listener and every connection. */
    close() {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

test('a lease whose renewals stop arriving is lost (NOT_RENEWED) before it could end', async () => {
  const proxy = await holdingProxy(ADDR);
  const client = new Client(proxy.addr, { token: TOKEN });
  try {
    const lease = await client.lock(unique('frozen'), { ttlMs: 1500 });
    assert.ok(lease.certainForMs() > 0);
    proxy.holdReplies();
    const reason = await aborted(lease.signal, 10_000);
    assert.ok(reason instanceof LeaseLost);
    assert.equal(lease.lostReason, 'NOT_RENEWED');
    assert.throws(() => lease.check(), LeaseLost);
    assert.equal(lease.certainForMs(), 0);
  } finally {
    client.close();
    await proxy.close();
  }
});
