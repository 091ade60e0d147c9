//! The shared tier's Lua scripts: every check-and-set runs in Redis in one atomic step.
//!
//! Every script takes the namespace generation key as `KEYS[1]` and the generation the
//! caller believes current as `ARGV[1]`, and answers `{0}` when the generation key is
//! missing (Redis was flushed or restarted, or evicted it: fail closed), `{1, gen}` when
//! the generation moved (the caller retries under `gen`), or `{2, …}` with its result.
//! Entry keys (`KEYS[2..]`) embed the generation, so a new generation starts empty.

/// The generation check and the version comparison every script starts with.
const PRELUDE: &str = r#"
local g = redis.call('GET', KEYS[1])
if not g then return {0} end
if g ~= ARGV[1] then return {1, g} end
local function ver(s)
  return tonumber(string.sub(s, 2, 9), 16), tonumber(string.sub(s, 10, 17), 16)
end
local function at_least(a, b)
  local a1, a2 = ver(a)
  local b1, b2 = ver(b)
  return a1 > b1 or (a1 == b1 and a2 >= b2)
end
local function versioned(s)
  local c = string.sub(s, 1, 1)
  return c == 'V' or c == 'T'
end
"#;

/// Read with leases: per key, the entry, or `''` when the caller was granted the lease
/// (`ARGV[2]`, with `ARGV[3]` ms to live), or `'M'` for a miss without a lease (no token).
const READ: &str = r#"
local out = {2}
for i = 2, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v then
    out[i] = v
  elseif ARGV[2] ~= '' then
    redis.call('SET', KEYS[i], 'L' .. ARGV[2], 'PX', ARGV[3])
    out[i] = ''
  else
    out[i] = 'M'
  end
end
return out
"#;

/// Fill: for each key still holding the caller's lease `ARGV[2]`, store `ARGV[i + 2]`
/// (`ARGV[3]` ms to live), or drop the lease when that is `''` (no row). A lease voided by
/// a fence, a repair, an eviction or an expiry rejects the fill: the load may be older
/// than what was committed since (C9). Answers the number stored and rejected.
const FILL: &str = r#"
local lease = 'L' .. ARGV[2]
local stored, rejected = 0, 0
for i = 2, #KEYS do
  local v = ARGV[i + 2]
  if redis.call('GET', KEYS[i]) == lease then
    if v == '' then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], v, 'PX', ARGV[3])
      stored = stored + 1
    end
  elseif v ~= '' then
    rejected = rejected + 1
  end
end
return {2, stored, rejected}
"#;

/// Fence before COMMIT: every key holds the writer's fence `ARGV[2]` for `ARGV[3]` ms,
/// which voids every lease handed out so far and hides any value.
const FENCE: &str = r#"
local fence = 'F' .. ARGV[2]
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], fence, 'PX', ARGV[3])
end
return {2}
"#;

/// Settle after COMMIT (or after a rollback, with `''`): a key still holding the
/// writer's fence gets the committed entry `ARGV[i + 2]` (`ARGV[3]` ms to live), unless
/// the change feed marked the fence meanwhile with a newer version, or with an insert and
/// the entry is a tombstone (then it is deleted); another writer's fence is left to that
/// writer; an entry at the same or a newer version stays; anything else (a lease, an
/// older entry, an entry written while the fence was gone) is deleted. Never puts
/// anything but over the writer's own fence, so never an older version over a newer one,
/// even one that expired or was evicted.
///
/// Versions start again when a row is deleted and inserted anew, so a version alone
/// cannot order a tombstone against an insert: a fence marked with an insert (`i`) never
/// takes a tombstone, which may be older than the row now in the database.
const SETTLE: &str = r#"
local fence = 'F' .. ARGV[2]
for i = 2, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  local new = ARGV[i + 2]
  local own = cur == fence
  local marked = false
  local inserted = false
  if cur and not own and string.sub(cur, 1, #fence + 1) == fence .. '|' then
    own = true
    local m = string.sub(cur, #fence + 2)
    if string.sub(m, -1) == 'i' then
      inserted = true
      m = string.sub(m, 1, -2)
    end
    marked = 'V' .. m
  end
  if own then
    if new ~= '' and (not marked or at_least(new, marked))
        and not (inserted and string.sub(new, 1, 1) == 'T') then
      redis.call('SET', KEYS[i], new, 'PX', ARGV[3])
    else
      redis.call('DEL', KEYS[i])
    end
  elseif cur then
    local c = string.sub(cur, 1, 1)
    if c == 'F' then
    elseif versioned(cur) and new ~= '' and at_least(cur, new) then
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
return {2}
"#;

/// Repair from the change feed, for each key: deletes the entry unless it holds the
/// notified change or a later one (`ARGV[2i]`, a `V<version>` header); an insert
/// (`ARGV[2i + 1] == '1'`) always clears a tombstone. A lease is deleted (it may have read
/// before the change). A fence stays (fills stay blocked) but is marked with the highest
/// notified version, and with `i` once an insert was notified, so that its writer's
/// settle stores its row only if it is at least that new, and never a tombstone after an
/// insert (`F<token>|<version>[i]`). Idempotent. Answers, per key, 1 if it deleted the
/// entry.
const REPAIR: &str = r#"
local out = {2}
for i = 2, #KEYS do
  local header = ARGV[2 * (i - 1)]
  local insert = ARGV[2 * (i - 1) + 1]
  local cur = redis.call('GET', KEYS[i])
  out[i] = 0
  if cur then
    local c = string.sub(cur, 1, 1)
    if c == 'F' then
      local bar = string.find(cur, '|', 1, true)
      local base = cur
      local mark = false
      local ins = insert == '1'
      if bar then
        base = string.sub(cur, 1, bar - 1)
        mark = string.sub(cur, bar + 1)
        if string.sub(mark, -1) == 'i' then
          ins = true
          mark = string.sub(mark, 1, -2)
        end
      end
      if not mark or not at_least('V' .. mark, header) then
        mark = string.sub(header, 2)
      end
      local marked = base .. '|' .. mark .. (ins and 'i' or '')
      if marked ~= cur then
        redis.call('SET', KEYS[i], marked, 'KEEPTTL')
      end
    elseif versioned(cur) and not (insert == '1' and c == 'T') and at_least(cur, header) then
    else
      redis.call('DEL', KEYS[i])
      out[i] = 1
    end
  end
end
return out
"#;

/// A new generation: the server's time in microseconds, above the current one. Every
/// entry of earlier generations becomes unreachable. No prelude: it also runs when the
/// generation key is missing.
const BUMP: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local n = now
if cur >= n then n = cur + 1 end
local s = string.format('%.0f', n)
redis.call('SET', KEYS[1], s)
return {2, s}
"#;

/// The generation, or `{0}` when the key is missing.
const CURRENT: &str = r#"
local g = redis.call('GET', KEYS[1])
if not g then return {0} end
return {2, g}
"#;

/// The compiled scripts (their SHA1s; `EVALSHA`, loaded on first use or after a restart).
pub(crate) struct Scripts {
    pub read: redis::Script,
    pub fill: redis::Script,
    pub fence: redis::Script,
    pub settle: redis::Script,
    pub repair: redis::Script,
    pub bump: redis::Script,
    pub current: redis::Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let with_prelude = |body: &str| redis::Script::new(&format!("{PRELUDE}{body}"));
        Scripts {
            read: with_prelude(READ),
            fill: with_prelude(FILL),
            fence: with_prelude(FENCE),
            settle: with_prelude(SETTLE),
            repair: with_prelude(REPAIR),
            bump: redis::Script::new(BUMP),
            current: redis::Script::new(CURRENT),
        }
    }
}
