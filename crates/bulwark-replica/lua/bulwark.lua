#!lua name=bulwark
--[[
The Bulwark replica protocol as a Redis (>= 7) function library.

See docs/ARCHITECTURE.md, "The replica protocol": these functions have the arguments and
the reply shapes of the native BW.* commands of a `bulwark node`, and are called as

    FCALL bw_get     1 <key>
    FCALL bw_put     1 <key> <version> <tomb 0|1> <value>
    FCALL bw_prepare 1 <key> <version> <coordinator> <tomb 0|1> <value>
    FCALL bw_commit  1 <key> <version>
    FCALL bw_abort   1 <key> <version>
    FCALL bw_repair  1 <key> <version> <tomb 0|1> <value>
    FCALL bw_digest  0 <cursor> <count>
    FCALL bw_buckets 0 <cursor> <count> <bucket> [<bucket> ...]
    FCALL bw_format  0                      -> layout version (integer)
    FCALL bw_fence   0 <layout>             -> the layout fence in force (integer)
    FCALL bw_at      1 <key> <layout> <op> <op's arguments>
                     op: get, put, prepare, commit, abort or repair; op's reply, or
                     STALE_LAYOUT when <layout> is older than the fence

Layout fencing (docs/design/sharding.md, section 3), as on a node: a call routed with a
layout older than the fence is refused and changes nothing; the fence only rises. It is
kept in the string key "bw!fence", outside the "bw:" namespace of user keys, so it is as
durable as the server's appendfsync makes it; a function runs alone, so a fence never
overlaps a call it fences.

Each call runs atomically (Redis runs one function at a time), so no WATCH/MULTI is needed.
Durability is the server's `appendfsync` policy: replicas used for CP or quorum writes must
run with `appendonly yes` and `appendfsync always`, so that PREPARE/COMMIT/ABORT are on
disk when they are acknowledged.

Key layout, version 1 (FORMAT below). Everything about user key K lives in ONE hash, so
every call touches exactly one Redis key:

    bw:K  (hash)
      v        committed version: 24 lowercase hex digits; absent if never committed
      d        committed value (binary-safe); "" for a tombstone
      t        "1" if the committed record is a tombstone, else "0"
      p:<V>    value of pending write V ("" for a tombstone)
      c:<V>    coordinator of pending write V; its presence means "V is pending"
      t:<V>    "1" if pending write V is a tombstone, else "0"

So the hash has 3 fields per pending write, plus 3 when a committed record exists; the
pending count is derived from HLEN. The hash name is derived from KEYS[1] (prefix "bw:")
so that Bulwark data never collides with other data in the same Redis; this is fine on a
standalone Redis (what Bulwark runs against), not on Redis Cluster.

Versions are fixed-width lowercase hex, so comparing them as strings orders them as
numbers; every version argument is checked for that form. Values and keys are Lua strings,
which are binary-safe. Nil inside a reply array is written `false` (Lua tables cannot
hold nil; Redis turns false into a nil bulk reply).
]]

local FORMAT = 1
local MAX_PENDING = 16

local function hash_of(keys)
  return 'bw:' .. keys[1]
end

-- Returns an error message if `version` is not 24 lowercase hex digits.
local function bad_version(version)
  if type(version) ~= 'string' or #version ~= 24 or not string.match(version, '^[0-9a-f]+$') then
    return 'ERR invalid version: expected 24 lowercase hex digits'
  end
  return nil
end

local function bad_tomb(tomb)
  if tomb ~= '0' and tomb ~= '1' then
    return 'ERR invalid tombstone flag: expected 0 or 1'
  end
  return nil
end

local function check_key(keys)
  if #keys ~= 1 then
    return 'ERR exactly one key expected'
  end
  return nil
end

-- [committed_version|nil, value|nil, tomb 0|1, [[pending_version, coordinator], ...]]
local function bw_get(keys, args)
  local err = check_key(keys)
  if err then return redis.error_reply(err) end
  local h = hash_of(keys)
  local pending = {}
  local versions = {}
  for _, field in ipairs(redis.call('HKEYS', h)) do
    if string.sub(field, 1, 2) == 'c:' then
      versions[#versions + 1] = string.sub(field, 3)
    end
  end
  table.sort(versions)
  for i, v in ipairs(versions) do
    pending[i] = { v, redis.call('HGET', h, 'c:' .. v) }
  end
  local c = redis.call('HMGET', h, 'v', 'd', 't')
  if not c[1] then
    return { false, false, 0, pending }
  end
  if c[3] == '1' then
    return { c[1], false, 1, pending }
  end
  return { c[1], c[2] or '', 0, pending }
end

-- Last-write-wins: [applied 0|1, committed_version|nil]
local function bw_put(keys, args)
  local version, tomb, value = args[1], args[2], args[3]
  local err = check_key(keys) or bad_version(version) or bad_tomb(tomb)
  if err then return redis.error_reply(err) end
  local h = hash_of(keys)
  local cur = redis.call('HGET', h, 'v')
  if cur and version <= cur then
    return { 0, cur }
  end
  if tomb == '1' then value = '' end
  redis.call('HSET', h, 'v', version, 'd', value or '', 't', tomb)
  return { 1, version }
end

-- ["OK"|"STALE"|"BUSY", committed_version|nil]
local function bw_prepare(keys, args)
  local version, coordinator, tomb, value = args[1], args[2], args[3], args[4]
  local err = check_key(keys) or bad_version(version) or bad_tomb(tomb)
  if err then return redis.error_reply(err) end
  if type(coordinator) ~= 'string' or #coordinator == 0 then
    return redis.error_reply('ERR coordinator must not be empty')
  end
  local h = hash_of(keys)
  local cur = redis.call('HGET', h, 'v')
  if cur and version <= cur then
    return { 'STALE', cur }
  end
  -- Preparing the same version again (a retried request) is idempotent.
  if redis.call('HEXISTS', h, 'c:' .. version) == 0 then
    local committed_fields = cur and 3 or 0
    local pending = (redis.call('HLEN', h) - committed_fields) / 3
    if pending >= MAX_PENDING then
      return { 'BUSY', cur or false }
    end
  end
  if tomb == '1' then value = '' end
  redis.call('HSET', h, 'p:' .. version, value or '', 'c:' .. version, coordinator, 't:' .. version, tomb)
  return { 'OK', cur or false }
end

-- 1 if pending `version` existed (it is now removed, and committed if newer), else 0
local function bw_commit(keys, args)
  local version = args[1]
  local err = check_key(keys) or bad_version(version)
  if err then return redis.error_reply(err) end
  local h = hash_of(keys)
  local p = redis.call('HMGET', h, 'c:' .. version, 'p:' .. version, 't:' .. version)
  if not p[1] then
    return 0
  end
  redis.call('HDEL', h, 'p:' .. version, 'c:' .. version, 't:' .. version)
  local cur = redis.call('HGET', h, 'v')
  if not cur or version > cur then
    redis.call('HSET', h, 'v', version, 'd', p[2] or '', 't', p[3] or '0')
  end
  return 1
end

-- 1 if pending `version` was removed, 0 if it was absent
local function bw_abort(keys, args)
  local version = args[1]
  local err = check_key(keys) or bad_version(version)
  if err then return redis.error_reply(err) end
  local h = hash_of(keys)
  if redis.call('HDEL', h, 'p:' .. version, 'c:' .. version, 't:' .. version) > 0 then
    return 1
  end
  return 0
end

-- Anti-entropy repair: as bw_put, but a record of the same version whose bytes differ
-- (a corrupt copy) is replaced too. [applied 0|1, committed_version|nil]
local function bw_repair(keys, args)
  local version, tomb, value = args[1], args[2], args[3]
  local err = check_key(keys) or bad_version(version) or bad_tomb(tomb)
  if err then return redis.error_reply(err) end
  if tomb == '1' then value = '' end
  value = value or ''
  local h = hash_of(keys)
  local cur = redis.call('HMGET', h, 'v', 'd', 't')
  if cur[1] and (version < cur[1] or (version == cur[1] and cur[2] == value and cur[3] == tomb)) then
    return { 0, cur[1] }
  end
  redis.call('HSET', h, 'v', version, 'd', value, 't', tomb)
  return { 1, version }
end

--[[
Anti-entropy digest (docs/ARCHITECTURE.md, "Anti-entropy"; bulwark-core's `ae` module
defines the same values in Rust). A user key K's bucket is the first 3 hex digits of
SHA-1(K); its committed record (version V, tombstone flag T, value D, "" for tombstones)
hashes to the first 16 hex digits of SHA-1(K .. "\0" .. V .. "\0" .. T .. D). Lua numbers
cannot hold 64 bits, so a bucket's XOR is kept as two 32-bit halves (the `bit` library).

Both functions walk the key space with SCAN in chunks (<cursor> <count>), so one call
blocks the server only for one chunk; the caller loops until the cursor is "0".
]]
local function record_of(hash_name)
  local ok, c = pcall(redis.call, 'HMGET', hash_name, 'v', 'd', 't')
  if not ok or not c[1] then return nil end
  local key = string.sub(hash_name, 4)
  local tomb = c[3] or '0'
  local h = redis.sha1hex(key .. '\0' .. c[1] .. '\0' .. tomb .. (c[2] or ''))
  local bucket = tonumber(string.sub(redis.sha1hex(key), 1, 3), 16)
  return key, c[1], tomb, string.sub(h, 1, 16), bucket
end

local function scan_args(args)
  local cursor, count = args[1], tonumber(args[2])
  if type(cursor) ~= 'string' or not string.match(cursor, '^[0-9]+$') then
    return nil, 'ERR invalid cursor'
  end
  if not count or count < 1 or count > 100000 then
    return nil, 'ERR invalid count: expected 1..100000'
  end
  return redis.call('SCAN', cursor, 'MATCH', 'bw:*', 'COUNT', count)
end

-- [next_cursor, [bucket, xor (16 hex digits), bucket, xor, ...]] for this chunk
local function bw_digest(keys, args)
  local page, err = scan_args(args)
  if not page then return redis.error_reply(err) end
  local hi, lo, order = {}, {}, {}
  for _, name in ipairs(page[2]) do
    local key, _, _, h, b = record_of(name)
    if key then
      if not hi[b] then
        hi[b], lo[b] = 0, 0
        order[#order + 1] = b
      end
      hi[b] = bit.bxor(hi[b], tonumber(string.sub(h, 1, 8), 16))
      lo[b] = bit.bxor(lo[b], tonumber(string.sub(h, 9, 16), 16))
    end
  end
  local out = {}
  for _, b in ipairs(order) do
    out[#out + 1] = b
    out[#out + 1] = bit.tohex(hi[b], 8) .. bit.tohex(lo[b], 8)
  end
  return { page[1], out }
end

-- [next_cursor, [[key, version, tomb 0|1, hash (16 hex digits)], ...]] for the committed
-- records of this chunk that fall in the given buckets
local function bw_buckets(keys, args)
  local wanted = {}
  for i = 3, #args do
    local b = tonumber(args[i])
    if not b or b < 0 or b > 4095 or b ~= math.floor(b) then
      return redis.error_reply('ERR invalid bucket: expected an integer in 0..4095')
    end
    wanted[b] = true
  end
  local page, err = scan_args(args)
  if not page then return redis.error_reply(err) end
  local out = {}
  for _, name in ipairs(page[2]) do
    local key, version, tomb, h, b = record_of(name)
    if key and wanted[b] then
      out[#out + 1] = { key, version, tonumber(tomb), h }
    end
  end
  return { page[1], out }
end

local function bw_format(keys, args)
  return FORMAT
end

local FENCE = 'bw!fence'

-- A layout version: decimal digits, small enough for a Lua number to hold exactly.
local function layout_arg(s)
  if type(s) ~= 'string' or #s > 15 or not string.match(s, '^[0-9]+$') then
    return nil
  end
  return tonumber(s)
end

local function fence_now()
  return tonumber(redis.call('GET', FENCE) or '0')
end

local function bw_fence(keys, args)
  local layout = layout_arg(args[1])
  if #keys ~= 0 or #args ~= 1 or not layout then
    return redis.error_reply('ERR invalid layout version: expected a decimal number')
  end
  local min = fence_now()
  if layout > min then
    redis.call('SET', FENCE, string.format('%d', layout))
    min = layout
  end
  return min
end

local FENCED = {
  get = bw_get, put = bw_put, prepare = bw_prepare,
  commit = bw_commit, abort = bw_abort, repair = bw_repair,
}

local function bw_at(keys, args)
  local layout = layout_arg(args[1])
  if not layout then
    return redis.error_reply('ERR invalid layout version: expected a decimal number')
  end
  local op = FENCED[args[2]]
  if not op then
    return redis.error_reply('ERR bw_at carries get, put, prepare, commit, abort or repair')
  end
  local min = fence_now()
  if layout < min then
    return redis.error_reply(string.format(
      'STALE_LAYOUT %d (this call was routed with layout %d)', min, layout))
  end
  return op(keys, { unpack(args, 3) })
end

redis.register_function{ function_name = 'bw_get', callback = bw_get, flags = { 'no-writes' } }
redis.register_function{ function_name = 'bw_put', callback = bw_put }
redis.register_function{ function_name = 'bw_prepare', callback = bw_prepare }
redis.register_function{ function_name = 'bw_commit', callback = bw_commit }
redis.register_function{ function_name = 'bw_abort', callback = bw_abort }
redis.register_function{ function_name = 'bw_repair', callback = bw_repair }
redis.register_function{ function_name = 'bw_digest', callback = bw_digest, flags = { 'no-writes' } }
redis.register_function{ function_name = 'bw_buckets', callback = bw_buckets, flags = { 'no-writes' } }
redis.register_function{ function_name = 'bw_format', callback = bw_format, flags = { 'no-writes' } }
redis.register_function{ function_name = 'bw_fence', callback = bw_fence }
redis.register_function{ function_name = 'bw_at', callback = bw_at }
