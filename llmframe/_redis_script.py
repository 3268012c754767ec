"""The Lua script that keeps one endpoint's RPM/TPM quota in Redis: every step, atomically.

:class:`~llmframe._redis_limiter.RedisLimiter` runs each of its steps as one
call of this script (``EVALSHA``), so Redis serializes them: no lock, no
read-modify-write race between machines. The alternative, the machine
limiter's "lock, load, compute, store" with the state blob in Redis, reuses
the Python schedule but costs a lock and two round trips per step, four steps
per request, and a lock held across the network serializes every machine's
steps behind the slowest; Redis runs scripts one at a time, so with the
script there is no lock to wait for. The arithmetic is that of
:mod:`._bucket` and :mod:`._schedule`, ported line for line: two token
buckets, each kept as the time it is full again (``rq_*`` requests, ``tk_*``
tokens), the FIFO anchor, the 429 pause; and that of :mod:`._quota`: the
lowest limit any live sharer gives, else what the headers taught, and
probing while neither is known. Time is the Redis server's (``TIME``), one
clock for every machine, counted from the state's first second (``epoch``);
``ARGV[2]``, when not empty, stands in for it (the tests' virtual time).

Four keys per endpoint, one hash slot (``{...}``):

- ``KEYS[1]`` the state hash (bucket levels, limits, pause, probe, sequence);
- ``KEYS[2]`` waiting: a sorted set of the reservations placed that have not
  started yet, by start time; a member is ``token|seq|requests|tokens``, what
  its sharer was charged, so a dead sharer's can be given back;
- ``KEYS[3]`` sharers: token -> when its lease ends (heartbeats renew it);
- ``KEYS[4]`` given: token -> the limits that sharer was given.

``ARGV`` is ``op, now, burst_seconds, token, ...``; the reply is
``rpm, tpm, probing, learned, reset_requests, reset_tokens, sharers`` (numbers
as strings: Lua's would be cut to integers; ``sharers`` the leases held), then
what the op returns.
"""

from __future__ import annotations

__all__ = ["SCRIPT", "arg", "num"]


def arg(value: float | None) -> str:
    """A number as the script takes it in ``ARGV`` ("" for none)."""
    return "" if value is None else repr(float(value))


def num(value: bytes) -> float | None:
    """A number of the script's reply (b"" for none)."""
    return float(value) if value else None

SCRIPT = r"""
local STATE, WAITING, SHARERS, GIVEN = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, token = ARGV[1], ARGV[4]
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local EARLY, LEASE, KEEP = 1e-3, tonumber(ARGV[5]), 3600
local OPEN_SHARE = 0.75  -- of the server's window, at the opening

local function fmt(x) if x == nil or x == false then return '' end return string.format('%.17g', x) end
local function opt(s) if s == nil or s == '' then return nil end return tonumber(s) end

local S = {}
local flat = redis.call('HGETALL', STATE)
for i = 1, #flat, 2 do
  local v = flat[i + 1]
  if flat[i] == 'probe' then S.probe = v else S[flat[i]] = tonumber(v) end
end
S.burst = S.burst or tonumber(ARGV[3])
-- Times are kept from the state's first second on: small numbers keep their microseconds.
S.epoch = S.epoch or math.floor(now)
now = now - S.epoch

-- the buckets (_bucket.py) ------------------------------------------------------
local function level(p, t)
  if not S[p .. '_limit'] then return math.huge end
  return S[p .. '_cap'] - S[p .. '_rate'] * math.max(0, S[p .. '_full'] - t)
end
local function configure(p, limit, floor)
  local old = S[p .. '_limit']
  if limit == old then return end
  if not limit then S[p .. '_limit'] = false return end
  local lvl = math.huge
  if old then lvl = level(p, now) end
  local cap = math.max(floor, limit * S.burst / 60)
  S[p .. '_limit'], S[p .. '_rate'], S[p .. '_cap'], S[p .. '_open'] = limit, limit / 60, cap, false
  S[p .. '_full'] = now + (cap - math.min(lvl, cap)) / (limit / 60)
end
local function ready_at(p, t, amount)
  if not S[p .. '_limit'] or amount <= 0 then return t end
  local need = math.min(amount, S[p .. '_cap'])
  return math.max(t, S[p .. '_full'] - (S[p .. '_cap'] - need) / S[p .. '_rate'])
end
local function debit(p, t, amount)
  if S[p .. '_limit'] then S[p .. '_full'] = math.max(S[p .. '_full'], t) + amount / S[p .. '_rate'] end
end
local function credit(p, amount)
  if S[p .. '_limit'] then
    S[p .. '_full'] = math.max(now, math.max(S[p .. '_full'], now) - amount / S[p .. '_rate'])
  end
end
local function lower_to(p, lvl)
  if S[p .. '_limit'] then
    S[p .. '_full'] = math.max(S[p .. '_full'], now + (S[p .. '_cap'] - lvl) / S[p .. '_rate'])
  end
end
local function shift(p, delta) if S[p .. '_limit'] then S[p .. '_full'] = S[p .. '_full'] + delta end end
-- The opening, once per limit: the first headers that say how much the server's window holds
-- (limit, remaining, reset), nothing waiting yet, let the bucket hold OPEN_SHARE of that
-- window and fill it to what the server has left less what is in flight (``*_flight``: placed,
-- not settled); back to its burst once it is down to it; never after a 429 (``no_open``: the
-- first headers may come with a 429 of a window other clients ran dry). The shared burst
-- (0.5 s) alone would leave half of a 1 s window unused at the start: the client is then 0.5 s behind for good
-- (100 requests at 20/s: 4.5 s where a client using the window needs 4.0). A whole window
-- at once earns 429s: requests released together reach the server spread out, and the
-- steady ones after them arrive first (tests/test_limiter_redis_processes.py).
local function resize(p, cap)
  local lvl = level(p, now)
  S[p .. '_cap'] = cap
  S[p .. '_full'] = now + (cap - math.min(lvl, cap)) / S[p .. '_rate']
end
local function open(p, limit, remaining, reset)
  if not (limit and remaining and reset) or S[p .. '_limit'] ~= limit then return end
  local window = math.min(limit, remaining + limit / 60 * reset)
  local cap = OPEN_SHARE * window
  if S[p .. '_open'] or S.no_open or cap <= S[p .. '_cap'] or redis.call('ZCARD', WAITING) > 0 then return end
  resize(p, cap)
  S[p .. '_open'] = 1
  local lvl = math.min(cap, remaining - (S[p .. '_flight'] or 0))
  S[p .. '_full'] = math.min(S[p .. '_full'], now + (cap - lvl) / S[p .. '_rate'])
end
local function close(p, floor)
  if S[p .. '_open'] ~= 1 then return end
  local cap = math.max(floor, S[p .. '_limit'] * S.burst / 60)
  if level(p, now) <= cap then resize(p, cap) S[p .. '_open'] = 2 end
end
local function fly(p, amount) S[p .. '_flight'] = math.max(0, (S[p .. '_flight'] or 0) + amount) end

-- the quota (_quota.py) ---------------------------------------------------------
local function lower(a, b) if a and b then return math.min(a, b) end return a or b end
local function limits() return lower(S.given_rpm, S.learned_rpm), lower(S.given_tpm, S.learned_tpm) end
local function probing() return S.observed ~= 1 and (not S.given_rpm or not S.given_tpm) end
local function merge_given()
  local rpm, tpm
  local rows = redis.call('HVALS', GIVEN)
  for _, row in ipairs(rows) do
    local r, t = string.match(row, '^([^ ]*) ([^ ]*)$')
    rpm, tpm = lower(rpm, opt(r)), lower(tpm, opt(t))
  end
  S.given_rpm, S.given_tpm = rpm or false, tpm or false
end
local function configure_all()
  local rpm, tpm = limits()
  configure('rq', rpm, 1)
  configure('tk', tpm, 0)
end

-- sharers -----------------------------------------------------------------------
local function parse(member)
  local who, req, tok = string.match(member, '^([^|]*)|[^|]*|([^|]*)|([^|]*)$')
  return who, tonumber(req), tonumber(tok)
end
local function bury(dead)
  redis.call('ZREM', SHARERS, dead)
  redis.call('HDEL', GIVEN, dead)
  local prefix = dead .. '|'
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', WAITING, '(' .. fmt(now), '+inf')) do
    if string.sub(member, 1, #prefix) == prefix then
      local _, req, tok = parse(member)
      redis.call('ZREM', WAITING, member)
      credit('rq', req)
      credit('tk', tok)
      fly('rq', -req)
      fly('tk', -tok)
    end
  end
  if S.probe and string.sub(S.probe, 1, #prefix) == prefix then S.probe = false end
  merge_given()
end
local function beat(rpm, tpm)
  redis.call('ZADD', SHARERS, now + LEASE, token)
  local row = (rpm or '') .. ' ' .. (tpm or '')
  if redis.call('HGET', GIVEN, token) ~= row then
    redis.call('HSET', GIVEN, token, row)
    merge_given()
  end
end

for _, dead in ipairs(redis.call('ZRANGEBYSCORE', SHARERS, '-inf', '(' .. fmt(now))) do
  if dead ~= token then bury(dead) end
end
redis.call('ZREMRANGEBYSCORE', WAITING, '-inf', fmt(now))  -- started: in flight, kept
merge_given()
configure_all()

-- the op ------------------------------------------------------------------------
local out = {}
if op == 'beat' then  -- join, heartbeat, set_limits: ARGV[6], ARGV[7] this sharer's given limits
  beat(ARGV[6], ARGV[7])
  configure_all()
elseif op == 'leave' then
  bury(token)
  configure_all()
elseif op == 'reserve' then  -- ARGV[6] tokens, ARGV[7], ARGV[8] given limits
  beat(ARGV[7], ARGV[8])
  configure_all()
  local tokens = tonumber(ARGV[6])
  local held = false
  if probing() then
    held = S.probe and true or false
  end
  if held then
    out = {'queued'}
  else
    local earliest = now
    if S.paused_until then earliest = math.max(earliest, S.paused_until) end
    local last = redis.call('ZRANGE', WAITING, -1, -1, 'WITHSCORES')
    if last[2] then earliest = math.max(earliest, tonumber(last[2])) end  -- the FIFO anchor
    local start = math.max(ready_at('rq', earliest, 1), ready_at('tk', earliest, tokens))
    local req, tok = 0, 0
    if S.rq_limit then req = 1 end
    if S.tk_limit then tok = tokens end
    debit('rq', start, 1)
    debit('tk', start, tokens)
    fly('rq', req)
    fly('tk', tok)
    close('rq', 1)
    close('tk', 0)
    S.seq = (S.seq or 0) + 1
    local member = token .. '|' .. S.seq .. '|' .. req .. '|' .. tok
    if start - now > EARLY then redis.call('ZADD', WAITING, start, member) end
    if probing() then S.probe = member end
    out = {member, fmt(start - now), fmt(start)}
  end
elseif op == 'check' then  -- ARGV[6] member, ARGV[7] its start: how long it still waits
  local member, start = ARGV[6], tonumber(ARGV[7])
  local score = redis.call('ZSCORE', WAITING, member)
  if not score and start - now > EARLY then
    out = {'lost'}  -- given back as a dead sharer's: place it again
  else
    if score then start = tonumber(score) end
    if S.paused_until then start = math.max(start, S.paused_until) end
    if start - now <= EARLY then redis.call('ZREM', WAITING, member) end
    out = {fmt(start - now), fmt(start)}
  end
elseif op == 'settle' or op == 'cancel' then  -- ARGV[6] member, ARGV[7] start, ARGV[8] used
  local member, start = ARGV[6], tonumber(ARGV[7])
  local _, req, tok = parse(member)
  local removed = redis.call('ZREM', WAITING, member)
  local reclaimed = removed == 0 and start - now > EARLY
  if op == 'settle' then
    if tok > 0 then credit('tk', tok - math.max(tonumber(ARGV[8]), 0)) end
  elseif not reclaimed then
    credit('rq', req)
    credit('tk', tok)
  end
  if not reclaimed then
    fly('rq', -req)
    fly('tk', -tok)
  end
  if S.probe == member then S.probe = false end
elseif op == 'pause' then  -- ARGV[6] seconds: Schedule.pause
  local until_ = S.paused_until or now
  local resume = math.max(until_, now + tonumber(ARGV[6]))
  local delta = math.max(0, resume - math.max(now, until_))
  lower_to('rq', 0)
  lower_to('tk', 0)
  S.no_open = 1  -- after a 429 no bucket opens, not even on its first headers (Bucket.open)
  local waiting = redis.call('ZRANGEBYSCORE', WAITING, '(' .. fmt(now), '+inf', 'WITHSCORES')
  if delta > 0 and #waiting > 0 then
    shift('rq', delta)
    shift('tk', delta)
    for i = 1, #waiting, 2 do redis.call('ZADD', WAITING, tonumber(waiting[i + 1]) + delta, waiting[i]) end
  end
  S.paused_until = resume
  out = {fmt(delta)}
elseif op == 'observe' then  -- ARGV[6..11]: limit, remaining, reset of requests, then of tokens
  S.observed = 1
  if S.remembered == 1 then S.remembered, S.learned_rpm, S.learned_tpm = 0, false, false end
  local rq_limit, tk_limit = opt(ARGV[6]), opt(ARGV[9])
  if rq_limit then S.learned, S.learned_rpm = 1, rq_limit end
  if tk_limit then S.learned, S.learned_tpm = 1, tk_limit end
  S.reset_rq = opt(ARGV[8]) or S.reset_rq
  S.reset_tk = opt(ARGV[11]) or S.reset_tk
  configure_all()
  if opt(ARGV[7]) then lower_to('rq', opt(ARGV[7])) end
  if opt(ARGV[10]) then lower_to('tk', opt(ARGV[10])) end
  open('rq', rq_limit, opt(ARGV[7]), opt(ARGV[8]))
  open('tk', tk_limit, opt(ARGV[10]), opt(ARGV[11]))
  out = {fmt(S.learned_rpm), fmt(S.learned_tpm)}
elseif op == 'remember' then  -- ARGV[6], ARGV[7]: limits an earlier process learned
  if S.observed ~= 1 then
    S.observed, S.remembered = 1, 1
    S.learned_rpm, S.learned_tpm = opt(ARGV[6]) or false, opt(ARGV[7]) or false
    configure_all()
  end
else
  return redis.error_reply('unknown op ' .. op)
end

-- store -------------------------------------------------------------------------
local put, gone = {}, {}
for k, v in pairs(S) do
  if v == false then table.insert(gone, k)
  elseif k == 'probe' then table.insert(put, k) table.insert(put, v)
  else table.insert(put, k) table.insert(put, fmt(v)) end
end
if #gone > 0 then redis.call('HDEL', STATE, unpack(gone)) end
if #put > 0 then redis.call('HSET', STATE, unpack(put)) end
if op == 'beat' then  -- an endpoint nobody uses for an hour is forgotten
  for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, KEEP) end
end

local rpm, tpm = limits()
local status = {fmt(rpm), fmt(tpm), probing() and '1' or '0', S.learned == 1 and '1' or '0',
                fmt(S.reset_rq), fmt(S.reset_tk), tostring(redis.call('ZCARD', SHARERS))}
for _, v in ipairs(out) do table.insert(status, v) end
return status
"""
