-- Every statement outbox_worker runs, each under a "-- name: description"
-- header. Parameters are psycopg placeholders; the worker's hot-path
-- queries take arrays so that one round trip serves a whole batch.

-- emit: queue one event in the caller's transaction (the first event's id again for a repeated idempotency key)
select outbox.emit(%(owner_id)s, %(event_type)s, cast(%(data)s as jsonb),
                   ordering_key => %(ordering_key)s, idempotency_key => %(idempotency_key)s,
                   traceparent => %(traceparent)s) as id;

-- add_event_type: add (or re-describe) an event type in the catalogue
select outbox.add_event_type(%(name)s, %(description)s);

-- list_event_types: the catalogue
select name, description, created_at from outbox.event_types order by name;

-- create_webhook: register a webhook; the only time its secret is returned
select id, secret
  from outbox.create_webhook(%(owner_id)s, %(url)s, %(events)s, %(sealed_secret)s,
                             rate_limit => cast(%(rate_limit)s as numeric), headers => cast(%(headers)s as jsonb));

-- update_webhook: change url, events, enabled, rate limit or headers (NULL = unchanged)
select *
  from outbox.update_webhook(%(owner_id)s, %(webhook_id)s, %(url)s, %(events)s, %(enabled)s,
                             rate_limit => cast(%(rate_limit)s as numeric), headers => cast(%(headers)s as jsonb));

-- delete_webhook: remove a webhook with its deliveries and attempts
select outbox.delete_webhook(%(owner_id)s, %(webhook_id)s);

-- list_webhooks: an owner's webhooks, optionally only those an event type reaches
select * from outbox.list_webhooks(%(owner_id)s, %(event_type)s);

-- list_all_webhooks: every owner's webhooks (operators), optionally only those an event type reaches
select w.*
  from outbox.webhook_info w
 where cast(%(event_type)s as text) is null or w.events && outbox.event_patterns(%(event_type)s)
 order by w.owner_id, w.created_at, w.id;

-- get_webhook: one webhook of an owner
select * from outbox.get_webhook(%(owner_id)s, %(webhook_id)s);

-- rotate_webhook_secret: new secret; the old one keeps signing for the overlap
select id, secret from outbox.rotate_webhook_secret(%(owner_id)s, %(webhook_id)s, %(sealed_secret)s);

-- send_test_event: queue one signed webhook.test event for one webhook alone
select outbox.send_test_event(%(owner_id)s, %(webhook_id)s) as id;

-- redeliver: start a new round of attempts for one delivery of an owner's
select outbox.redeliver(%(delivery_id)s, %(owner_id)s) as id;

-- redeliver_any_owner: operators: start a new round of attempts for one delivery of any owner's
select outbox.redeliver_any_owner(%(delivery_id)s) as id;

-- expire_previous_secret: end a secret rotation's overlap now
select outbox.expire_previous_secret(%(owner_id)s, %(webhook_id)s);

-- replay_failed: re-queue a webhook's deliveries that failed since a time
select outbox.replay_failed(%(owner_id)s, %(webhook_id)s, %(since)s) as count;

-- ============================================================ worker hot path

-- dispatch: claim a batch of undispatched events, mark them dispatched and fan each out into one delivery per matching enabled webhook (up to lease_limit leased to this worker, at most per_webhook per webhook and per_owner per owner, none for its busy webhooks and owners); one row per delivery, one per event without any
with claimed as materialized (
    select e.id
      from outbox.events e
     where e.dispatched_at is null
     order by e.id
     limit %(limit)s
       for update skip locked
), marked as (
    -- "= any(array(...))", not a join: an index lookup per claimed id
    -- whatever the statistics say (a join was planned as a hash of the whole
    -- table: 3 ms per batch at 20,000 rows). The same below.
    update outbox.events e
       set dispatched_at = now()
     where e.id = any (array(select id from claimed))
    -- Patterns once per event here, not once per (event, webhook) pair in the join.
    returning e.id, e.owner_id, e.event_type, e.data, e.created_at, e.ordering_key,
              -- Only for a worker that traces: one that does not reads nothing for it.
              case when %(traced)s then e.traceparent end as traceparent,
              outbox.event_patterns(e.event_type) as patterns
), hooks as materialized (
    -- The lock a foreign key's check would take per delivery (there is none:
    -- docs/dba.md), once per webhook and batch: a webhook deleted meanwhile
    -- is skipped, and a delete that comes later waits for these deliveries
    -- to commit, so its cascade removes them too.
    select w.id, w.owner_id, w.events,
           w.rate_limit is not null or coalesce(w.rate_next_at > now(), false) as paced
      from outbox.webhooks w
     where w.owner_id = any (array(select distinct m.owner_id from marked m))
       and w.enabled
       for key share
), matched as (
    -- A webhook (and an owner) gets no more leases than it may have
    -- requests running: the rest wait unleased for whichever worker has
    -- room, instead of holding this worker's send slots behind a slow
    -- receiver (or one tenant's five). A keyed delivery is never leased
    -- here: the claim sends it once it heads its key (earlier ones of the
    -- key may still be pending); nor is a paced webhook's (rate limit, 429).
    select m.id as event_id, w.id as webhook_id, m.ordering_key,
           w.id <> all (cast(%(busy_webhooks)s as uuid[]))
           and w.owner_id <> all (cast(%(busy_owners)s as text[]))
           and m.ordering_key is null and not w.paced
           and row_number() over (partition by w.id order by m.id) <= %(per_webhook)s
           and row_number() over (partition by w.owner_id order by m.id, w.id) <= %(per_owner)s as eligible
      from marked m
      join hooks w
        on w.owner_id = m.owner_id and w.events && m.patterns
), targets as (
    select t.event_id, t.webhook_id, t.ordering_key,
           t.eligible and count(*) filter (where t.eligible) over (order by t.event_id, t.webhook_id)
                          <= %(lease_limit)s as leased,
           row_number() over (partition by t.webhook_id, t.ordering_key order by t.event_id) as nth_in_key
      from matched t
), inserted as (
    insert into outbox.deliveries as d (event_id, webhook_id, next_attempt_at, leased_until, leased_by, ordering_key)
    select t.event_id, t.webhook_id,
           case when t.leased then now() + make_interval(secs => %(lease_seconds)s)
                -- A keyed delivery behind an earlier one of its key waits
                -- parked, off the claim's scan, until that one finishes
                -- (complete_deliveries, or unpark_heads) and makes it due.
                when t.ordering_key is not null
                     and (t.nth_in_key > 1
                          or exists (select from outbox.deliveries p
                                      where p.webhook_id = t.webhook_id and p.ordering_key = t.ordering_key
                                        and p.status = 'pending' and p.event_id < t.event_id))
                then 'infinity'
                else now() end,
           case when t.leased then now() + make_interval(secs => %(lease_seconds)s) end,
           case when t.leased then %(worker_id)s end,
           t.ordering_key
      from targets t
    on conflict on constraint deliveries_webhook_event_key do nothing
    returning d.id, d.event_id, d.webhook_id, d.attempts, d.leased_by is not null as leased
)
-- The event's payload rides on its first row only: the worker parses it once.
select m.id as event_id, m.event_type, m.created_at,
       row_number() over (partition by m.id order by i.id) = 1 as first,
       case when row_number() over (partition by m.id order by i.id) = 1 then m.data end as data,
       i.id, i.webhook_id, i.attempts, coalesce(i.leased, false) as leased, w.url, w.secret,
       case when w.previous_secret_expires_at > now() then w.previous_secret end as previous_secret,
       w.owner_id,
       -- As text: the worker parses each webhook's headers once, not per row.
       w.headers::text as headers,
       m.traceparent
  from marked m
  left join inserted i on i.event_id = m.id
  left join outbox.webhooks w on w.id = i.webhook_id
 order by m.id, i.id;

-- store_bodies: fix dispatched events' body bytes (two arrays, the bytes in binary), unless a claimer fixed them first
with b as (
    -- bytea[] sent in binary (%%b): a JSON array of base64 text cost the
    -- worker ~7 us and PostgreSQL ~24 us per 4 KB body to encode and lex.
    select * from unnest(cast(%(body_event_ids)s as bigint[]), cast(%(bodies)b as bytea[])) as b(id, body)
)
update outbox.events e
   set body = b.body
  from b
 where e.id = any (array(select id from b))
   and e.id = b.id
   and e.body is null;

-- claim_deliveries: lease due deliveries (skipping saturated webhooks and owners, at most per_webhook per webhook and per_owner per owner) with everything sending needs
with due as materialized (
    select d.id, d.webhook_id, d.next_attempt_at
      from outbox.deliveries d
     where d.status = 'pending'
       and d.next_attempt_at <= now()
       and d.webhook_id <> all (cast(%(busy_webhooks)s as uuid[]))
       -- A saturated owner's webhooks: one index lookup per such owner (none
       -- at all while no owner is saturated), once per statement.
       and d.webhook_id <> all (array(select w.id from outbox.webhooks w
                                        where w.owner_id = any (cast(%(busy_owners)s as text[]))))
       -- A keyed delivery goes only at the head of its (webhook, key): no
       -- earlier one pending (in flight or waiting for a retry), and no
       -- earlier event of the key still to fan out (another worker's
       -- dispatch may not have committed it yet).
       and (d.ordering_key is null
            or (not exists (select from outbox.deliveries p
                             where p.webhook_id = d.webhook_id and p.ordering_key = d.ordering_key
                               and p.status = 'pending' and p.event_id < d.event_id)
                and not exists (select from outbox.events e
                                  join outbox.webhooks w on w.id = d.webhook_id
                                 where e.owner_id = w.owner_id and e.ordering_key = d.ordering_key
                                   and e.dispatched_at is null and e.id < d.event_id)))
     order by d.next_attempt_at
     -- No more rows than "picked" can keep: with fewer webhooks than
     -- limit / per_webhook (say one), locking the full limit would lock rows
     -- only to drop them, and hide them from other workers meanwhile. The
     -- count stops at the number of webhooks that would lift the cap.
     limit least(cast(%(limit)s as integer), cast(%(per_webhook)s as integer) * (
               select count(*)
                 from (select
                         from outbox.webhooks w
                        where w.id <> all (cast(%(busy_webhooks)s as uuid[]))
                        limit ceil(cast(%(limit)s as numeric) / cast(%(per_webhook)s as integer))) enough))
       for update skip locked
), owners as (
    -- The owners of the locked rows' webhooks: one lookup per webhook, not per row.
    select w.id, w.owner_id
      from outbox.webhooks w
     where w.id = any (array(select distinct webhook_id from due))
), picked as (
    -- Window functions cannot sit beside FOR UPDATE: rank what was locked.
    -- The rows not picked stay due; their locks end with the statement.
    select r.id, r.webhook_id, r.nth
      from (select d.id, d.webhook_id,
                   row_number() over (partition by d.webhook_id order by d.next_attempt_at, d.id) as nth,
                   row_number() over (partition by o.owner_id order by d.next_attempt_at, d.id) as nth_owner
              from due d
              join owners o on o.id = d.webhook_id) r
     where r.nth <= %(per_webhook)s
       and r.nth_owner <= %(per_owner)s
), paced as (
    -- Webhooks with a rate limit, or paused by a 429: their sends are spaced
    -- from rate_next_at, shared by every worker. Read here without a lock
    -- to know which they are; the pacing itself uses the locked row below.
    select w.id
      from outbox.webhooks w
     where w.id = any (array(select distinct webhook_id from picked))
       and (w.rate_limit is not null or w.rate_next_at > now())
), pacer as (
    -- SKIP LOCKED: a webhook row another claim (or an update_webhook) holds
    -- gets nothing from this claim; the latest version's rate_next_at.
    select w.id, w.rate_limit, greatest(now(), coalesce(w.rate_next_at, now())) as first_slot
      from outbox.webhooks w
     where w.id = any (array(select id from paced))
       for no key update skip locked
), granted as (
    -- The k-th delivery of a paced webhook goes k-1 intervals after its
    -- first slot, if that is within the horizon; later ones wait for a
    -- later claim.
    select p.id, p.webhook_id,
           cast(case when r.id is null then 0
                     else extract(epoch from r.first_slot - now())
                          + coalesce((p.nth - 1) / r.rate_limit, 0) end as float8) as delay
      from picked p
      left join pacer r on r.id = p.webhook_id
     where p.webhook_id <> all (array(select id from paced))
        or (r.id is not null
            and extract(epoch from r.first_slot - now()) + coalesce((p.nth - 1) / r.rate_limit, 0)
                < %(pace_horizon)s)
), spaced as (
    update outbox.webhooks w
       set rate_next_at = r.first_slot + make_interval(secs => coalesce(g.n / r.rate_limit, 0))
      from pacer r
      join (select webhook_id, count(*) as n from granted group by webhook_id) g on g.webhook_id = r.id
     where w.id = r.id
       and r.rate_limit is not null
), leased as (
    update outbox.deliveries d
       set next_attempt_at = now() + make_interval(secs => %(lease_seconds)s),
           leased_until = now() + make_interval(secs => %(lease_seconds)s),
           leased_by = %(worker_id)s
      from granted g
     where d.id = any (array(select id from granted))
       and d.id = g.id
    returning d.id, d.event_id, d.webhook_id, d.attempts, d.ordering_key is not null as ordered, g.delay
)
select l.id, l.event_id, l.webhook_id, l.attempts, l.ordered, l.delay, w.url, w.secret, w.enabled, e.body,
       e.event_type, e.data, e.created_at,
       case when w.previous_secret_expires_at > now() then w.previous_secret end as previous_secret,
       w.owner_id,
       w.headers::text as headers,  -- text, as in dispatch
       e.traceparent
  from leased l
  join outbox.webhooks w on w.id = l.webhook_id
  -- One primary-key lookup per leased row, whatever the statistics say: a
  -- join was once planned as a hash of the whole table, and "= any(array)"
  -- beside it as a probe of the whole array per row (209 ms for 200 rows).
  -- LIMIT 1 keeps the subquery from being flattened back into a join.
  cross join lateral (
      select e.body,
             -- Without bytes (a worker died between dispatch and store_bodies) the
             -- claimer encodes them from the event: the encoding is deterministic.
             case when e.body is null then e.event_type end as event_type,
             case when e.body is null then e.data end as data,
             e.created_at,
             case when %(traced)s then e.traceparent end as traceparent  -- as in dispatch
        from outbox.events e
       where e.id = l.event_id
       limit 1) e;

-- complete_deliveries: log a batch of attempts, move each delivery on (delivered, retry later, failed) and fix the body bytes of events dispatched with all their deliveries leased
with outcome as (
    -- The batch arrives as one JSON array of objects: encoding it is one C
    -- call in the worker, where ten array parameters cost ~14 us per row.
    select *
      from json_to_recordset(cast(%(outcomes)s as json))
        as o(id bigint, attempt int, status outbox.delivery_status, retry_in float8, attempted_at timestamptz,
             duration_ms float8, status_code int, error_class text, error text, response_body text)
), bodies as (
    select * from unnest(cast(%(body_event_ids)s as bigint[]), cast(%(bodies)b as bytea[])) as b(id, body)
), stored as (
    -- The bytes of an event whose deliveries were all leased at dispatch
    -- ride with an outcome instead of a statement of their own before the
    -- first POST. Until then the body is NULL, and a worker that claims one
    -- of its deliveries (its dispatcher died) encodes the same bytes.
    update outbox.events e
       set body = b.body
      from bodies b
     where e.id = any (array(select id from bodies))
       and e.id = b.id
       and e.body is null
), moved as (
    -- A delivery already delivered (by a duplicate) stays delivered; a
    -- failure only moves a delivery this worker still holds.
    update outbox.deliveries d
       set status = o.status,
           -- A delivery held by the URL policy ("policy") was not sent: its
           -- attempts stay, and no attempt is logged for it.
           attempts = case when o.error_class = 'policy' then d.attempts else o.attempt end,
           next_attempt_at = case when o.status = 'pending' then now() + make_interval(secs => o.retry_in)
                                  else d.next_attempt_at end,
           completed_at = case when o.status = 'pending' then null else now() end,
           leased_until = null,
           leased_by = null,
           last_status_code = o.status_code,
           last_error = o.error
      from outcome o
     where d.id = any (array(select id from outcome))
       and d.id = o.id
       -- coalesce (status is never NULL) so that this cannot match the due
       -- index's predicate: with the pending share analyzed small (a table
       -- of mostly delivered rows, then a burst) the planner scanned every
       -- pending row and filtered it by id, O(backlog) per batch.
       and coalesce(d.status = 'pending', false)
       and (o.status = 'delivered' or d.leased_by = %(worker_id)s)
    returning d.id, d.webhook_id, d.status, d.event_id, d.ordering_key, d.last_status_code
), unparked as (
    -- A keyed delivery that finished makes the next of its (webhook, key)
    -- due (it waited parked; the claim still checks that it heads its key).
    update outbox.deliveries n
       set next_attempt_at = now()
     where n.id = any (array(
               select (select p.id
                         from outbox.deliveries p
                        where p.webhook_id = m.webhook_id and p.ordering_key = m.ordering_key
                          and p.status = 'pending' and p.event_id > m.event_id
                        order by p.event_id
                        limit 1)
                 from moved m
                where m.ordering_key is not null and m.status <> 'pending'))
       and n.next_attempt_at = 'infinity'
), logged as (
    -- An attempt is logged for a delivery that exists and stays until this
    -- commits (no foreign key checks it, docs/dba.md): the moved ones are
    -- locked by their update, the others (already delivered by a duplicate,
    -- or no longer this worker's) here, FOR KEY SHARE in one scan. A
    -- delivery deleted meanwhile is skipped; a delete that comes later
    -- waits, and its cascade removes this attempt too.
    insert into outbox.delivery_attempts
        (delivery_id, attempt, attempted_at, duration_ms, status_code, error_class, error, response_body, worker_id)
    select o.id, o.attempt, o.attempted_at, o.duration_ms, o.status_code, o.error_class, o.error,
           o.response_body, %(worker_id)s
      from outcome o
     where o.error_class is distinct from 'policy'
       and (o.id in (select m.id from moved m)
        or o.id in (select d.id
                      from outbox.deliveries d
                     where d.id = any (array(select id from outcome except select id from moved))
                       for key share))
), health as (
    -- A 429 is throttling, not a failure: it never counts toward auto-disable.
    select m.webhook_id, bool_or(m.status = 'delivered') as any_success
      from moved m
     where m.last_status_code is distinct from 429
     group by m.webhook_id
), stale as (
    -- Written only when the health state changes (or once a minute on
    -- success), so hot webhooks' rows are not rewritten every batch. SKIP
    -- LOCKED: a webhook row that another transaction is writing
    -- (update_webhook, a DBA's open UPDATE) gets its health from a later
    -- batch, instead of every outcome of this one waiting behind it (and
    -- update_webhook, which locks the webhook and then its deliveries,
    -- deadlocking with this statement, which holds deliveries first).
    select w.id, h.any_success
      from health h
      join outbox.webhooks w on w.id = h.webhook_id
     where case when h.any_success
                then w.failing_since is not null or w.last_success_at is null
                     or w.last_success_at < now() - interval '1 minute'
                else w.failing_since is null end
       for no key update of w skip locked
), throttled as (
    -- A 429 pauses its webhook for every worker: no claim sends to it before
    -- its Retry-After (the retry itself is scheduled by it already).
    -- SKIP LOCKED, as for the health update below (and never the same
    -- row as it: one statement cannot update a row twice).
    update outbox.webhooks w
       set rate_next_at = greatest(coalesce(w.rate_next_at, now()), now() + make_interval(secs => t.pause))
      from (select m.webhook_id, max(o.retry_in) as pause
              from moved m join outcome o on o.id = m.id
             where m.last_status_code = 429 and m.status = 'pending'
             group by m.webhook_id) t
     where w.id = t.webhook_id
       and w.id in (select l.id
                      from outbox.webhooks l
                     where l.id = any (array(select webhook_id from moved where last_status_code = 429))
                       and l.id not in (select id from stale)
                       for no key update skip locked)
), touched as (
    update outbox.webhooks w
       set last_success_at = case when s.any_success then now() else w.last_success_at end,
           failing_since = case when s.any_success then null else coalesce(w.failing_since, now()) end
      from stale s
     where w.id = s.id
)
select count(*) as moved from moved;

-- unpark_heads: make due every parked keyed delivery that heads its (webhook, key) (a fan-out that parked one behind a delivery finishing at the same moment)
update outbox.deliveries d
   set next_attempt_at = now()
  from (select distinct on (p.webhook_id, p.ordering_key) p.id, p.next_attempt_at
          from outbox.deliveries p
         where p.status = 'pending' and p.ordering_key is not null
         order by p.webhook_id, p.ordering_key, p.event_id) head
 where d.id = head.id
   and head.next_attempt_at = 'infinity'
   and not exists (select from outbox.events e
                     join outbox.webhooks w on w.id = d.webhook_id
                    where e.owner_id = w.owner_id and e.ordering_key = d.ordering_key
                      and e.dispatched_at is null and e.id < d.event_id)
returning d.id;

-- release_leases: hand deliveries this worker will not send back to the queue at once
update outbox.deliveries
   set next_attempt_at = now(), leased_until = null, leased_by = null
 where id = any (cast(%(ids)s as bigint[]))
   and leased_by = %(worker_id)s
   and coalesce(status = 'pending', false);  -- by id, never the due index (see complete_deliveries)

-- failing_webhooks: enabled webhooks that have failed without a success for too long
select id
  from outbox.webhooks
 where enabled
   and failing_since < now() - make_interval(secs => %(disable_after)s);

-- disable_webhooks: disable webhooks, fail their queued deliveries, and tell their owners with a webhook.disabled event
with disabled as (
    update outbox.webhooks w
       set enabled = false, disabled_reason = %(reason)s, updated_at = now()
     where w.id = any (cast(%(ids)s as uuid[])) and w.enabled
    returning w.id, w.owner_id, w.url, w.failing_since
), failed as (
    update outbox.deliveries d
       set status = 'failed', completed_at = now(), last_error = 'webhook disabled: ' || %(reason)s,
           leased_until = null, leased_by = null
      from disabled
     where d.webhook_id = disabled.id and d.status = 'pending'
), notified as (
    insert into outbox.events (owner_id, event_type, data)
    select owner_id, 'webhook.disabled',
           jsonb_build_object('webhook_id', id, 'url', url, 'reason', %(reason)s, 'failing_since', failing_since)
      from disabled
)
select id from disabled;

-- queue_stats: queue health for `outbox-worker stats`
select owner_id, webhook_id, url, enabled, pending, retrying, in_flight, failed,
       extract(epoch from oldest_pending_age) as oldest_pending_seconds
  from outbox.queue_stats
 order by owner_id, url;

-- event_backlog: events not yet fanned out
select undispatched, extract(epoch from oldest_undispatched_age) as oldest_undispatched_seconds
  from outbox.event_backlog;

-- database_stats: one database's queue health in one row (`outbox-worker stats` over several databases)
select (select count(*) from outbox.webhooks)::bigint as webhooks,
       coalesce(sum(q.pending), 0)::bigint as pending,
       coalesce(sum(q.retrying), 0)::bigint as retrying,
       coalesce(sum(q.in_flight), 0)::bigint as in_flight,
       coalesce(sum(q.failed), 0)::bigint as failed,
       extract(epoch from max(q.oldest_pending_age)) as oldest_pending_seconds,
       (select undispatched from outbox.event_backlog)::bigint as undispatched
  from outbox.queue_stats q;

-- purge: one batch of retention: of the next `limit` events after after_id (id order: oldest first), delete those created before older_than (NULL: none) whose deliveries are all finished, their deliveries and attempts going with them (the delete cascade); and up to `limit` idempotency keys past outbox.config.idempotency_window. How many of each, the oldest event deleted, the last id looked at, and whether the look reached the window (the pass is over)
with scanned as materialized (
    -- A bounded look along the primary key, wherever the table's end is:
    -- a batch costs the same in a table of a thousand rows or a billion.
    select e.id, e.created_at, e.dispatched_at
      from outbox.events e
     where cast(%(older_than)s as timestamptz) is not null
       and e.id > %(after_id)s
     order by e.id
     limit %(limit)s
), doomed as (
    -- Skips an event another transaction holds (a body being stored); the
    -- next pass takes it. Pending deliveries (leased ones included) keep
    -- their event, however old.
    select e.id, e.created_at
      from outbox.events e
     where e.id = any (array(select s.id from scanned s
                              where s.dispatched_at is not null and s.created_at < %(older_than)s))
       and e.dispatched_at is not null
       and e.created_at < %(older_than)s
       -- coalesce: never the due index's predicate. Analyzed while all
       -- was delivered, the planner took that index for each event and read
       -- every pending row of a backlog: 7 s a batch beside a drain.
       and not exists (select from outbox.deliveries d
                        where d.event_id = e.id and coalesce(d.status = 'pending', false))
       for update skip locked
), purged as (
    delete from outbox.events e
     where e.id = any (array(select id from doomed))
    returning e.id, e.created_at
), expired as (
    -- Skips a key an emit is deciding on right now (it holds the row).
    select k.owner_id, k.key
      from outbox.idempotency_keys k
     where k.created_at < now() - (select c.idempotency_window from outbox.config c)
     order by k.created_at
     limit %(limit)s
       for update skip locked
), forgotten as (
    delete from outbox.idempotency_keys k
     using expired x
     where k.owner_id = x.owner_id and k.key = x.key
    returning 1
)
select (select count(*) from purged) as events,
       (select count(*) from forgotten) as keys,
       (select min(created_at) from purged) as oldest,
       coalesce((select max(id) from scanned), %(after_id)s) as last_id,
       (select count(*) from scanned) < %(limit)s
           or coalesce((select bool_or(created_at >= %(older_than)s) from scanned), false) as done;

-- purge_removed: rows deleted from deliveries and attempts as this backend counts them, with the database clock: read before and after purge in one transaction, the difference is what purge's cascade removed (the counts may include earlier transactions not yet reported to the statistics)
select clock_timestamp() as at,
       coalesce(sum(n_tup_del) filter (where relname = 'deliveries'), 0)::bigint as deliveries,
       coalesce(sum(n_tup_del) filter (where relname = 'delivery_attempts'), 0)::bigint as attempts
  from pg_stat_xact_user_tables
 where schemaname = 'outbox';

-- lease_claim: take a maintenance lease that has lapsed (released or expired); its claim time, or no row
update outbox.maintenance_leases l
   set holder = %(holder)s, acquired_at = clock_timestamp(),
       expires_at = now() + make_interval(secs => %(lease_seconds)s)
 where l.name = any (array(
           -- SKIP LOCKED: a row locked is a holder's batch running (its
           -- lease renewed): give up at once rather than wait for it.
           select f.name
             from outbox.maintenance_leases f
            where f.name = %(name)s
              and (f.expires_at is null or f.expires_at < now())
              for update skip locked))
returning l.acquired_at;

-- lease_renew: extend this holder's lease before a batch (the row stays locked until the batch commits); no row: another worker holds it now
update outbox.maintenance_leases
   set expires_at = now() + make_interval(secs => %(lease_seconds)s)
 where name = %(name)s
   and holder = %(holder)s
returning clock_timestamp() as at;

-- purge_settings: for this batch's transaction: end the session if the worker stalls in it (a frozen process must not hold its locks, which a migration would wait for), and unless flush, commit without waiting for the WAL flush (a crash can only undo deletes the next pass redoes)
select set_config('idle_in_transaction_session_timeout', '10s', true),
       set_config('synchronous_commit',
                  case when %(flush)s then current_setting('synchronous_commit') else 'off' end, true);

-- lease_release: end a pass: record it in outbox.maintenance_runs (trimmed to a week), and let the lease go if still this holder's
with released as (
    update outbox.maintenance_leases
       set expires_at = now()
     where name = %(name)s
       and holder = %(holder)s
    returning name
), recorded as (
    insert into outbox.maintenance_runs
        (name, holder, started_at, finished_at, batches, events, deliveries, attempts, idempotency_keys)
    values (%(name)s, %(holder)s, %(started_at)s, %(finished_at)s, %(batches)s, %(events)s, %(deliveries)s,
            %(attempts)s, %(keys)s)
), trimmed as (
    delete from outbox.maintenance_runs
     where finished_at < now() - interval '7 days'
)
select count(*) as released from released;

-- browse_deliveries: a page of deliveries for `outbox-worker deliveries list`, newest first; each filter NULL = any
select d.id, w.owner_id as owner, d.webhook_id as webhook, d.event_id as event, e.event_type,
       d.status::text as status, d.attempts, d.created_at, d.next_attempt_at, d.completed_at,
       d.last_status_code, d.last_error
  from outbox.deliveries d
  join outbox.webhooks w on w.id = d.webhook_id
  join outbox.events e on e.id = d.event_id
 where (cast(%(owner_id)s as text) is null or w.owner_id = %(owner_id)s)
   and (cast(%(webhook_id)s as uuid) is null or d.webhook_id = %(webhook_id)s)
   and (cast(%(status)s as outbox.delivery_status) is null or d.status = %(status)s)
   and (cast(%(since)s as timestamptz) is null or d.created_at >= %(since)s)
   and (cast(%(before_id)s as bigint) is null or d.id < %(before_id)s)
 order by d.id desc
 limit %(limit)s;

-- browse_events: a page of events for `outbox-worker events list`, newest first, with their deliveries by state; each filter NULL = any
select e.id, e.owner_id as owner, e.event_type, e.created_at, e.dispatched_at,
       c.deliveries, c.delivered, c.failed
  from (select *
          from outbox.events e
         where (cast(%(owner_id)s as text) is null or e.owner_id = %(owner_id)s)
           and (cast(%(event_type)s as text) is null or e.event_type = %(event_type)s)
           and (cast(%(since)s as timestamptz) is null or e.created_at >= %(since)s)
           and (cast(%(before_id)s as bigint) is null or e.id < %(before_id)s)
         order by e.id desc
         limit %(limit)s) e
 cross join lateral (select count(*) as deliveries,
                            count(*) filter (where d.status = 'delivered') as delivered,
                            count(*) filter (where d.status = 'failed') as failed
                       from outbox.deliveries d
                      where d.event_id = e.id) c
 order by e.id desc;

-- show_config: the database's settings (outbox.config) for `outbox-worker config show`
select to_jsonb(c) - 'singleton' as settings from outbox.config c;

-- set_config: change one setting of outbox.config by name; the value stored
select outbox.set_config(%(name)s, %(value)s) as value;

-- purge_preview: what purge would delete for a cutoff (`purge --dry-run`): finished events with their deliveries and attempts
with doomed as materialized (
    select e.id, e.created_at
      from outbox.events e
     where e.dispatched_at is not null
       and e.created_at < %(older_than)s
       and not exists (select 1 from outbox.deliveries d where d.event_id = e.id and d.status = 'pending')
), their_deliveries as materialized (
    select d.id from doomed join outbox.deliveries d on d.event_id = doomed.id
)
select (select count(*) from doomed) as events,
       (select min(created_at) from doomed) as oldest,
       (select count(*) from their_deliveries) as deliveries,
       (select count(*) from their_deliveries t join outbox.delivery_attempts a on a.delivery_id = t.id) as attempts;

-- listen: subscribe the listener connection to new-event wake-ups
listen outbox_events;

-- unsealed_secrets: webhooks whose secrets or header values are stored in plaintext (created from SQL)
select id, secret, previous_secret, headers
  from outbox.webhooks
 where secret not like 'enc:v1:%%'
    or (previous_secret is not null and previous_secret not like 'enc:v1:%%')
    or (headers is not null
        and exists (select from jsonb_each_text(headers) h where h.value not like 'enc:v1:%%'))
 limit %(limit)s;

-- erase_expired_previous_secrets: forget the previous secrets whose rotation overlap has ended
update outbox.webhooks
   set previous_secret = null, previous_secret_expires_at = null
 where previous_secret is not null
   and previous_secret_expires_at <= now();

-- webhook_owners: a page of every webhook's id and owner, for rotating every secret
select id, owner_id from outbox.webhooks where id > %(after)s order by id limit %(limit)s;

-- all_secrets: every stored secret and header value, for re-sealing under a new key
select id, secret, previous_secret, headers
  from outbox.webhooks
 where id > %(after)s
 order by id
 limit %(limit)s;

-- store_sealed_secrets: replace secrets and header values with their sealed form, unless they changed meanwhile
update outbox.webhooks w
   set secret = s.sealed, previous_secret = s.sealed_previous, headers = cast(s.sealed_headers as jsonb)
  from unnest(cast(%(ids)s as uuid[]), cast(%(old)s as text[]), cast(%(sealed)s as text[]),
              cast(%(old_previous)s as text[]), cast(%(sealed_previous)s as text[]),
              cast(%(old_headers)s as text[]), cast(%(sealed_headers)s as text[]))
       as s(id, old, sealed, old_previous, sealed_previous, old_headers, sealed_headers)
 where w.id = s.id
   and w.secret = s.old
   and w.previous_secret is not distinct from s.old_previous
   and w.headers is not distinct from cast(s.old_headers as jsonb);

-- metrics_queue: queue depth and ages for the metrics endpoint (polled every metrics_interval, not per scrape)
select coalesce(sum(q.pending), 0)::bigint as pending,
       coalesce(sum(q.retrying), 0)::bigint as retrying,
       coalesce(sum(q.in_flight), 0)::bigint as in_flight,
       coalesce(sum(q.failed), 0)::bigint as failed,
       coalesce(extract(epoch from max(q.oldest_pending_age)), 0)::float8 as oldest_pending_seconds,
       (select undispatched from outbox.event_backlog) as undispatched,
       coalesce((select extract(epoch from oldest_undispatched_age) from outbox.event_backlog), 0)::float8
           as oldest_undispatched_seconds
  from outbox.queue_stats q;

-- orphans: children without their parent, which the batched locks and set-based cascades standing in for foreign keys must keep at zero (reads whole tables: for checks, not for a hot path)
select (select count(*) from outbox.deliveries d
         where not exists (select from outbox.events e where e.id = d.event_id)) as deliveries_without_event,
       (select count(*) from outbox.deliveries d
         where not exists (select from outbox.webhooks w where w.id = d.webhook_id)) as deliveries_without_webhook,
       (select count(*) from outbox.delivery_attempts a
         where not exists (select from outbox.deliveries d where d.id = a.delivery_id)) as attempts_without_delivery;

-- message_id_prefix: this database's prefix of webhook-ids (read once at start; empty: evt_<event id>)
select message_id_prefix from outbox.config;

-- set_message_id_prefix: give this database a random prefix of webhook-ids unless it has one (`migrate` with several databases); the prefix
update outbox.config
   set message_id_prefix = substr(md5(gen_random_uuid()::text), 1, 8)
 where message_id_prefix = ''
returning message_id_prefix;

-- url_policy: the database's URL policy, which the worker enforces at send time (read every few seconds)
select allow_http, allow_private_networks from outbox.config;

-- release_held: make deliveries the URL policy held due now (the policy changed); only rows due within a hold are looked at
update outbox.deliveries
   set next_attempt_at = now()
 where status = 'pending'
   and next_attempt_at <= now() + make_interval(secs => %(hold_seconds)s)
   and leased_by is null
   and starts_with(last_error, 'held, not sent:');

-- database_inserts: rows inserted so far in each named database of this server, from its statistics (one statement for all of them; a fleet lending connections gives a turn to those whose count moved: they may have new events)
select datname, tup_inserted from pg_catalog.pg_stat_database where datname = any(%(names)s::text[]);

-- ping: readiness probe (the outbox schema must be there too)
select 1 as ok from outbox.config;

-- demo_open_config: let the demo's webhooks point at its plain-http loopback receiver
update outbox.config set allow_http = true, allow_private_networks = true;

-- demo_progress: per webhook, deliveries by state and attempts so far
select d.webhook_id,
       count(*) filter (where d.status = 'delivered') as delivered,
       count(*) filter (where d.status = 'pending' and d.attempts > 0) as retrying,
       count(*) filter (where d.status = 'pending' and d.attempts = 0) as queued,
       count(*) filter (where d.status = 'failed') as failed,
       (select count(*) from outbox.delivery_attempts a
          join outbox.deliveries x on x.id = a.delivery_id where x.webhook_id = d.webhook_id) as attempts
  from outbox.deliveries d
 group by d.webhook_id;

-- create_api_key: issue an API key (an operator key when operator); the only time the key is returned
select id, key from outbox.create_api_key(%(owner_id)s, %(prefix)s, %(operator)s);

-- api_key_owner: owner of the live key with this SHA-256 (NULL when unknown or revoked)
select outbox.api_key_owner(%(key_hash)s) as owner_id;

-- list_api_keys: an owner's keys, revoked ones included, never their hashes
select * from outbox.list_api_keys(%(owner_id)s);

-- revoke_api_key: revoke one of an owner's keys
select * from outbox.revoke_api_key(%(key_id)s, %(owner_id)s);

-- revoke_api_key_any_owner: operators: revoke a key of any owner
select * from outbox.revoke_api_key_any_owner(%(key_id)s);

-- list_deliveries: a page of an owner's deliveries (of one webhook, or all; by status, created in a time range, event type) with attempts, newest first
select *
  from outbox.list_deliveries(%(owner_id)s, %(webhook_id)s, %(before_id)s, %(max_rows)s,
                              cast(%(status)s as outbox.delivery_status),
                              %(created_since)s, %(created_until)s, %(event_type)s);

-- get_delivery: one delivery of an owner's webhook (NULL: any of the owner's), with attempts
select * from outbox.get_delivery(%(owner_id)s, %(webhook_id)s, %(delivery_id)s);

-- delivery_body: what one of an owner's deliveries POSTs: the stored bytes, or the event to encode them from while they are not stored yet (data as text, for the worker's parse)
select e.body, e.event_type, e.data::text as data, e.created_at
  from outbox.deliveries d
  join outbox.webhooks w on w.id = d.webhook_id
  join outbox.events e on e.id = d.event_id
 where d.id = %(delivery_id)s and w.owner_id = %(owner_id)s;

-- ============================================================ the web console (outbox_worker.console)

-- start_console_session: sign in with an API key's SHA-256 (no row for an unknown or revoked key)
select * from outbox.start_console_session(%(key_hash)s, %(token_hash)s, make_interval(secs => %(lifetime)s));

-- console_session: the key behind a live console session (no row once expired, signed out or revoked)
select * from outbox.console_session(%(token_hash)s);

-- end_console_session: sign a console session out
select outbox.end_console_session(%(token_hash)s);

-- webhook_health: per webhook of an owner, attempts, 2xx answers, p50 and p99 duration since a time, by bucket and in all (bucket_start NULL)
select * from outbox.webhook_health(%(owner_id)s, %(since)s, make_interval(secs => %(bucket_seconds)s));

-- webhook_log_counts: the deliveries and attempts deleting one of an owner's webhooks would delete
select * from outbox.webhook_log_counts(%(owner_id)s, %(webhook_id)s);

-- alive_workers: workers connected to the database now
select * from outbox.alive_workers();

-- ============================================================ quiet NOTIFY (sql/schema.sql, the emit trigger)

-- busy_acquire: hold "busy" (session-level) so emitting transactions skip NOTIFY while this worker drains
select pg_try_advisory_lock(1869968482, 2) as held;

-- busy_release: let go of "busy" once no emitter that skipped NOTIFY is uncommitted
select outbox.release_busy() as released;

-- nudge_peers: wake the other workers' senders: deliveries are waiting that this worker had no room for
select pg_notify('outbox_events', 'deliveries');
