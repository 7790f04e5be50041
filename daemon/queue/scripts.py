"""The Lua scripts behind every move of a job between Redis keys (`daemon.queue.keys`), each one atomic.

Nothing a script moves is ever evaluated; each returns counts or the jobs it took. `daemon.queue.faces` calls them.
"""

from __future__ import annotations

from typing import Any

import redis

NO_LIVE_SHARD = -1
ALL_QUEUES_FULL = -2
WOULD_MISS_DEADLINE = -3
DRAINING = -4
# KEYS: rotation counter, box drain mark, the job's reply key, then (queue, heartbeat, shard drain mark,
# processing, on-time mark) per shard.
# ARGV: job bytes, max depth, policy, milliseconds left before the job's deadline, max batch size, the
# seconds a refusal marker lives on the reply key (0: none), and whether overdue shards are served last (1,
# with `queue.steal`) or like any other (0).
# Returns {chosen slot, or NO_LIVE_SHARD, ALL_QUEUES_FULL, WOULD_MISS_DEADLINE or DRAINING; expected wait in ms}.
# A shard's expected wait is the batches ahead of the job (its own included) times the seconds per batch its
# worker last reported in its heartbeat (`batch_s`; 0 until it has run a batch): a job that would wait past
# its deadline goes to a shard where it would not, or is refused with the shortest wait as the retry hint.
# An overdue shard (it holds jobs and its on-time mark expired: a batch far past its expected time, slow or
# wedged) gets new jobs only when every live shard is overdue (with `queue.steal`).
# A refused job gets a marker ('refused') on its reply key when asked for, so that a reply wait sent in the same
# round trip (`ApiQueues.submit_and_await`) returns at once.
ENQUEUE_SCRIPT = """
local function refuse(code, wait)
  local ttl = tonumber(ARGV[6])
  if ttl > 0 then
    redis.call('LPUSH', KEYS[3], 'refused')
    redis.call('EXPIRE', KEYS[3], ttl)
  end
  return {code, wait}
end
if redis.call('EXISTS', KEYS[2]) == 1 then return refuse(-4, 0) end
local shard_count = (#KEYS - 3) / 5
local max_depth = tonumber(ARGV[2])
local policy = ARGV[3]
local budget_ms = tonumber(ARGV[4])
local max_batch = tonumber(ARGV[5])
-- Rotate over live, admitting shards only, so a dead or drained shard's turn is not handed to its
-- neighbour twice.
local live, late, drained = {}, {}, 0
for slot = 0, shard_count - 1 do
  local base = 4 + slot * 5
  if redis.call('EXISTS', KEYS[base + 1]) == 1 then
    if redis.call('EXISTS', KEYS[base + 2]) == 1 then
      drained = drained + 1
    elseif ARGV[7] == '1' and redis.call('LLEN', KEYS[base + 3]) > 0 and redis.call('EXISTS', KEYS[base + 4]) == 0 then
      late[#late + 1] = slot
    else
      live[#live + 1] = slot
    end
  end
end
if #live == 0 then live = late end
if #live == 0 then
  if drained > 0 then return refuse(-4, 0) end
  return refuse(-1, 0)
end
local function expected_wait_ms(slot, depth)
  local ok, beat = pcall(cjson.decode, redis.call('GET', KEYS[5 + slot * 5]))
  local batch_s = ok and type(beat) == 'table' and tonumber(beat['batch_s']) or 0
  return math.ceil((depth + 1) / max_batch) * batch_s * 1000
end
local start = redis.call('INCR', KEYS[1])
local best_slot, best_depth = -1, max_depth
local soonest_wait = -1
for offset = 0, #live - 1 do
  local slot = live[((start + offset) % #live) + 1]
  local depth = redis.call('LLEN', KEYS[4 + slot * 5])
  if depth < max_depth then
    local wait = expected_wait_ms(slot, depth)
    if soonest_wait < 0 or wait < soonest_wait then soonest_wait = wait end
    if depth < best_depth and wait <= budget_ms then
      best_slot, best_depth = slot, depth
      if policy == 'round_robin' then break end
    end
  end
end
if best_slot < 0 then
  if soonest_wait < 0 then return refuse(-2, 0) end
  return refuse(-3, math.ceil(soonest_wait))
end
redis.call('LPUSH', KEYS[4 + best_slot * 5], ARGV[1])
return {best_slot, 0}
"""

# KEYS: queue, processing, on-time mark, drain mark, then (queue, processing, on-time mark) per other shard.
# ARGV: how many, the overdue rule (floor ms, ms per job held), steal (1 or 0).
# Returns {the shard queue stolen from or '', how many were stolen, then the jobs claimed}. Claims up to that
# many jobs already waiting on our queue, in one trip. A shard starting a batch (holding nothing, not drained)
# fills the room its own queue leaves from the longest queue of an overdue shard: one holding jobs whose
# on-time mark has expired. Not only when idle: a shard kept busy by a trickle of its own jobs would otherwise
# never help, and the jobs behind a wedged batch would wait for the wedge limit. The oldest go first, as their
# owner would have taken them. Whenever we hold jobs, our own on-time mark is set to expire when a batch of
# that many becomes overdue.
CLAIM_SCRIPT = """
local want = tonumber(ARGV[1])
local claimed = {}
local function take(queue)
  while #claimed < want do
    local job = redis.call('LMOVE', queue, KEYS[2], 'RIGHT', 'LEFT')
    if not job then return end
    claimed[#claimed + 1] = job
  end
end
local held_before = redis.call('LLEN', KEYS[2])
take(KEYS[1])
local own = #claimed
local victim = ''
if own < want and held_before == 0 and ARGV[4] == '1' and redis.call('EXISTS', KEYS[4]) == 0 then
  local longest, best = 0, nil
  for i = 5, #KEYS, 3 do
    if redis.call('LLEN', KEYS[i + 1]) > 0 and redis.call('EXISTS', KEYS[i + 2]) == 0 then
      local depth = redis.call('LLEN', KEYS[i])
      if depth > longest then longest, best = depth, i end
    end
  end
  if best then
    take(KEYS[best])
    victim = KEYS[best]
  end
end
local held = held_before + #claimed
if held > 0 then
  local due_ms = math.max(tonumber(ARGV[2]), math.ceil(tonumber(ARGV[3]) * held))
  redis.call('SET', KEYS[3], '1', 'PX', due_ms)
end
table.insert(claimed, 1, #claimed - own)
table.insert(claimed, 1, victim)
return claimed
"""

# KEYS: processing, queue, adopted marker. A restarted worker puts its predecessor's claims back at the end
# it pops from, so they run first, and forgets any adoption mark meant for the predecessor.
REQUEUE_SCRIPT = """
redis.call('DEL', KEYS[3])
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do moved = moved + 1 end
return moved
"""

# KEYS: dead queue, dead processing, live queue, dead shard's adopted marker. ARGV: marker ttl.
# Moves the dead shard's queue, then its claims, to the end the live worker pops from: the claims (oldest)
# run first, then the queue in its order, then the live shard's own jobs. Marks the adoption of claims so
# that a frozen owner which wakes does not answer them a second time.
ADOPT_SCRIPT = """
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[3], 'LEFT', 'RIGHT') do moved = moved + 1 end
local claims = 0
while redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT') do claims = claims + 1 end
if claims > 0 then redis.call('SET', KEYS[4], '1', 'EX', tonumber(ARGV[1])) end
return moved + claims
"""

BATCH_ADOPTED = -1
# KEYS: processing, stats, adopted marker, queue, then one reply key per answer.
# ARGV: answer ttl, batch record ('' for none), stats window, then one encoded reply per reply key.
# Pushes every answer, records the batch and releases the claims, atomically. If a live shard adopted this
# batch meanwhile, it answers nothing (the adopter does) and puts back what was claimed since the adoption.
COMMIT_SCRIPT = """
if redis.call('DEL', KEYS[3]) == 1 then
  while redis.call('LMOVE', KEYS[1], KEYS[4], 'LEFT', 'RIGHT') do end
  return -1
end
for i = 5, #KEYS do
  redis.call('LPUSH', KEYS[i], ARGV[i - 1])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
if ARGV[2] ~= '' then
  redis.call('LPUSH', KEYS[2], ARGV[2])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
end
redis.call('DEL', KEYS[1])
return #KEYS - 4
"""

# KEYS: queue. Takes every waiting job off a queue in one atomic step.
TAKE_ALL_SCRIPT = """
local jobs = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return jobs
"""

# KEYS: one reply key per answer. ARGV: answer ttl, then one encoded reply per key.
PUSH_REPLIES_SCRIPT = """
for i = 1, #KEYS do
  redis.call('LPUSH', KEYS[i], ARGV[i + 1])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
return #KEYS
"""


# KEYS: swap request, swap answer list. ARGV: the request as the shard read it, the answer, answer ttl.
# Answers only a request that still stands: one the tool withdrew (it stopped waiting) is not taken up.
ANSWER_SWAP_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""


class Scripts:
    """Every script registered once per client (redis-py then runs them by SHA, loading on a miss)."""

    def __init__(self, client: redis.Redis) -> None:
        self.enqueue = client.register_script(ENQUEUE_SCRIPT)
        self.claim = client.register_script(CLAIM_SCRIPT)
        self.requeue = client.register_script(REQUEUE_SCRIPT)
        self.adopt = client.register_script(ADOPT_SCRIPT)
        self.commit = client.register_script(COMMIT_SCRIPT)
        self.take_all = client.register_script(TAKE_ALL_SCRIPT)
        self.push_replies = client.register_script(PUSH_REPLIES_SCRIPT)
        self.answer_swap = client.register_script(ANSWER_SWAP_SCRIPT)


def load_enqueue_script(connection: Any) -> None:
    """Load the enqueue script on each new connection, so a pipelined EVALSHA never meets NOSCRIPT."""
    connection.on_connect()
    connection.send_command("SCRIPT", "LOAD", ENQUEUE_SCRIPT)
    connection.read_response()
