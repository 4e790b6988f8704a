-- ratekeeper: the GCRA buckets of one budget key (1 to 8 of them: requests, tokens, ...),
-- decided together in one atomic script call. The rules are those of src/gcra.rs; the
-- helpers below carry the names of their counterparts there.
--
-- This header is the one description of the protocol and the encoding; the Rust types in
-- src/redis_backend/protocol.rs follow it.
--
-- KEYS
--   KEYS[1] state  "<prefix>{name}:s"  hash: at, g, and per bucket k: u<k>, d<k>, p<k>a,
--                                      s<k>a, p<k>b, s<k>b
--   KEYS[2] limits "<prefix>{name}:c"  hash: n, g, and per bucket k: l<k>, w<k>, b<k>
--   The hash tag {name} puts both on one Redis Cluster slot.
--
-- ARGV (every value a canonical decimal integer unless said otherwise)
--   1        op: take | charge | settle | usage | set
--   2        "" to read Redis TIME, or a fixed time (test mode)
--   3        N, the number of buckets (1..8)
--   4..3+3N  the caller's limits, per bucket: l (units per window, 0 = unlimited), w (window
--            in µs), b (burst in units; 0 when unlimited). Used, and stored, whenever the
--            limits hash is missing: the caller sends its last limit change, or its build-time
--            limits, so that limits lost to a restart or FLUSHALL come back with its next call.
--   then the op's arguments (A = 4 + 3N):
--     take    A: dry (0|1)  A+1: consult mask  A+2: max wait µs  A+3..: units per bucket
--     charge  A: consult mask  A+1..: units per bucket
--     settle  A: generation  A+1: grant time  A+2: whole (0|1)  A+3..: per bucket: the grant's
--             slot start and end (ticks in use at the grant time, before and after it), the
--             slide total at the grant, units to give back, units to charge. whole = 1 gives
--             back the whole slot (a cancel) and ignores the units to give.
--     usage   (none)
--     set     A..: the new limits, per bucket: l, w, b
--   A bucket is *consulted* when its bit (1 << (k - 1)) is set in the mask; an unlimited
--   bucket never is. A malformed argument gets an error reply and nothing is written (the
--   caller's limits are checked where they are used, still before any write).
--
-- Reply: { status, now, events, ... }
--   status 1 done / granted, 0 denied (take) or refund forfeited (settle), -1 never (take:
--   more units than the bucket's burst). events: bit 1 the state was corrupt and was
--   repaired, bit 2 the stored limits were corrupt and were rewritten from the caller's, bit 4
--   the limits were missing and the caller's were stored.
--     take    granted { 1, now, events, g, rho, (start, end, slid) per bucket }
--                                          rho: the release instant; start, end: the slot taken
--                                          in ticks in use at now (start = end when the bucket
--                                          took no part); slid: the bucket's slide total
--             denied  { 0, now, events, k, ready }         k: the bucket with the longest wait
--             never   { -1, now, events, k, burst }
--     charge  { 1, now, events, ready }                     ready: out of debt in every
--                                                           consulted bucket
--     settle  { 1 | 0, now, events }            0: nothing could be given back (another
--                                                 generation); the charges were made
--     usage   { 1, now, events, (used, l, w, b) per bucket } used: whole units, rounded up
--     set     { 1, now, events }
--
-- Encoding. Lua numbers are doubles, exact for integers below 2^53.
--   Time: whole µs since 2025-01-01T00:00:00Z. `now` never goes back for a key: it is the
--   later of the clock and the state's `at`.
--   A bucket of l units per w µs, with l/w = L/P in lowest terms, counts in ticks of 1/L µs:
--   one unit is exactly P ticks and the bucket refills L ticks per µs. The state keeps, per
--   bucket, not the TAT but the ticks in use (TAT - now, or 0) as of `at`, so no number grows
--   with the clock: everything stays below MAXT = 2^52 (the caller keeps a full bucket,
--   b*P, below it; debt saturates there, and a saturated bucket is closed). Admissions are
--   exact continuous GCRA at µs readings; deadlines round up to a µs.
--   g, the generation, changes whenever the state is created, repaired or rescaled by a
--   limit change; a refund must name the generation of its grant. It is kept in both hashes
--   (the limits hash outlives the state, so a recreated state never reuses one).
--   Pending waiters (src/pending.rs), per bucket, in two cohorts a and b: p<k>a is the latest
--   release instant (µs) of the waiters of cohort a, s<k>a the smallest slack (ticks) left to
--   any of them: how far its slot starts after its release instant, less what refunds have
--   slid it since. A cohort whose release bound is at or before now is stale. A waiter joins
--   the cohort with the later bound unless the other is stale, in which case it starts that
--   one afresh: one record would never forget under a standing queue, and the slack spent
--   since the queue began would block refunds for ever. A refund that would move the tail
--   past a pending waiter is capped by the smallest pending slack and spends it from every
--   pending cohort (see `refund`).
--   d<k>, the slide total: ticks by which refunds have slid the slots placed after their
--   grants, in all, since the generation began. A grant records it; its own refund judges
--   its slot as ending that much earlier than recorded, since (`refund` in bucket.rs).
--   It stays below MAXT: a refund that would pass it starts a new generation instead.
--
-- Hostile state. Every stored field is validated (a canonical integer in its range). A state
-- hash that cannot be read whole, or that exists without its limits, is replaced by the
-- closed state: every limited bucket fully used as of now, one cohort of waiters pending
-- until then with no slack, a new generation (no earlier permit can refund into it). Corrupt
-- limits are rewritten from the caller's. Every write sets a TTL: the state expires when
-- every bucket is full again; the limits LIMITS_TTL_MS after they were stored or refreshed
-- (a write to the state refreshes them once half of that has passed), and never before the
-- state. In test mode (a fixed time) both last FIXED_TTL_MS of real time instead.

local MAXT = 4503599627370496      -- 2^52
local INT_MAX = 9007199254740991   -- 2^53 - 1: the largest argument accepted
local EPOCH_S = 1735689600         -- 2025-01-01T00:00:00Z
local MAX_BUCKETS = 8
local MAX_AHEAD_US = 5000000       -- a state written later than now + 5 s is corrupt
local LIMITS_TTL_MS = 86400000     -- 24 h
local FIXED_TTL_MS = 3600000       -- 1 h (test mode)

local STATE_REPAIRED, LIMITS_REPAIRED, LIMITS_STORED = 1, 2, 4

-- A canonical decimal integer in [lo, hi], or nil. `tonumber` alone would let through nan,
-- inf, exponents, hex and spaces, which the script never writes.
local function int(s, lo, hi)
  if type(s) ~= 'string' or #s == 0 or #s > 16 or not string.find(s, '^%d+$') then
    return nil
  end
  local x = tonumber(s)
  if x < lo or x > hi then return nil end
  return x
end

-- Euclid on integers below 2^53 ends within 80 steps; the bound only guards the loop.
local function gcd(a, b)
  for _ = 1, 100 do
    if b == 0 then return a end
    a, b = b, math.fmod(a, b)
  end
  return nil
end

-- exact ceil(x / y) for integers 0 <= x < 2^53, 0 < y
local function cdiv(x, y)
  local r = math.fmod(x, y)
  local q = (x - r) / y
  if r > 0 then q = q + 1 end
  return q
end

-- One bucket's arithmetic, or nil when the limits cannot be exact (a zero window, a burst
-- missing or too large). Shared by the caller's limits, the stored ones and `set`.
local function bucket(l, w, b)
  if not (l and w and b) or w < 1 then return nil end
  if l == 0 then
    if b ~= 0 then return nil end
    return { unlimited = true, l = 0, w = w, b = 0, L = 1, P = 1, cap = 0 }
  end
  if b < 1 then return nil end
  local g = gcd(l, w)
  if not g then return nil end
  local P = w / g
  if b * P >= MAXT then return nil end
  return { l = l, w = w, b = b, L = l / g, P = P, cap = b * P }
end

-- `used` (gcra.rs): ticks of bucket b still in use `dt` µs after `rel` (<= 2^52) were.
-- Exact: below the cutoff dt * L < rel + L, which is below 2^53 unless L > rel, and then
-- dt is 0.
local function used(b, rel, dt)
  if b.unlimited or rel <= 0 or dt >= cdiv(rel, b.L) then return 0 end
  return rel - dt * b.L
end

local function fail(what)
  return redis.error_reply('RATEKEEPER bad argument: ' .. what)
end

-- ---------------------------------------------------------------------------------------
-- Arguments: all checked before anything is written.

local op = ARGV[1]
local clock, real
if ARGV[2] == '' then
  local t = redis.call('TIME')
  real = math.max((tonumber(t[1]) - EPOCH_S) * 1000000 + tonumber(t[2]), 0)
  clock = real
else
  clock = int(ARGV[2], 0, MAXT)
  if not clock then return fail('time') end
end

local N = int(ARGV[3], 1, MAX_BUCKETS)
if not N then return fail('bucket count') end
local A = 4 + 3 * N

-- The caller's limits, checked where they are used: when the stored ones are missing or
-- corrupt (still before anything is written). False when malformed.
local caller
local function callers()
  if caller == nil then
    caller = {}
    for k = 1, N do
      local i = 3 * k + 1
      caller[k] = bucket(int(ARGV[i], 0, INT_MAX), int(ARGV[i + 1], 0, INT_MAX),
        int(ARGV[i + 2], 0, INT_MAX))
      if not caller[k] then
        caller = false
        break
      end
    end
  end
  return caller
end

-- `count` integers from ARGV[from], each in [0, hi], or nil
local function ints(from, count, hi)
  local t = {}
  for k = 1, count do
    t[k] = int(ARGV[from + k - 1], 0, hi)
    if not t[k] then return nil end
  end
  return t
end

local args = {}
if op == 'take' then
  args.dry = int(ARGV[A], 0, 1)
  args.mask = int(ARGV[A + 1], 0, 2 ^ N - 1)
  args.wait = int(ARGV[A + 2], 0, INT_MAX)
  args.units = ints(A + 3, N, INT_MAX)
  if not (args.dry and args.mask and args.wait and args.units) then return fail('take') end
elseif op == 'charge' then
  args.mask = int(ARGV[A], 0, 2 ^ N - 1)
  args.units = ints(A + 1, N, INT_MAX)
  if not (args.mask and args.units) then return fail('charge') end
elseif op == 'settle' then
  args.g = int(ARGV[A], 0, INT_MAX)
  args.at = int(ARGV[A + 1], 0, INT_MAX)
  args.whole = int(ARGV[A + 2], 0, 1)
  local per = ints(A + 3, 5 * N, INT_MAX)
  if not (args.g and args.at and args.whole and per) then return fail('settle') end
  args.grants = {}
  for k = 1, N do
    local i = 5 * (k - 1)
    args.grants[k] = {
      start = math.min(per[i + 1], MAXT),
      finish = math.min(per[i + 2], MAXT),
      slid = per[i + 3],
      give = per[i + 4],
      charge = per[i + 5],
    }
  end
elseif op == 'set' then
  args.limits = {}
  for k = 1, N do
    local i = A + 3 * (k - 1)
    args.limits[k] = bucket(int(ARGV[i], 0, INT_MAX), int(ARGV[i + 1], 0, INT_MAX),
      int(ARGV[i + 2], 0, INT_MAX))
    if not args.limits[k] then return fail('new limits of bucket ' .. k) end
  end
elseif op ~= 'usage' then
  return fail('op')
end

-- ---------------------------------------------------------------------------------------
-- Stored limits and state, validated field by field.

local events = 0

-- The fields of both hashes for N buckets: two, then LIMIT_PER (STATE_PER) per bucket.
local LIMIT_PER, STATE_PER = 3, 6
local LIMIT_FIELDS, STATE_FIELDS = { 'n', 'g' }, { 'at', 'g' }
for k = 1, N do
  for _, f in ipairs({ 'l' .. k, 'w' .. k, 'b' .. k }) do
    LIMIT_FIELDS[#LIMIT_FIELDS + 1] = f
  end
  for _, f in ipairs({ 'u' .. k, 'd' .. k, 'p' .. k .. 'a', 's' .. k .. 'a', 'p' .. k .. 'b',
    's' .. k .. 'b' }) do
    STATE_FIELDS[#STATE_FIELDS + 1] = f
  end
end

-- A hash's fields, or nil when the key holds something else than a hash. `exists` tells a
-- missing key from a hash that lacks every field asked for.
local function read(key, fields)
  local v = redis.pcall('HMGET', key, unpack(fields))
  if type(v) ~= 'table' or v.err then return nil, true end
  for i = 1, #fields do
    if v[i] then return v, true end
  end
  return v, redis.call('EXISTS', key) == 1
end

local lv, lexists = read(KEYS[2], LIMIT_FIELDS)
local B, stored_g -- the buckets in force, and the stored generation when readable
local limits_dirty = false -- the limits hash must be (re)written
local limits_corrupt = false
if lv and not lexists then
  B = callers()
  if not B then return fail('limits') end
elseif lv and int(lv[1], 0, INT_MAX) == N then
  stored_g = int(lv[2], 0, INT_MAX)
  B = {}
  for k = 1, N do
    local i = LIMIT_PER * k
    B[k] = bucket(int(lv[i], 0, INT_MAX), int(lv[i + 1], 0, INT_MAX), int(lv[i + 2], 0, INT_MAX))
    if not B[k] then B = nil break end
  end
  if not stored_g then B = nil end
end
if not B then
  B = callers()
  if not B then return fail('limits') end
  limits_corrupt = true
  limits_dirty = true
  events = events + LIMITS_REPAIRED
  stored_g = nil
end

local sv, sexists = read(KEYS[1], STATE_FIELDS)
local now = clock
local g -- the state's generation; nil until a state exists
-- Per bucket: ticks in use, the slide total, and the two cohorts' release bounds and slacks.
local u, d, pu, ps = {}, {}, {}, {}
local state_ok = sv ~= nil
if sv and sexists then
  local at = int(sv[1], 0, clock + MAX_AHEAD_US)
  g = int(sv[2], 0, INT_MAX)
  -- The state is counted in the units of the stored limits: without them (or with other
  -- ones) it means nothing.
  state_ok = at and g and not limits_corrupt and lexists and g == stored_g
  for k = 1, N do
    if not state_ok then break end
    local i = 3 + STATE_PER * (k - 1)
    u[k] = int(sv[i], 0, MAXT)
    d[k] = int(sv[i + 1], 0, MAXT)
    pu[k] = { int(sv[i + 2], 0, INT_MAX), int(sv[i + 4], 0, INT_MAX) }
    ps[k] = { int(sv[i + 3], 0, B[k].cap), int(sv[i + 5], 0, B[k].cap) }
    state_ok = u[k] and d[k] and pu[k][1] and pu[k][2] and ps[k][1] and ps[k][2]
  end
  if state_ok then
    now = math.max(clock, at)
    -- ticks in use now: each bucket drained for the time since `at`
    for k = 1, N do u[k] = used(B[k], u[k], now - at) end
  end
elseif sv then
  for k = 1, N do u[k], d[k], pu[k], ps[k] = 0, 0, { 0, 0 }, { 0, 0 } end
end

local regen = false -- the state gets a new generation when next written
local state_dirty = false
if not state_ok then
  -- The closed state: fully used as of now, waiters pending until the buckets are full
  -- again, with no slack. Earlier permits refund nothing (new generation).
  events = events + STATE_REPAIRED
  for k = 1, N do
    local b = B[k]
    u[k], d[k] = b.cap, 0
    pu[k] = { b.unlimited and 0 or now + cdiv(b.cap, b.L), 0 }
    ps[k] = { 0, 0 }
  end
  regen, state_dirty = true, true
end

-- ---------------------------------------------------------------------------------------
-- The GCRA rules, per bucket, in ticks in use at `now` (src/gcra.rs works on TATs: tat =
-- now + used). `used` is defined above, where the state is read.

-- `ready`: the instant at which `x` ticks in use have drained to the burst
local function ready(b, x)
  if x <= b.cap then return now end
  return now + cdiv(x - b.cap, b.L)
end

-- `claim`: place n units for release at `rho` (>= now): the slot starts at the later of the
-- tail and rho. Returns the ticks in use after it and the slot's slack (start - rho), or nil
-- when the slot would lie beyond the saturation point (a closed bucket).
local function claim(b, x, n, rho)
  if rho - now >= cdiv(MAXT, b.L) then return nil end
  local drained = (rho - now) * b.L
  local start = math.max(x, drained)
  local after = start + n * b.P
  if after >= MAXT then return nil end
  return after, start - drained
end

-- Pending waiters (src/pending.rs): two cohorts per bucket, see the header.

-- `note`: a claim released at rho (> now) whose slot starts `slack` ticks after rho.
local function note(k, rho, slack)
  local pu_, ps_ = pu[k], ps[k]
  for c = 1, 2 do
    if pu_[c] <= now then
      -- stale: every waiter it described is released; start it afresh
      pu_[c], ps_[c] = rho, slack
      return
    end
  end
  local c = pu_[2] > pu_[1] and 2 or 1
  pu_[c], ps_[c] = math.max(pu_[c], rho), math.min(ps_[c], slack)
end

-- `slack_at`: the smallest slack left to a waiter still pending in bucket k, or nil.
local function pending_slack(k)
  local m
  for c = 1, 2 do
    if pu[k][c] > now then m = math.min(m or MAXT, ps[k][c]) end
  end
  return m
end

-- `spend`: a refund slid the waiters behind its grant by r ticks.
local function spend(k, r)
  for c = 1, 2 do
    if pu[k][c] > now then ps[k][c] = math.max(ps[k][c] - r, 0) end
  end
end

-- `refund` (bucket.rs, gcra.rs): give back up to `q` ticks of a grant whose slot ends, as
-- recorded, `finish` ticks after the grant time `at`, with the slide total `slid` then.
-- Earlier refunds may have slid the slot since: it ends at least `d - slid` ticks earlier,
-- and is judged there (judged at its recorded end, an expired part would count as
-- unexpired). Only the part not yet expired comes back; and when something was placed after
-- the slot while a waiter is still pending, no more than the smallest pending slack, which
-- the refund spends from every pending cohort. What it slides later slots by is added to the
-- slide total. False when the total would reach MAXT: the caller starts a new generation.
local function refund(k, at, finish, slid, q)
  local b = B[k]
  if slid > d[k] then return true end -- a grant from another generation's count: nothing
  local left = used(b, math.max(finish - (d[k] - slid), 0), now - at)
  local r = math.min(q, left)
  local slack
  if u[k] > left then
    slack = pending_slack(k)
    if slack then r = math.min(r, slack) end
  end
  if r <= 0 then return true end
  local next = math.max(u[k] - r, 0)
  if u[k] > left then
    local slide = u[k] - next
    if d[k] + slide >= MAXT then return false end
    d[k] = d[k] + slide
    if slack then spend(k, slide) end
  end
  u[k] = next
  return true
end

-- `rescale`: the same units in use under new limits; a fraction of a unit is carried
-- exactly where the product fits, else rounded up; debt saturates.
local function rescale(old, new, x)
  if old.unlimited or new.unlimited then return 0 end
  local r = math.fmod(x, old.P)
  local q = (x - r) / old.P
  local frac = 0
  if r > 0 then
    if r * new.P < MAXT then frac = cdiv(r * new.P, old.P) else frac = new.P end
  end
  return math.min(q * new.P + frac, MAXT)
end

-- `set_limits` with waiters pending (bucket.rs): the ticks in use under the new limits that
-- keep the tail, `x` ticks ahead under the old ones, at the same instant or later (rounded
-- up). Pending waiters keep deadlines set on the old timeline; a faster rate would carry
-- their units into less time and place the next claims among those deadlines.
local function tail(old, new, x)
  if old.unlimited or new.unlimited or x <= 0 then return 0 end
  local r = math.fmod(x, old.L)
  local t = (x - r) / old.L * new.L -- whole µs, in new ticks (inexact only beyond MAXT)
  if t >= MAXT then return MAXT end
  if r > 0 then
    if r * new.L < MAXT then t = t + cdiv(r * new.L, old.L) else t = t + new.L end
  end
  return math.min(t, MAXT)
end

-- Whether bucket k takes part: consulted by the mask and limited.
local function consulted(mask, k)
  return not B[k].unlimited and math.fmod(math.floor(mask / 2 ^ (k - 1)), 2) == 1
end

-- ---------------------------------------------------------------------------------------
-- Writing: limits first (the state is counted in them), both with a TTL.

local function store()
  local full = 0 -- µs until every bucket is empty of use
  for k = 1, N do
    if B[k].unlimited then u[k], d[k], pu[k], ps[k] = 0, 0, { 0, 0 }, { 0, 0 } end
    full = math.max(full, cdiv(u[k], B[k].L))
  end
  local keep = full > 0
  if keep and state_dirty and not lexists and op ~= 'set' and not limits_corrupt then
    -- Something to count, in limits nobody stored (first use, a restart, FLUSHALL, expiry):
    -- store the caller's, so that every replica counts in the same units.
    events = events + LIMITS_STORED
    limits_dirty = true
  end
  if not (state_dirty or limits_dirty) then return end
  local new_g = keep and state_dirty and (regen or g == nil)
  if new_g then
    g = math.max((stored_g or 0) + 1, clock)
    stored_g = g
    -- Grants of earlier generations refund nothing: the slide totals start again.
    for k = 1, N do d[k] = 0 end
  end
  local state_ttl, limits_ttl = FIXED_TTL_MS, FIXED_TTL_MS
  if real then
    state_ttl = cdiv(now - real + full, 1000) + 1
    limits_ttl = LIMITS_TTL_MS
  end
  limits_ttl = math.max(limits_ttl, state_ttl)
  if new_g and not limits_dirty then
    -- Only the generation changed (a state created anew): the limits hash keeps its count.
    redis.call('HSET', KEYS[2], 'g', string.format('%.0f', g))
  elseif limits_dirty then
    local values = { N, stored_g or 0 }
    for k = 1, N do
      local b = B[k]
      values[#values + 1], values[#values + 2], values[#values + 3] = b.l, b.w, b.b
    end
    local fields = {}
    for i = 1, #LIMIT_FIELDS do
      fields[2 * i - 1], fields[2 * i] = LIMIT_FIELDS[i], string.format('%.0f', values[i])
    end
    -- A corrupt key may not even be a hash: start it afresh.
    if limits_corrupt then redis.call('DEL', KEYS[2]) end
    redis.call('HSET', KEYS[2], unpack(fields))
    redis.call('PEXPIRE', KEYS[2], limits_ttl)
  end
  if not state_dirty then return end
  if not keep then
    redis.call('DEL', KEYS[1])
    return
  end
  local values = { now, g }
  for k = 1, N do
    for _, v in ipairs({ u[k], d[k], pu[k][1], ps[k][1], pu[k][2], ps[k][2] }) do
      values[#values + 1] = v
    end
  end
  local fields = {}
  for i = 1, #STATE_FIELDS do
    fields[2 * i - 1], fields[2 * i] = STATE_FIELDS[i], string.format('%.0f', values[i])
  end
  if not state_ok then redis.call('DEL', KEYS[1]) end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('PEXPIRE', KEYS[1], state_ttl)
  -- The limits never expire before the state counted in them.
  if not limits_dirty then
    local left = redis.call('PTTL', KEYS[2])
    if left < state_ttl or left < limits_ttl / 2 then
      redis.call('PEXPIRE', KEYS[2], limits_ttl)
    end
  end
end

-- Writes what the op and any repair left to write, then replies (with the events).
local function done(reply)
  store()
  reply[3] = events
  return reply
end

-- ---------------------------------------------------------------------------------------
-- The ops.

if op == 'take' then
  local n = args.units
  for k = 1, N do
    if consulted(args.mask, k) and n[k] > B[k].b then
      return done({ -1, now, events, k, B[k].b })
    end
  end
  -- rho: the latest instant at which a consulted bucket conforms (now if all do)
  local rho, worst, worst_ready = now, 0, now
  for k = 1, N do
    if consulted(args.mask, k) then
      local r = ready(B[k], u[k] + n[k] * B[k].P)
      rho = math.max(rho, r)
      if r > now and r >= worst_ready then worst, worst_ready = k, r end
    end
  end
  if rho - now > args.wait then return done({ 0, now, events, worst, worst_ready }) end
  -- Each slot runs from the tail the take found (a gap before rho belongs to the slot: a
  -- cancel gives it back) to its end.
  local start, after, slack = {}, {}, {}
  for k = 1, N do
    start[k], after[k] = u[k], u[k]
    if consulted(args.mask, k) then
      after[k], slack[k] = claim(B[k], u[k], n[k], rho)
      if not after[k] then return done({ 0, now, events, k, rho }) end
    end
  end
  if args.dry == 0 then
    for k = 1, N do
      if consulted(args.mask, k) then
        u[k] = after[k]
        -- A waiter: pending until rho.
        if rho > now then note(k, rho, slack[k]) end
      end
    end
    state_dirty = true
  end
  store()
  local reply = { 1, now, events, g or 0, rho }
  for k = 1, N do
    reply[#reply + 1], reply[#reply + 2], reply[#reply + 3] = start[k], after[k], d[k]
  end
  return reply
elseif op == 'charge' then
  local r = now
  for k = 1, N do
    if consulted(args.mask, k) then
      u[k] = math.min(u[k] + args.units[k] * B[k].P, MAXT)
      r = math.max(r, ready(B[k], u[k]))
      if args.units[k] > 0 then state_dirty = true end
    end
  end
  return done({ 1, now, events, r })
elseif op == 'settle' then
  -- Only a grant of this state's generation, taken at or before now, gives anything back.
  local same = sexists and state_ok and args.g == g and args.at <= now
  for k = 1, N do
    local b, gr = B[k], args.grants[k]
    if same and not b.unlimited then
      -- ticks to give: the whole slot, gap included (a cancel), or whole units
      local q = args.whole == 1 and gr.finish - gr.start or gr.give * b.P
      if q > 0 then
        if not refund(k, args.at, gr.finish, gr.slid, q) then regen = true end
        state_dirty = true
      end
    end
  end
  -- Then what was used beyond the grant, as debt if need be (under any generation).
  for k = 1, N do
    local b, n = B[k], args.grants[k].charge
    if not b.unlimited and n > 0 then
      u[k] = math.min(u[k] + n * b.P, MAXT)
      state_dirty = true
    end
  end
  return done({ same and 1 or 0, now, events })
elseif op == 'usage' then
  local reply = { 1, now, events }
  for k = 1, N do
    local b = B[k]
    reply[#reply + 1] = b.unlimited and 0 or cdiv(u[k], b.P)
    reply[#reply + 1], reply[#reply + 2], reply[#reply + 3] = b.l, b.w, b.b
  end
  return done(reply)
elseif op == 'set' then
  local same = lexists and not limits_corrupt
  for k = 1, N do
    local o, n = B[k], args.limits[k]
    if o.l ~= n.l or o.w ~= n.w or o.b ~= n.b then same = false end
  end
  if same then
    -- The limits already in force (re-learned from a header): keep the generation, so
    -- permits out now can still be refunded.
    return done({ 1, now, events })
  end
  for k = 1, N do
    local carried = rescale(B[k], args.limits[k], u[k])
    if pending_slack(k) then carried = math.max(carried, tail(B[k], args.limits[k], u[k])) end
    u[k] = carried
    -- Pending waiters keep their deadlines, but their slack is not known in the new units.
    ps[k] = { 0, 0 }
  end
  B = args.limits
  regen, state_dirty, limits_dirty = true, true, true
  return done({ 1, now, events })
end
