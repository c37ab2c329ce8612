import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { inspect } from 'node:util';
import { FencedOut, Leadership, LeaseLost } from 'cachelock';
import { aborted, connect, deleteLockKeys, eventually, unique } from './support.mjs';

const client = connect();
after(() => client.close());

/** The next event of an Observe iterator; rejects if none comes within `ms`. */
async function nextEvent(events, ms = 10_000) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no Observe event within ${ms} ms`)), ms);
  });
  try {
    const next = await Promise.race([events.next(), timeout]);
    assert.equal(next.done, false, 'the Observe stream goes on');
    return next.value;
  } finally {
    clearTimeout(timer);
  }
}

/** The next event naming a leader, past the moments with nobody leading. */
async function nextLeader(events) {
  for (;;) {
    const event = await nextEvent(events);
    if (event.type === 'leader') return [event.candidate, event.term];
  }
}

test('candidates lead one at a time; the old term is fenced out once the next is elected', async () => {
  const name = `{${unique('sched')}}`;
  const key = `${name}:x`;
  const observation = client.elections.observe(name);
  const events = observation[Symbol.asyncIterator]();
  try {
    assert.equal((await nextEvent(events)).type, 'noLeader', 'nobody leads at first');
    const a = await client.campaign(name, { candidate: 'a', ttlMs: 1500 });
    assert.ok(a instanceof Leadership);
    assert.equal(typeof a.term, 'bigint');
    assert.ok(a.term > 0n);
    assert.deepEqual(a.fence, { lock: name, fencingToken: a.term });
    assert.ok(a.certainForMs() > 0);
    assert.deepEqual(await nextLeader(events), ['a', a.term]);

    let bElected = false;
    const bCampaign = client.campaign(name, { candidate: 'b', ttlMs: 1500 }).then((b) => ((bElected = true), b));
    await eventually(async () => (await client.locks.describe(name)).waiting === 1);
    // A third candidate gives up waiting with its signal.
    const giveUp = new AbortController();
    const cCampaign = client.campaign(name, { candidate: 'c', ttlMs: 1500, signal: giveUp.signal });
    giveUp.abort(new Error('c gave up'));
    await assert.rejects(cCampaign, /c gave up/);
    const leader = await client.elections.leader(name);
    assert.equal(leader.candidate, 'a');
    assert.equal(leader.term, a.term);
    assert.ok(leader.since instanceof Date && leader.ttlMs > 0);
    assert.equal(bElected, false, 'b was elected while a leads');

    await a.resign();
    const b = await bCampaign;
    try {
      assert.ok(b.term > a.term, `${b.term} > ${a.term}`);
      assert.deepEqual(await nextLeader(events), ['b', b.term]);
      await assert.rejects(
        client.cache.fenced({ lock: name, fencingToken: a.term }).set(key, 'from a', { ttlMs: 60_000 }),
        FencedOut,
      );
      assert.equal(await client.cache.fenced(b).set(key, 'from b', { ttlMs: 60_000 }), true);
      assert.equal((await client.cache.get(key)).toString(), 'from b');
    } finally {
      await b.resign();
    }
  } finally {
    observation.close();
  }
});

test('a leader whose lock vanishes is told lost, and Observe then shows nobody leading', async () => {
  const name = `{${unique('sched')}}`;
  const observation = client.elections.observe(name);
  const events = observation[Symbol.asyncIterator]();
  try {
    assert.equal((await nextEvent(events)).type, 'noLeader');
    let term;
    await assert.rejects(
      client.withLeadership(name, { candidate: 'a', ttlMs: 1500 }, async (leader) => {
        term = leader.term;
        assert.deepEqual(await nextLeader(events), ['a', leader.term]);
        deleteLockKeys(name);
        const reason = await aborted(leader.signal);
        assert.ok(reason instanceof LeaseLost);
        assert.equal(leader.lostReason, 'LOCK_NOT_HELD');
        assert.throws(() => leader.check(), LeaseLost);
        assert.equal(leader.certainForMs(), 0);
        return 'done';
      }),
      LeaseLost,
    );
    assert.ok(term > 0n);
    assert.equal((await nextEvent(events)).type, 'noLeader', 'Observe shows nobody leading');
    assert.equal(await client.elections.leader(name), null);
  } finally {
    observation.close();
  }
});

test('the resign token shows in no string form, and resigns the term from elsewhere', async () => {
  const name = `{${unique('sched')}}`;
  const leader = await client.campaign(name, { candidate: 'a', ttlMs: 1500 });
  try {
    const token = leader.resignToken;
    assert.ok(typeof token === 'string' && token.length > 0);
    const forms = [inspect(leader, { depth: 10, showHidden: true }), JSON.stringify(leader), String(leader), `${leader}`];
    for (const text of forms) {
      assert.ok(!text.includes(token), text);
      assert.ok(text.includes(leader.term.toString()), text);
    }
    await client.elections.resign(name, token);
    await client.elections.resign(name, token); // accepted again: its answer may have been lost
    await aborted(leader.signal);
    assert.equal(await client.elections.leader(name), null);
  } finally {
    await leader.resign();
  }
});
