-- event_patterns in plpgsql, without a SET clause; when events.body is written.
--
-- Why: dispatch calls it once per claimed event. As a SQL function with
-- "set search_path" it could not be inlined, paid a GUC save/restore per
-- call, and planned its body again in every statement that called it:
-- ~0.11 ms per dispatch statement and ~8 us per event, measured with one
-- call per pgbench statement (plpgsql: ~0.025 ms and ~3 us). That is a
-- large share of a one-event dispatch, the latency path at low load.
-- plpgsql caches its expressions per session. Every function and operator
-- is named by schema, so the caller's search_path cannot redirect it.
create or replace function outbox.event_patterns(p_event_type text) returns text[]
language plpgsql immutable parallel safe
as $$
declare
    parts text[] := pg_catalog.string_to_array(p_event_type, '.');
    patterns text[] := array['*', p_event_type];
begin
    -- 'a.b.c' also matches 'a.*' and 'a.b.*'.
    for n in 1 .. coalesce(pg_catalog.cardinality(parts), 1) - 1 loop
        patterns := patterns operator(pg_catalog.||)
                    (pg_catalog.array_to_string(parts[1:n], '.') operator(pg_catalog.||) '.*');
    end loop;
    return patterns;
end $$;

-- Since this revision the dispatcher no longer writes the bytes before its
-- first POST (see outbox_worker/dispatch.py); the column says when they are.
comment on column outbox.events.body is
    'Exact bytes POSTed for this event, identical for every webhook and retry; written with the first recorded attempt (NULL while the first requests are in flight)';
