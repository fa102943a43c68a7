"""A submit on Redis in one round trip: the depth check, the job's record and its request message.

Step by step (``StoreJobs.create_now``, every other store and broker) a submit is three round
trips: the queue's depth, the record, the message. When the Redis store and the Redis broker
share a database (``nearline serve`` opens both on one URL), :meth:`RedisStore.create_enqueued
<nearline.store.redis_hashes.RedisStore.create_enqueued>` runs them as :data:`SUBMIT`, one Lua
script built from the store's create functions and the broker's ``depth`` and ``send``
functions, so the three stay written once. Being one atomic step it also promises more: the
record and the message are never one without the other (a failed send leaves no Pending
record to clean up, and a keyed job is never seen claimed but unsent), and a repeat of a held
idempotency slot or job id is answered before the depth is checked, as step by step.
"""

from __future__ import annotations

from typing import Any

from nearline.brokers.redis_lua import DEPTH_FUNCTION, PRELUDE, SEND_FUNCTION
from nearline.store.redis_lua import CREATE_FUNCTIONS

#: KEYS: the create functions' (3, or 4 with a slot), then ``send``'s (5), then ``depth``'s.
#: ARGV: how many of KEYS are the create functions', how many of the rest of ARGV are theirs
#: and ``send``'s, the depth limit, then the create functions', ``send``'s and ``depth``'s.
#: Returns {'found', {id, hash}} (a held slot or id: nothing written), {'full', depth}
#: (nothing written) or {'created'}.
SUBMIT = (
    PRELUDE
    + CREATE_FUNCTIONS
    + SEND_FUNCTION
    + DEPTH_FUNCTION
    + """
local nck, nca, nsa = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ck, sk, dk = slice(KEYS, 1, nck), slice(KEYS, nck + 1, 5), slice(KEYS, nck + 6, #KEYS - nck - 5)
local ca = slice(ARGV, 5, nca)
local sa = slice(ARGV, 5 + nca, nsa)
local da = slice(ARGV, 5 + nca + nsa, #ARGV - 4 - nca - nsa)
local found = create_found(ck, ca)
if found then return {'found', found} end
local d = depth(dk, da)
if d >= tonumber(ARGV[4]) then return {'full', d} end
create_insert(ck, ca)
send(sk, sa)
return {'created'}
"""
)


def submit_args(
    create: tuple[list[str], list[Any]],
    send_and_depth: tuple[list[str], list[Any], list[str], list[Any]],
    max_depth: int,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of :data:`SUBMIT` from the create functions' and the broker's
    (``RedisBroker.send_parts``)."""
    create_keys, create_args = create
    send_keys, send_args, depth_keys, depth_args = send_and_depth
    header = [len(create_keys), len(create_args), len(send_args), max_depth]
    return [*create_keys, *send_keys, *depth_keys], [*header, *create_args, *send_args, *depth_args]
