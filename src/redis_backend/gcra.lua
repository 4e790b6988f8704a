-- ratekeeper: both GCRA buckets of one budget key, decided in one atomic script call.
--
-- KEYS[1]  state hash  "<prefix>{name}:s"  fields at, ru, tu (see below); expires when full
-- KEYS[2]  limits hash "<prefix>{name}:c"  fields per, rl, rb, tl, tb, ver (no expiry)
-- The hash tag {name} puts both keys on one Redis Cluster slot.
--
-- ARGV[1] op: acq | claim | charge | refund | usage | set
-- ARGV[2] fixed time in µs since the ratekeeper epoch, or "" to read Redis TIME (test mode
--         only; a fixed time also disables expiry, since real expiry would not follow it)
-- ARGV[3..7] the caller's default limits (per, rl, rb, tl, tb), used while no set_limit has
--         stored limits in KEYS[2]
-- ARGV[8..] op arguments
--
-- Encoding (Lua numbers are doubles, exact for integers below 2^53):
--   time: whole µs since 2025-01-01T00:00:00Z (Redis TIME minus the epoch).
--   A bucket of l units per `per` µs, with l/per = L/P in lowest terms, counts in ticks of
--   1/L µs: one unit is exactly P ticks and the bucket refills L ticks per µs. Its state is
--   the TAT as "ticks in use" (TAT - now) at time `at`, so no number grows with the clock:
--   everything stays below burst*P + n*P, which the caller keeps below 2^52 (MAXT caps debt).
--   This is exact continuous GCRA at µs readings: no rounding in the admission path at all.

local MAXT = 4503599627370496 -- 2^52: saturated debt denies everything
local EPOCH_S = 1735689600     -- 2025-01-01T00:00:00Z

local function gcd(a, b)
  while b ~= 0 do a, b = b, math.fmod(a, b) end
  return a
end

-- exact ceil(x / y) for integers 0 <= x < 2^53, 0 < y
local function cdiv(x, y)
  local r = math.fmod(x, y)
  local q = (x - r) / y
  if r > 0 then q = q + 1 end
  return q
end

local function bucket(per, l, b)
  if l == 0 then return { unlimited = true, l = 0, b = 0, L = 1, P = 1 } end
  local g = gcd(l, per)
  return { L = l / g, P = per / g, l = l, b = b }
end

-- ticks still in use `dt` µs after `rel` ticks were in use
local function drain(k, rel, dt)
  if rel <= 0 or dt >= cdiv(rel, k.L) then return 0 end
  return rel - dt * k.L
end

local cfg = redis.call('HMGET', KEYS[2], 'per', 'rl', 'rb', 'tl', 'tb', 'ver')
local per, rl, rb, tl, tb, ver
if cfg[1] then
  per, rl, rb, tl, tb, ver = tonumber(cfg[1]), tonumber(cfg[2]), tonumber(cfg[3]),
    tonumber(cfg[4]), tonumber(cfg[5]), tonumber(cfg[6])
else
  per, rl, rb, tl, tb, ver = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
    tonumber(ARGV[6]), tonumber(ARGV[7]), 0
end
local R = bucket(per, rl, rb)
local T = bucket(per, tl, tb)

local fixed = ARGV[2] ~= ''
local now
if fixed then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = (tonumber(t[1]) - EPOCH_S) * 1000000 + tonumber(t[2])
end

-- ticks in use now, per bucket (a clock that went back counts as no time passing)
local st = redis.call('HMGET', KEYS[1], 'at', 'ru', 'tu')
local at = tonumber(st[1]) or now
local dt = math.max(now - at, 0)
local ru = R.unlimited and 0 or drain(R, tonumber(st[2]) or 0, dt)
local tu = T.unlimited and 0 or drain(T, tonumber(st[3]) or 0, dt)

local function int(x) return string.format('%.0f', x) end

-- Writes the state as of now and lets it expire once both buckets are full again.
local function store()
  if R.unlimited then ru = 0 end
  if T.unlimited then tu = 0 end
  local full = math.max(cdiv(ru, R.L), cdiv(tu, T.L)) -- µs until both are empty of use
  if full <= 0 then
    redis.call('DEL', KEYS[1])
    return
  end
  redis.call('HSET', KEYS[1], 'at', int(now), 'ru', int(ru), 'tu', int(tu))
  if fixed then
    redis.call('PERSIST', KEYS[1])
  else
    redis.call('PEXPIRE', KEYS[1], cdiv(full, 1000) + 1)
  end
end

-- the time (µs) at which `used` ticks have drained to the burst
local function ready_at(k, used)
  return now + cdiv(math.max(used - k.b * k.P, 0), k.L)
end

-- GCRA admit: the ticks in use after taking n units, or nil and when the call could succeed
local function admit(k, used, n)
  if k.unlimited then return 0 end
  local new = used + n * k.P
  if new <= k.b * k.P then return new end
  return nil, ready_at(k, new)
end

-- GCRA claim: unconditional (a waiter's slot or a charge); conforms at the returned time
local function claim(k, used, n)
  if k.unlimited then return 0, now end
  local new = math.min(used + n * k.P, MAXT)
  return new, ready_at(k, new)
end

local op = ARGV[1]

if op == 'acq' then
  -- ARGV[8] tokens, ARGV[9] "1" to include the token bucket, ARGV[10] "1" for a dry run.
  -- Grants are returned as the ticks in use right after them, at `now`.
  local n = tonumber(ARGV[8])
  local with_tokens = ARGV[9] == '1'
  if with_tokens and not T.unlimited and n > T.b then return { -1, 2, T.b } end
  local ntu, twait = tu, nil
  if with_tokens then ntu, twait = admit(T, tu, n) end
  local nru, rwait = admit(R, ru, 1)
  if not ntu then
    -- name the budget with the longer wait, tokens on a tie (as in process)
    if rwait and rwait > twait then return { 0, now, 1, rwait } end
    return { 0, now, 2, twait }
  end
  if not nru then return { 0, now, 1, rwait } end
  if ARGV[10] ~= '1' then
    ru, tu = nru, ntu
    store()
  end
  return { 1, now, nru, ntu, ver }
elseif op == 'claim' then
  -- ARGV[8] tokens, ARGV[9] "1" to include the token bucket
  local n = tonumber(ARGV[8])
  local with_tokens = ARGV[9] == '1'
  if with_tokens and not T.unlimited and n > T.b then return { -1, 2, T.b } end
  local nru, rready = claim(R, ru, 1)
  local ntu, tready = tu, now
  if with_tokens then ntu, tready = claim(T, tu, n) end
  ru, tu = nru, ntu
  store()
  return { 1, now, nru, ntu, ver, math.max(rready, tready) }
elseif op == 'charge' then
  -- ARGV[8] tokens, ARGV[9] requests: taken unconditionally (debt allowed)
  local ntu, ready = claim(T, tu, tonumber(ARGV[8]))
  local nreq = tonumber(ARGV[9]) or 0
  if nreq > 0 then
    local nru, rready = claim(R, ru, nreq)
    ru = nru
    ready = math.max(ready, rready)
  end
  tu = ntu
  store()
  return { 1, now, ready }
elseif op == 'refund' then
  -- ARGV[8] version, ARGV[9] grant time, ARGV[10..11] request grant ticks and units,
  -- ARGV[12..13] token grant ticks and units. The safe rule of gcra::refund:
  -- r = min(n, granted_tat - now), nothing once the limits changed.
  if tonumber(ARGV[8]) ~= ver then return { 0, now } end
  local gdt = math.max(now - tonumber(ARGV[9]), 0)
  local function give(k, used, granted, n)
    if k.unlimited then return used end
    local r = math.min(n * k.P, drain(k, granted, gdt))
    return math.max(used - r, 0)
  end
  ru = give(R, ru, tonumber(ARGV[10]), tonumber(ARGV[11]))
  tu = give(T, tu, tonumber(ARGV[12]), tonumber(ARGV[13]))
  store()
  return { 1, now }
elseif op == 'usage' then
  -- whole units in use, rounded up (never under-reported)
  return { now, cdiv(ru, R.P), rl, rb, cdiv(tu, T.P), tl, tb }
elseif op == 'set' then
  -- ARGV[8..11] new rl, rb, tl, tb. Units in use carry over (gcra::rescale); a fraction of
  -- a unit is carried exactly where the product fits in 2^52, else rounded up.
  local nrl, nrb, ntl, ntb = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]),
    tonumber(ARGV[11])
  if nrl == rl and nrb == rb and ntl == tl and ntb == tb then
    -- The limits already in force (re-learned from a header): keep the version, so permits
    -- out now can still be refunded, exactly as in process.
    return { ver, now }
  end
  local NR, NT = bucket(per, nrl, nrb), bucket(per, ntl, ntb)
  local function rescale(old, new, used)
    if old.unlimited or new.unlimited then return 0 end
    local r = math.fmod(used, old.P)
    local q = (used - r) / old.P
    local frac = 0
    if r > 0 then
      if r * new.P < MAXT then frac = cdiv(r * new.P, old.P) else frac = new.P end
    end
    return math.min(q * new.P + frac, MAXT)
  end
  ru = rescale(R, NR, ru)
  tu = rescale(T, NT, tu)
  R, T, ver = NR, NT, ver + 1
  redis.call('HSET', KEYS[2], 'per', int(per), 'rl', int(nrl), 'rb', int(nrb), 'tl', int(ntl),
    'tb', int(ntb), 'ver', int(ver))
  store()
  return { ver, now }
end
return redis.error_reply('ratekeeper: unknown op ' .. tostring(op))
