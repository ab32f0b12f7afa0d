//! The Lua scripts of the Redis subscriber. Redis runs a script alone, so each multi-step change
//! of the group's state (take a due retry off the schedule and claim it, take over an idle
//! entry unless it waits for a retry) happens all at once: two members cannot both take an
//! entry, and a crash cannot stop a change halfway.
//!
//! Times are the server's (`TIME`, in Unix milliseconds), so members whose clocks disagree still
//! agree on when a retry is due. Every script names the keys it touches in `KEYS`.

use std::sync::LazyLock;

use redis::Script;

/// Takes the entries whose retry is due, oldest due first: removes each from the schedule and
/// claims it for this consumer (`XCLAIM`, which resets its idle time). An entry no longer
/// pending (acked meanwhile, or trimmed from the stream) only loses its records.
///
/// KEYS: stream, retry schedule, attempts. ARGV: group, consumer, most entries.
/// Reply: `{{id, attempt, fields}...}, ms until the next scheduled retry (-1: none)`.
pub(super) static CLAIM_DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local claimed = {}
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[2], id)
  local entry = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id)[1]
  if entry and type(entry[2]) == 'table' then
    claimed[#claimed + 1] = {id, redis.call('HGET', KEYS[3], id) or '1', entry[2]}
  else
    redis.call('HDEL', KEYS[3], id)
  end
end
local next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2]
local wait = -1
if next_due then wait = math.max(0, tonumber(next_due) - now) end
return {claimed, wait}
",
    )
});

/// Takes over entries pending longer than the idle limit (their member stopped, or did not
/// extend), scanning the pending list from the cursor with `XAUTOCLAIM`. An entry waiting for
/// its retry is left to the schedule: it is claimed (harmless, the schedule decides when it
/// comes out) but not handed out. Each entry handed out is a new attempt.
///
/// KEYS: stream, retry schedule, attempts. ARGV: group, consumer, idle limit ms, cursor, count.
/// Reply: `{next cursor, {{id, attempt, fields}...}}`.
pub(super) static TAKE_OVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  'COUNT', ARGV[5])
local taken = {}
for _, entry in ipairs(reply[2]) do
  local id = entry[1]
  if type(entry[2]) == 'table' and not redis.call('ZSCORE', KEYS[2], id) then
    local attempt = tonumber(redis.call('HGET', KEYS[3], id) or '1') + 1
    redis.call('HSET', KEYS[3], id, attempt)
    taken[#taken + 1] = {id, attempt, entry[2]}
  end
end
for _, id in ipairs(reply[3] or {}) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
return {reply[1], taken}
",
    )
});

/// Schedules a pending entry's next delivery: due `delay` ms from now (plus one, as the clock
/// is rounded down), as the given attempt. Does nothing to an entry no longer pending: another
/// member took it over and acked it, and a schedule for it would only be cleaned up later.
///
/// KEYS: stream, retry schedule, attempts. ARGV: group, entry id, delay ms, next attempt.
/// Reply: 1 when scheduled, 0 when the entry is not pending.
pub(super) static SCHEDULE_RETRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) == 0 then
  return 0
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]) + 1, ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
return 1
",
    )
});

/// Sets the idle time of the given entries this consumer still holds: 0 to keep them from a
/// takeover (`extend`), the idle limit to offer them to the next member that scans (`close`).
/// An entry another member has taken over meanwhile is left to it.
///
/// KEYS: stream. ARGV: group, consumer, idle ms, entry ids...
/// Reply: how many entries were touched.
pub(super) static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local touched = 0
for i = 4, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if pending and pending[2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
    touched = touched + 1
  end
end
return touched
",
    )
});

/// Removes this consumer from the group when it holds nothing, so members named after
/// short-lived pods do not pile up in `XINFO CONSUMERS`.
///
/// KEYS: stream. ARGV: group, consumer. Reply: 1 when removed.
pub(super) static FORGET_CONSUMER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
",
    )
});

/// Whether the stream and the group exist, without creating either.
///
/// KEYS: stream. ARGV: group. Reply: `ok`, `no stream` or `no group`.
pub(super) static CHECK_GROUP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 'no stream'
end
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  for i = 1, #group, 2 do
    if group[i] == 'name' and group[i + 1] == ARGV[1] then
      return 'ok'
    end
  end
end
return 'no group'
",
    )
});

/// How far behind the group is: entries it has not read yet (the group's `lag`; counted, up
/// to a limit, when Redis cannot tell, as after an `XDEL`), entries pending (in flight or
/// waiting for a retry), the oldest of them (the oldest pending one, as pending entries were
/// all read before any unread one) and the server's time.
///
/// KEYS: stream. ARGV: group, counting limit.
/// Reply: `{unread, pending, oldest id or '', now ms}`.
pub(super) static LAG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for _, fields in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local group = {}
  for i = 1, #fields, 2 do group[fields[i]] = fields[i + 1] end
  if group['name'] == ARGV[1] then
    local after = '(' .. group['last-delivered-id']
    local unread = group['lag']
    if not unread then
      unread = 0
      local from = after
      while unread < tonumber(ARGV[2]) do
        local page = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', 1000)
        if #page == 0 then break end
        unread = unread + #page
        from = '(' .. page[#page][1]
      end
    end
    local oldest = redis.call('XPENDING', KEYS[1], ARGV[1])[2]
    if not oldest then
      local first = redis.call('XRANGE', KEYS[1], after, '+', 'COUNT', 1)[1]
      oldest = first and first[1] or ''
    end
    local time = redis.call('TIME')
    local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
    return {unread, group['pending'], oldest, now}
  end
end
return redis.error_reply('NOGROUP no consumer group ' .. ARGV[1] .. ' on this stream')
",
    )
});
